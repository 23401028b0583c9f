"""The non-finite guard: NaN injected through the data or the lr, on the tiny preset (CPU).

A skipped step must leave weights and optimizer state bit-identical, still advance the step, the lr
schedule and the data, keep resume exact, and never let a NaN/inf reach a checkpoint or an export.
Two-process DDP / ZeRO-2 runs with a NaN batch are in test_train_preempt.py (they also stop on a signal).
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import faults
from faults import checkpoint_tensors, differing_tensors
from ovis_train.run import RunDir, complete_checkpoints
from ovis_train.train import loop
from ovis_train.train.config import compose
from ovis_train.train.errors import Diverged
from ovis_train.train.guard import StepGuard, nonfinite_tensors
from ovis_train.train.loop import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def synthetic_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("OVIS_TRAIN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def metrics_of(run_dir):
    return RunDir(run_dir).read_metrics()


def run(run_dir, *overrides):
    return train(compose(["model=tiny", "data=synthetic", "logger=none", f"run_dir={run_dir}", *overrides]))


def checkpoint(run_dir, step):
    return RunDir(run_dir).checkpoint(step)


def test_step_guard_counts_skips_and_stops_after_a_streak():
    guard = StepGuard(max_consecutive=2, skipped_total=3)
    for step, applied in enumerate([False, True, False], start=1):  # an applied step ends the streak
        guard.record(applied)
        guard.check(step, 1.0, math.nan, None)
    assert (guard.total, guard.streak) == (5, 1)
    guard.record(False)
    with pytest.raises(Diverged, match=r"steps 3-4: 2 steps in a row .* weights are those of step 2; latest "
                                       r"checkpoint: ckpt/step_2\. Lower trainer\.lr"):
        guard.check(4, math.nan, math.nan, "ckpt/step_2")


def test_nonfinite_tensors_sees_weights_and_optimizer_moments():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    assert nonfinite_tensors(model, optimizer) == []
    optimizer.state[model.bias]["exp_avg_sq"][0] = math.inf  # e.g. a huge but finite gradient, squared
    assert nonfinite_tensors(model, optimizer) == ["optimizer state 1 exp_avg_sq"]
    with torch.no_grad():
        model.weight[0, 0] = math.nan
    assert nonfinite_tensors(model, None) == ["weight"]


def test_a_nan_batch_is_skipped_bit_identically_and_resume_stays_exact(tmp_path, monkeypatch):
    faults.install(nan="2:0", setattr=monkeypatch.setattr)
    common = ["trainer.max_steps=4", "trainer.save_every=1", "trainer.keep_last=null"]
    straight = run(tmp_path / "straight", *common)
    metrics = metrics_of(straight)
    assert [m["train/skipped_steps"] for m in metrics] == [0, 1, 1, 1]
    assert math.isnan(metrics[1]["loss"]) and all(math.isfinite(m["loss"]) for m in metrics[2:])
    assert metrics[2]["lr/vet"] < metrics[1]["lr/vet"] < metrics[0]["lr/vet"]  # the schedule moved on
    one, two, three = (checkpoint_tensors(checkpoint(straight, s)) for s in (1, 2, 3))
    assert differing_tensors(one, two) == []  # weights, moments, AdamW's step counts: untouched
    assert differing_tensors(two, three)  # step 3 trained again
    assert '"skipped_steps": 1' in (checkpoint(straight, 2) / "train_state.json").read_text()

    resumed = tmp_path / "resumed"
    run(resumed, *common, "trainer.stop_at_step=2")  # the checkpoint right after the skipped step
    run(resumed, *common, "resume=auto")
    assert [m["loss"] for m in metrics_of(resumed)][2:] == [m["loss"] for m in metrics][2:]
    assert metrics_of(resumed)[-1]["train/skipped_steps"] == 1
    assert differing_tensors(checkpoint_tensors(straight / "export"), checkpoint_tensors(resumed / "export")) == []


def test_a_nonfinite_weight_is_never_saved_and_the_last_finite_checkpoint_stays(tmp_path, monkeypatch):
    real_step, steps = loop.train_step, []

    def corrupting_step(accelerator, model, *args):
        out = real_step(accelerator, model, *args)
        steps.append(1)
        if len(steps) == 3:  # a finite update that overflowed a weight
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).view(-1)[0] = math.inf
        return out

    monkeypatch.setattr(loop, "train_step", corrupting_step)
    with pytest.raises(Diverged, match="checkpoint step 3 not written: 1 tensors hold NaN or inf"):
        run(tmp_path, "trainer.max_steps=4", "trainer.save_every=1", "trainer.keep_last=1")
    assert [p.name for p in complete_checkpoints(tmp_path / "checkpoints")] == ["step_00000002"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    assert not (tmp_path / "export").exists()


def test_a_diverging_lr_stops_with_one_line_and_exit_4(tmp_path):
    """The lr itself breeds NaN (lr=1e30: step 1's update overflows the activations, loss and grad norm are
    NaN from step 2 on; lr=1e6 no longer does since the tiny model's init changed): skipped, counted, stopped."""
    env = {**os.environ, "OVIS_TRAIN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "ovis_train", "model=tiny", "data=synthetic", "logger=none",
               f"run_dir={tmp_path / 'run'}", "trainer.lr=1e30", "trainer.max_steps=10",
               "trainer.max_nonfinite_steps=3", "trainer.save_every=1", "trainer.keep_last=1"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 4, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (line,) = [l for l in result.stderr.splitlines() if l.startswith("ovis-train: error:")]
    assert "steps 2-4: 3 steps in a row had a non-finite loss or gradient norm" in line
    assert "weights are those of step 1" in line and "Lower trainer.lr" in line
    metrics = metrics_of(tmp_path / "run")
    assert [m["train/skipped_steps"] for m in metrics] == [0, 1, 2, 3]  # the fatal step is logged too
    (last,) = complete_checkpoints(tmp_path / "run" / "checkpoints")  # keep_last=1: step 3, finite
    assert last.name == "step_00000003" and f"latest checkpoint: {last}" in line
    tensors = checkpoint_tensors(last)
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    assert not (tmp_path / "run" / "export").exists()


@pytest.mark.slow
def test_zero3_skips_a_nan_batch_bit_identically(tmp_path):
    """Under DeepSpeed the step runs inside accelerator.backward; its overflow skip must hold (ZeRO-3 here,
    ZeRO-2 with 2 processes in test_train_preempt.py)."""
    env = {**os.environ, "OVIS_TRAIN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO), "OVIS_FAULT_NAN": "2:0"}
    run_dir = tmp_path / "run"
    command = [sys.executable, str(REPO / "tests" / "faults.py"), "model=tiny", "data=synthetic", "logger=none",
               f"run_dir={run_dir}", "distributed=zero3", "trainer.max_steps=3", "trainer.save_every=1",
               "trainer.keep_last=null"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = metrics_of(run_dir)
    assert [m["train/skipped_steps"] for m in metrics] == [0, 1, 1]
    assert metrics[2]["lr/vet"] < metrics[1]["lr/vet"] < metrics[0]["lr/vet"]
    one, two, three = (checkpoint_tensors(checkpoint(run_dir, s)) for s in (1, 2, 3))
    assert any("optim_states" in name for name in one)  # ZeRO-3's partitioned optimizer state is compared too
    assert differing_tensors(one, two) == []
    assert differing_tensors(two, three)
    assert all(torch.isfinite(t).all() for t in checkpoint_tensors(run_dir / "export").values())
