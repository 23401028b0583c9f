"""Stop signals: real SIGTERM / SIGINT / SIGUSR1 sent to real runs (1 process, and 2 processes under
`accelerate launch`, DDP and ZeRO-2) mid-run; each saves one checkpoint, says how to resume, exits 3,
and `resume=auto` ends bit-identical to an uninterrupted run. The 2-process runs also get a NaN batch on
one rank (tests/faults.py): the skipped step leaves every weight and optimizer tensor as it was."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faults import checkpoint_tensors, differing_tensors
from ovis_train.run import RunDir, complete_checkpoints
from ovis_train.train.errors import EXIT_STOPPED
from ovis_train.train.preempt import StopSignals

REPO = Path(__file__).resolve().parents[1]
FAULTS = str(REPO / "tests" / "faults.py")
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
STOPPED = re.compile(r"ovis-train: stopped at step (\d+); resume with resume=auto run_dir=(\S+) \((SIG\w+)\)")


def metrics_of(run_dir):
    return RunDir(run_dir).read_metrics()


def env(tmp_path, **extra):
    return {**os.environ, "OVIS_TRAIN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
            "WANDB_MODE": "disabled", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO), **extra}


def command(run_dir, *overrides, processes=1):
    args = ["model=tiny", "data=synthetic", "logger=none", f"run_dir={run_dir}", *overrides]
    if processes == 1:
        return [sys.executable, FAULTS, *args]
    return [ACCELERATE, "launch", "--num_processes", str(processes), "--multi_gpu", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", FAULTS, *args]


def finish(cmd, environment):
    result = subprocess.run(cmd, capture_output=True, text=True, env=environment, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def interrupt(tmp_path, cmd, environment, send):
    """Start ``cmd`` in its own session, wait until step 2 is done, call ``send(process)``; returns
    (exit code, stdout + stderr)."""
    ready = tmp_path / "ready"
    environment = {**environment, "OVIS_FAULT_READY": str(ready), "OVIS_FAULT_SLOW": "0.3"}
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=environment, start_new_session=True)
    deadline = time.monotonic() + 300
    while not ready.exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0][-4000:]
        time.sleep(0.05)
    send(process)
    out = process.communicate(timeout=300)[0]
    return process.returncode, out


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_stop_signals_only_set_a_flag_and_are_restored_afterwards():
    previous = signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # the same request again, moments later: ignored
        time.sleep(0.01)
        assert stop.name == "SIGTERM"
    assert signal.getsignal(signal.SIGINT) is previous


def test_a_signal_again_after_the_grace_period_exits_at_once():
    script = (
        "import os, signal, time\n"
        "from ovis_train.train import preempt\n"
        "preempt.GRACE_S = 0.5\n"
        "with preempt.StopSignals():\n"
        "    os.kill(os.getpid(), signal.SIGTERM); os.kill(os.getpid(), signal.SIGTERM)\n"
        "    print('still running', flush=True)\n"
        "    time.sleep(1)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "print('not reached')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 128 + signal.SIGTERM
    assert result.stdout == "still running\n"
    assert "got SIGTERM: finishing this step, then saving a checkpoint" in result.stderr
    assert "got SIGTERM again: exiting now" in result.stderr


def test_ctrl_c_saves_one_checkpoint_and_resume_ends_like_a_straight_run(tmp_path):
    """Ctrl-C reaches the whole process group, DataLoader workers included (data.num_workers=1)."""
    common = ["trainer.max_steps=6", "data.num_workers=1"]
    environment = env(tmp_path)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    finish(command(straight, *common), environment)

    code, out = interrupt(tmp_path, command(resumed, *common), environment,
                          lambda p: os.killpg(p.pid, signal.SIGINT))
    assert code == EXIT_STOPPED, out[-4000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    ((step, run_dir, name),) = STOPPED.findall(out)
    assert name == "SIGINT" and run_dir == str(resumed) and 3 <= int(step) < 6
    assert [p.name for p in complete_checkpoints(resumed / "checkpoints")] == [f"step_{int(step):08d}"]
    assert not (resumed / "export").exists()

    finish(command(resumed, *common, "resume=auto"), environment)
    assert [m["loss"] for m in metrics_of(resumed)] == [m["loss"] for m in metrics_of(straight)]
    assert differing_tensors(checkpoint_tensors(straight / "export"), checkpoint_tensors(resumed / "export")) == []


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory):
    """One uninterrupted 2-process run per strategy, with the same NaN batch, shared by the cases."""
    cache = {}

    def get(distributed):
        if distributed not in cache:
            tmp = tmp_path_factory.mktemp(f"straight-{distributed}")
            run_dir = tmp / "run"
            finish(command(run_dir, *_common(distributed), processes=2), env(tmp, OVIS_FAULT_NAN="2:1"))
            cache[distributed] = run_dir
        return cache[distributed]

    return get


def _common(distributed):
    return [f"distributed={distributed}", "trainer.max_steps=7", "trainer.save_every=1", "trainer.keep_last=null"]


def _to_launcher(sig):
    return lambda p: os.kill(p.pid, sig)


def _ctrl_c(p):  # a terminal's Ctrl-C: the launcher's process group (the ranks run in sessions of their own)
    os.killpg(p.pid, signal.SIGINT)


def _slurm_usr1(p):  # SLURM's --signal=USR1@...: every process of the job step, launcher and ranks
    for pid in [p.pid, *children(p.pid)]:
        os.kill(pid, signal.SIGUSR1)


@pytest.mark.slow
@pytest.mark.parametrize("distributed,send,name", [
    ("ddp", _to_launcher(signal.SIGTERM), "SIGTERM"),
    ("ddp", _ctrl_c, "SIGINT"),
    ("zero2", _slurm_usr1, "SIGUSR1"),
], ids=["ddp-sigterm", "ddp-ctrl-c", "zero2-sigusr1"])
def test_two_processes_stop_on_a_signal_and_resume_exactly(tmp_path, straight_runs, distributed, send, name):
    # what recipes/slurm/train.sbatch sets: the launcher forwards SIGUSR1 (it would die of it otherwise)
    environment = env(tmp_path, OVIS_FAULT_NAN="2:1", PET_SIGNALS_TO_HANDLE="SIGTERM,SIGINT,SIGUSR1")
    run_dir = tmp_path / "run"
    code, out = interrupt(tmp_path, command(run_dir, *_common(distributed), processes=2), environment, send)
    assert code != 0, out[-4000:]
    assert f"closing signal {name}" in out  # the launcher forwarded it
    ((step, _, got),) = STOPPED.findall(out)  # one line, from rank 0
    assert got == name and 3 <= int(step) < 7
    assert "Traceback" not in out.split("ovis-train: stopped")[0]  # (the launcher reports the signal after)
    saved = complete_checkpoints(run_dir / "checkpoints")
    assert saved[-1].name == f"step_{int(step):08d}"
    assert {"dataloader_rank0.json", "dataloader_rank1.json"} <= {p.name for p in saved[-1].iterdir()}

    # the NaN batch of step 2 (rank 1 only) was skipped on both ranks, changing nothing
    metrics = metrics_of(run_dir)
    assert [m["train/skipped_steps"] for m in metrics[:3]] == [0, 1, 1]
    assert differing_tensors(checkpoint_tensors(saved[0]), checkpoint_tensors(saved[1])) == []

    finish(command(run_dir, *_common(distributed), "resume=auto", processes=2), environment)
    straight = straight_runs(distributed)
    assert [m["loss"] for m in metrics_of(run_dir)][2:] == [m["loss"] for m in metrics_of(straight)][2:]
    final = f"checkpoints/step_{7:08d}"
    assert differing_tensors(checkpoint_tensors(straight / final), checkpoint_tensors(run_dir / final)) == []
    assert differing_tensors(checkpoint_tensors(straight / "export"), checkpoint_tensors(run_dir / "export")) == []
