"""launch.sh: the launcher users run on real machines, here as a 2-process CPU job."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def launch(*args, tmp_path=None, **env):
    env = {**os.environ, "OVIS_VENV": sys.prefix, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", str(REPO / "launch.sh"), *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path or REPO, timeout=600)


def test_help_explains_modes_and_multi_node_variables():
    out = launch("--help").stdout
    for word in ("setup", "demo", "test", "--dist ddp|zero2|zero3", "--nproc", "NNODES", "SLURM_JOB_NODELIST"):
        assert word in out


def test_unknown_distributed_mode_is_one_clear_error():
    result = launch("--dist", "zero4", "phase=p1")
    assert result.returncode == 2
    assert "--dist must be ddp, zero2 or zero3 (got 'zero4')" in result.stderr


@pytest.mark.slow
def test_two_process_cpu_job_trains_checkpoints_and_exports(tmp_path):
    run_dir = tmp_path / "run"
    result = launch("--nproc", "2", "phase=p1", "model=tiny", "data=synthetic", "trainer.max_steps=2",
                    f"run_dir={run_dir}", "logger=none", tmp_path=tmp_path, MASTER_PORT="29613")
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = run_dir / "checkpoints" / "step_00000002"
    assert (checkpoint / "COMPLETE").exists()
    assert {p.name for p in checkpoint.glob("dataloader_rank*.json")} == {"dataloader_rank0.json",
                                                                          "dataloader_rank1.json"}
    assert (run_dir / "export" / "model.safetensors").exists()
