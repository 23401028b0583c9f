"""``python -m ovis_train.sweep.launch`` (what ``launch.sh --sweep`` runs): one ``accelerate launch`` per
member, outside any distributed launch; failures recorded, the rest run, the summary written."""

import json
import os
import subprocess
import sys
from pathlib import Path

from test_sweep_multirun import FAST, final, member_dir, summary_rows

RECIPE_CONF = Path(__file__).resolve().parents[1] / "recipes" / "vet_sweep" / "conf"


def test_launched_members_one_launch_each_with_a_refused_member_recorded(tmp_path):
    env = {**os.environ, "OVIS_TRAIN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    launcher = (f"{sys.executable} -m accelerate.commands.launch --num_processes 1 --num_machines 1 "
                "--mixed_precision no --dynamo_backend no -m ovis_train")
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "ovis_train.sweep.launch", "--launcher", launcher, "--",
         "model.visual_vocab_size=2,32", *FAST, f"run_dir={sweep}"],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    failed, done = summary_rows(sweep)
    assert failed["status"] == "failed" and "must be larger than model.num_indicator_tokens=5" in failed["error"]
    run = member_dir(sweep, "model.visual_vocab_size=32")
    assert done["member"] == run.name and done["status"] == "completed"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert float(done["train_loss"]) == final(metrics, "loss")
    # the trainer's own check refused K=2 before a launch, under the member's own name
    assert not (member_dir(sweep, "model.visual_vocab_size=2") / "launch.log").exists()
    assert (run / "launch.log").is_file()


def test_a_launched_members_error_line_is_the_trainers_one_line_error():
    from ovis_train.sweep.launch import error_line

    tail = ["Traceback (most recent call last):", "ovis-train: error: data source 0 (train): shard 'x.tar' does not exist",
            ""]
    assert error_line(2, tail) == "data source 0 (train): shard 'x.tar' does not exist"
    assert error_line(-6, ["step 3", "terminate called without an active exception", "  "]) == (
        "exit status -6: terminate called without an active exception")


def test_members_whose_config_does_not_compose_are_recorded_without_a_launch(tmp_path):
    from ovis_train.sweep.launch import main

    sweep = tmp_path / "sweep"
    assert main(["--launcher", "false", "--", "trainer.max_stepz=1,2", f"run_dir={sweep}"]) == 1
    rows = summary_rows(sweep)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all("Key 'max_stepz' not in 'TrainerConfig'" in r["error"] for r in rows)
    assert not list(sweep.glob("*/launch.log"))  # nothing was launched


def test_each_member_gets_the_primary_config_flags_and_its_own_run_dir(tmp_path):
    from ovis_train.sweep.launch import main

    sweep = tmp_path / "sweep"
    recipe = ["--config-dir", str(RECIPE_CONF), "--config-name", "vet_sweep"]
    assert main(["--launcher", "echo", *recipe, "model.visual_vocab_size=256,1024", f"run_dir={sweep}"]) == 0
    for k in (256, 1024):
        member = sweep / f"model.visual_vocab_size={k}"  # named by the command-line overrides only
        launched = (member / "launch.log").read_text().split()
        assert launched == [*recipe, f"model.visual_vocab_size={k}", f"run_dir='{member}'"]


def test_launched_members_get_the_held_out_defaults_and_resume_skips_finished_ones(tmp_path):
    from ovis_train.sweep.launch import main
    from ovis_train.sweep.record import read_record

    sweep = tmp_path / "sweep"
    overrides = ["model=tiny", "data=synthetic", "trainer.max_steps=7", "model.visual_vocab_size=32,64", f"run_dir={sweep}"]
    assert main(["--launcher", "echo", *overrides]) == 0
    first, second = (sweep / f"model.visual_vocab_size={k}" for k in (32, 64))
    launched = (first / "launch.log").read_text().split()
    # synthetic data has held-out shards: loss after the last step, 200 greedy captions (as -m members)
    assert "trainer.eval_every=7" in launched and "trainer.caption_eval_samples=200" in launched
    assert read_record(first).overrides == ["model=tiny", "data=synthetic", "trainer.max_steps=7",
                                            "model.visual_vocab_size=32"]  # what the user gave, nothing added
    (first / "launch.log").write_text("kept\n")
    record = read_record(second)
    record.status = "started"  # as if the machine went down during this member
    (second / "sweep_member.json").write_text(json.dumps(record.__dict__))
    assert main(["--launcher", "echo", "--resume", *overrides]) == 0
    assert (first / "launch.log").read_text() == "kept\n"  # completed before: not launched again
    assert "resume=auto" in (second / "launch.log").read_text().split()  # continues from its last checkpoint
    assert read_record(second).status == "completed"
