"""recipes/vet_study: every arm composes to what its README says, P2 members find their P1 member's
export, and the one command is resumable (tiny preset, a couple of steps)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from ovis_train.sweep.naming import member_name
from ovis_train.train.config import CONF_DIR, register, to_config

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "vet_study"


def study_config(name, *overrides):
    register()
    with initialize_config_dir(config_dir=str(RECIPE / "conf"), version_base="1.3"):
        return to_config(compose(config_name=name, overrides=[*overrides, f"hydra.searchpath=[file://{CONF_DIR}]"]))


@pytest.mark.parametrize("arm, connector, k, init, function", [
    ("text_k256", "vet", 256, "text_embeddings", "softmax"), ("text_k1024", "vet", 1024, "text_embeddings", "softmax"),
    ("text_k4096", "vet", 4096, "text_embeddings", "softmax"), ("normal_k1024", "vet", 1024, "normal", "softmax"),
    ("gelu_k1024", "vet", 1024, "text_embeddings", "gelu"), ("mlp", "mlp", None, None, "softmax")])
def test_each_arm_differs_from_the_demo_p1_only_in_its_connector(arm, connector, k, init, function):
    cfg = study_config("vet_study", f"arm={arm}", "trainer.seed=2")
    m = cfg.model
    assert (m.preset, m.connector, m.tokenize_function) == ("demo", connector, function)
    assert (m.image_size, m.hidden_stride) == (64, 1)  # the geometry the README's study figures were measured at
    if connector == "vet":
        assert (m.visual_vocab_size, m.vet_init) == (k, init)
    assert cfg.data.seed == cfg.trainer.seed == 2  # one seed: initialisation and data order
    t = cfg.trainer
    assert (t.max_steps, t.lr, t.eval_every, t.caption_eval_samples) == (100, 1e-2, 100, 1000)
    assert t.eval_batches * cfg.data.batch_size >= 1000  # held-out loss on at least 1,000 images


def test_p2_members_start_from_the_p1_member_with_their_arm_and_seed(monkeypatch, tmp_path):
    monkeypatch.setenv("VET_STUDY_P1", str(tmp_path / "p1"))
    cfg = study_config("vet_study_p2", "from_p1=mlp", "trainer.seed=1")
    p1_member = member_name(["arm=mlp", "trainer.seed=1"], ["arm", "trainer.seed"])
    assert cfg.init_from == str(tmp_path / "p1" / p1_member / "export")
    assert cfg.phase.name == "demo_p2" and all(rule.trainable for rule in cfg.phase.rules)  # the LLM too, pinned
    assert (cfg.model.image_size, cfg.model.hidden_stride) == (64, 1)


@pytest.mark.slow
def test_the_study_command_runs_and_a_second_run_skips_what_finished(tmp_path):
    env = {**os.environ, "OVIS_TRAIN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
           "PYTHON": sys.executable, "OUT": str(tmp_path / "study"), "ARMS": "mlp", "SEEDS": "0", "P2_ARMS": "mlp"}
    tiny = ["model=tiny", "data=synthetic", "trainer.max_steps=2", "trainer.caption_eval_samples=2",
            "trainer.eval_batches=1", "data.batch_size=2", "trainer.bf16=false"]
    command = ["bash", str(RECIPE / "run.sh"), *tiny]
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    p1, p2 = tmp_path / "study" / "p1" / "arm=mlp,trainer.seed=0", tmp_path / "study" / "p2" / "from_p1=mlp,trainer.seed=0"
    for member in (p1, p2):
        assert (member / "export" / "config.json").is_file()
    assert "| `arm=mlp` | 1 |" in (tmp_path / "study" / "p1" / "summary.md").read_text()
    logs = {member: (member / "launch.log").read_text() for member in (p1, p2)}
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert second.returncode == 0 and second.stdout.count("completed before: skipped") == 2
    assert all((member / "launch.log").read_text() == log for member, log in logs.items())
