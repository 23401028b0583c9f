"""The trainer with data.packing on the tiny preset: fewer padding tokens than the same run unpacked, exact
resume, and (2 processes) DDP and ZeRO-2 giving the same losses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ovis_train.run import RunDir
from ovis_train.train.config import compose
from ovis_train.train.loop import train

ACCELERATE = str(Path(sys.executable).parent / "accelerate")
PACKED = ["data.packing=true", "data.pack_length=256", "data.pack_buffer=16"]


@pytest.fixture(scope="module")
def conversation_shards(tmp_path_factory):
    """Conversations of 23-106 tokens with 0-3 images: long-tailed enough that padding shows."""
    from ovis_train.data.make_shards import main as make_shards
    from ovis_train.data.synthetic import write_synthetic_conversations

    folder = tmp_path_factory.mktemp("trainpack")
    meta = write_synthetic_conversations(str(folder / "raw"), n_samples=48, seed=6)
    return make_shards(["ovis", meta, "--out", str(folder / "shards"), "--samples-per-shard", "6"])["shard"]


@pytest.fixture(autouse=True)
def synthetic_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("OVIS_TRAIN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def overrides(shards, *more):
    return ["model=tiny", "data=synthetic", "logger=none", f"data.sources.0.urls='{shards}'", "data.max_length=128",
            "data.batch_size=4", "phase=p2", *more]


def run(run_dir, shards, *more):
    return train(compose([*overrides(shards, *more), f"run_dir={run_dir}"]))


def test_packed_run_logs_less_padding_than_the_same_run_unpacked(tmp_path, conversation_shards):
    common = ["trainer.max_steps=2"]
    plain = RunDir(run(tmp_path / "plain", conversation_shards, *common)).read_metrics()
    packed = RunDir(run(tmp_path / "packed", conversation_shards, *common, *PACKED)).read_metrics()
    assert all(m["data/samples_per_row"] == 1 for m in plain)
    assert all(m["data/samples_per_row"] > 2 for m in packed)
    assert max(m["data/padding_fraction"] for m in packed) < min(m["data/padding_fraction"] for m in plain)
    assert max(m["data/padding_fraction"] for m in packed) < 0.15
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in packed)


def test_resume_with_packing_continues_exactly(tmp_path, conversation_shards):
    common = ["trainer.max_steps=4", "trainer.grad_accum=2", "trainer.warmup_ratio=0.5", *PACKED]
    straight = run(tmp_path / "straight", conversation_shards, *common)
    resumed = tmp_path / "resumed"
    run(resumed, conversation_shards, *common, "trainer.stop_at_step=2")
    state = json.loads((RunDir(resumed).complete_checkpoints()[0] / "dataloader_rank0.json").read_text())
    assert 0 < len(state["readers"][0]["pack"]["pending"]) <= 16  # the buffer, saved as sample positions
    run(resumed, conversation_shards, *common, "resume=auto")
    assert [m["loss"] for m in RunDir(resumed).read_metrics()] == [m["loss"] for m in RunDir(straight).read_metrics()]
    a, b = (load_file(str(r / "export" / "model.safetensors")) for r in (straight, resumed))
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.slow
def test_ddp_and_zero2_give_the_same_losses_with_packing(tmp_path, conversation_shards):
    env = {**os.environ, "OVIS_TRAIN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "disabled", "DS_ACCELERATOR": "cpu"}
    losses = {}
    for distributed in ("ddp", "zero2"):
        run_dir = tmp_path / distributed
        command = [ACCELERATE, "launch", "--num_processes", "2", "--multi_gpu", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ovis_train",
                   *overrides(conversation_shards, *PACKED), f"distributed={distributed}", "trainer.max_steps=3",
                   "trainer.grad_accum=2", "trainer.export=false", f"run_dir={run_dir}"]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        metrics = RunDir(run_dir).read_metrics()
        assert all(m["data/samples_per_row"] > 2 for m in metrics)
        losses[distributed] = [m["loss"] for m in metrics]
    assert len(losses["ddp"]) == 3
    assert losses["zero2"] == pytest.approx(losses["ddp"], rel=1e-5)
