"""`python -m ovis_train`: configuration mistakes end with one clear line and leave no checkpoint."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(tmp_path, *overrides, logger="none", wandb_mode="disabled"):
    env = {**os.environ, "OVIS_TRAIN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "WANDB_MODE": wandb_mode, "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache")}
    if wandb_mode is None:
        del env["WANDB_MODE"]
    return subprocess.run(
        [sys.executable, "-m", "ovis_train", *overrides, f"logger={logger}", f"run_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, env=env, timeout=300,
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("phase.rules.0.match=re:nothing\\..*", "matches no parameter"),
        ("trainer.max_stepz=3", "Key 'max_stepz' not in 'TrainerConfig'"),
        ("model.visual_vocab_size=5", "model.visual_vocab_size=5 must be larger than model.num_indicator_tokens=5"),
        ("data=shards", "data.sources is empty"),  # the own-shards config until its patterns are given
    ],
)
def test_config_mistakes_end_with_one_error_line_and_no_checkpoint(tmp_path, override, message):
    result = run_cli(tmp_path, override, "trainer.max_steps=2")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ovis-train: error: ") and message in last
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_short_run_from_the_command_line_logs_to_wandb_offline(tmp_path):
    result = run_cli(tmp_path, "trainer.max_steps=2", "trainer.save_every=1", "trainer.keep_last=1",
                     logger="wandb", wandb_mode=None)  # no WANDB_MODE, no key, no network: offline
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002"]
    assert (run / "config.yaml").is_file() and (run / "export" / "model.safetensors").is_file()
    assert "visual_head" in result.stdout and "trainable" in result.stdout  # the per-component table
    assert list((run / "wandb").glob("offline-run-*"))


def test_a_sweep_gets_one_run_directory_per_member(tmp_path):
    result = run_cli(tmp_path, "-m", "model.visual_vocab_size=64,128", "trainer.max_steps=1")
    assert result.returncode == 0, result.stderr[-3000:]
    for k in (64, 128):
        member = tmp_path / "run" / f"model.visual_vocab_size={k}"  # named by the swept key only
        assert (member / "export" / "model.safetensors").is_file()
        assert f"visual_vocab_size: {k}" in (member / "config.yaml").read_text()


def test_printing_the_config_refuses_what_a_run_would_refuse(tmp_path):
    bad = run_cli(tmp_path, "--cfg", "job", "model.visual_vocab_size=5")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stdout == ""
    assert bad.stderr.strip().splitlines()[-1].startswith("ovis-train: error: model.visual_vocab_size=5 must be")
    good = run_cli(tmp_path, "--cfg", "job", "phase=demo_p1", "model.visual_vocab_size=64")
    assert good.returncode == 0 and "name: demo_p1" in good.stdout and "visual_vocab_size: 64" in good.stdout


def test_a_library_failure_keeps_its_traceback(tmp_path):
    """Only ovis-train's own ConfigError becomes one line: a ValueError from transformers (here: an export
    whose config.json is not JSON) is not the user's typo and must show where it came from."""
    export = tmp_path / "broken_export"
    export.mkdir()
    (export / "config.json").write_text("{not json")
    result = run_cli(tmp_path, f"init_from={export}", "trainer.max_steps=1")
    assert result.returncode not in (0, 2) and "Traceback" in result.stderr
    assert "ovis-train: error:" not in result.stderr


def test_help_is_ovis_trains_own():
    from ovis_train.__main__ import usage
    from ovis_train.train.config import compose

    text = usage()
    defaults = compose([])
    phases = sorted(p.stem + ("*" if p.stem == defaults.phase.name else "") for p in (REPO / "conf" / "phase").glob("*.yaml"))
    assert "p1*" in phases and "demo_p3" in phases
    for line in ("  phase        " + ", ".join(phases), "  model        demo, ovis2_1b, ovis2_2b, ovis2_5_2b, tiny*",
                 f"  trainer.max_steps={defaults.trainer.max_steps} ", f"  data.batch_size={defaults.data.batch_size} ",
                 "  demo_p1      The offline demo's P1"):
        assert line in text
