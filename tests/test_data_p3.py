"""Multi-image and text-only conversations end to end, as a user runs them: Ovis meta-JSON -> make_shards
(with a held-out split) -> P3 on the tiny preset through the CLI; and 2 processes under ZeRO-3 where one
rank's held-out batch is text-only (the vision tower must still run there, or the ranks fall out of step)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file

from ovis_train.data import write_shards
from ovis_train.data.shards import expand_urls, iter_raw_samples
from ovis_train.data.synthetic import write_synthetic_conversations
from ovis_train.model import ModelConfig, build_model

ACCELERATE = str(Path(sys.executable).parent / "accelerate")


def env_for(tmp_path):
    return {**os.environ, "OVIS_TRAIN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
            "WANDB_MODE": "disabled", "DS_ACCELERATOR": "cpu"}


def make_shards(tmp_path, *args):
    result = subprocess.run([sys.executable, "-m", "ovis_train.data.make_shards", *args], capture_output=True,
                            text=True, env=env_for(tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(re.findall(r"^(\w+): \d+ samples in \d+ shards -> (\S+)$", result.stdout, re.M))


def data_overrides(train, heldout):
    return [f'data.sources=[{{urls: "{train}"}}]', f'data.eval_urls="{heldout}"']


def test_ovis_meta_json_to_shards_to_p3_on_the_tiny_preset(tmp_path):
    meta = write_synthetic_conversations(str(tmp_path / "raw"), n_samples=40, seed=5)
    records = json.loads(Path(meta).read_text())
    assert {len(r["image"]) if isinstance(r.get("image"), list) else int("image" in r) for r in records} == {0, 1, 2, 3}
    patterns = make_shards(tmp_path, "ovis", meta, "--out", str(tmp_path / "shards"), "--heldout", "8",
                           "--samples-per-shard", "8")
    run = tmp_path / "run"
    command = [sys.executable, "-m", "ovis_train", "phase=p3", "model=tiny", "logger=none", f"run_dir={run}",
               "trainer.max_steps=3", "trainer.eval_every=3", "trainer.eval_batches=2", "trainer.lr=1e-3",
               "data.batch_size=4", *data_overrides(patterns["shard"], patterns["heldout"])]
    result = subprocess.run(command, capture_output=True, text=True, env=env_for(tmp_path), timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "skipping bad sample" not in result.stderr
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m["images_per_s"] > 0 for m in metrics) and metrics[-1]["eval/loss"] > 0
    # P3 trains every part: multi-image batches reached the vision tower, the head and the VET
    exported = load_file(str(run / "export" / "model.safetensors"))
    set_seed(0)  # trainer.seed: the run's initial weights
    initial = dict(build_model(ModelConfig(preset="tiny")).model.state_dict())
    for prefix in ("model.vision_tower.transformer.", "model.vision_tower.head_linear", "model.visual_embeddings_table",
                   "model.language_model."):
        names = [n for n in exported if n.startswith(prefix)]
        assert names and any(not torch.equal(exported[n], initial[n]) for n in names), prefix


@pytest.mark.slow
def test_text_only_heldout_batch_on_one_rank_under_zero3(tmp_path):
    """Rank 1's held-out shard is text-only, rank 0's has images: both must run the vision tower."""
    meta = write_synthetic_conversations(str(tmp_path / "raw"), n_samples=16, seed=2)
    patterns = make_shards(tmp_path, "ovis", meta, "--out", str(tmp_path / "shards"), "--samples-per-shard", "4")
    raw = json.loads(Path(meta).read_text())
    text_only = [{"__key__": f"t{i}", "json": {"conversations": r["conversations"]}}
                 for i, r in enumerate(r for r in raw if "image" not in r)]
    with_images = [s for s in _samples(patterns["shard"]) if any(k.endswith(".png") for k in s)][:4]
    write_shards(with_images, str(tmp_path / "eval"), 100, prefix="eval-a")
    write_shards(text_only, str(tmp_path / "eval"), 100, prefix="eval-b")
    heldout = f"{tmp_path}/eval/eval-a-000000.tar::{tmp_path}/eval/eval-b-000000.tar"
    run = tmp_path / "run"
    command = [ACCELERATE, "launch", "--num_processes", "2", "--multi_gpu", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ovis_train", "phase=p3", "model=tiny",
               "logger=none", "distributed=zero3", f"run_dir={run}", "trainer.max_steps=2", "trainer.eval_every=1",
               "trainer.eval_batches=1", "data.batch_size=2", *data_overrides(patterns["shard"], heldout)]
    result = subprocess.run(command, capture_output=True, text=True, env=env_for(tmp_path), timeout=400, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all(m["eval/loss"] > 0 for m in metrics)


def _samples(pattern):
    for url in expand_urls(pattern):
        for sample in iter_raw_samples(url):
            yield {k: v for k, v in sample.items() if k != "__shard__"}
