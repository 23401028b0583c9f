"""Two CPU processes (gloo) under `accelerate launch`: DDP, DeepSpeed ZeRO-2 and ZeRO-3 train, save a
checkpoint, stop, resume from it and finish the phase with an export."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ACCELERATE = str(Path(sys.executable).parent / "accelerate")


def launch(tmp_path, *overrides):
    env = {**os.environ, "OVIS_TRAIN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "disabled", "DS_ACCELERATOR": "cpu"}
    command = [ACCELERATE, "launch", "--num_processes", "2", "--multi_gpu", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ovis_train",
               "logger=none", "trainer.max_steps=4", *overrides]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.mark.slow
@pytest.mark.parametrize("distributed", ["ddp", "zero2", "zero3"])
def test_two_processes_train_save_and_resume(tmp_path, distributed):
    launch(tmp_path, f"distributed={distributed}", "trainer.stop_at_step=2")  # default run_dir: a timestamp
    (run,) = (tmp_path / "runs").iterdir()  # both ranks used rank 0's
    (checkpoint,) = (run / "checkpoints").iterdir()
    assert {"COMPLETE", "dataloader_rank0.json", "dataloader_rank1.json", "random_states_1.pkl"} <= {
        p.name for p in checkpoint.iterdir()
    }
    resumed = launch(tmp_path, f"distributed={distributed}", f"run_dir={run}", "resume=auto")
    assert "resumed from step_00000002" in resumed.stdout
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert (run / "export" / "model.safetensors").is_file()


@pytest.mark.slow
def test_deepspeed_accumulates_the_same_gradients_as_ddp(tmp_path):
    """DeepSpeed divides by grad_accum inside its backward; the loss scale must account for it."""
    env = {**os.environ, "OVIS_TRAIN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "WANDB_MODE": "disabled", "DS_ACCELERATOR": "cpu"}
    norms = {}
    for distributed in ("ddp", "zero2", "zero3"):
        run = tmp_path / distributed
        command = [sys.executable, "-m", "ovis_train", f"distributed={distributed}", "trainer.grad_accum=2",
                   "trainer.max_steps=2", "logger=none", f"run_dir={run}"]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        norms[distributed] = [json.loads(line)["grad_norm"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert norms["zero2"] == pytest.approx(norms["ddp"], rel=1e-5)
    assert norms["zero3"] == pytest.approx(norms["ddp"], rel=1e-5)
