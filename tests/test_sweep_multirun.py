"""Hydra multiruns of the real trainer (tiny preset, CPU, 2 steps): one run directory per member, named
by the swept keys whatever the rest of the command line holds, and a summary whose numbers are the
members' own; a failing member is listed while the others run; -m inside a launch is refused once."""

import csv
import json
import os
import statistics
import subprocess
import sys

import pytest

FAST = ["model=tiny", "data=synthetic", "data.batch_size=2", "trainer.max_steps=2", "trainer.eval_every=2",
        "trainer.eval_batches=1", "trainer.vet_health_every=1", "trainer.caption_eval_samples=2", "logger=none"]


def multirun(tmp_path, *overrides):
    env = {**os.environ, "OVIS_TRAIN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    sweep = tmp_path / "sweep"
    result = subprocess.run([sys.executable, "-m", "ovis_train", "-m", *overrides, *FAST, f"run_dir={sweep}"],
                            capture_output=True, text=True, env=env, timeout=600)
    return result, sweep


def summary_rows(sweep):
    with open(sweep / "summary.csv") as f:
        return list(csv.DictReader(f))


def member_dir(sweep, override):
    (found,) = [p for p in sweep.iterdir() if p.is_dir() and override in p.name.split(",")]
    return found


def final(rows, key):
    return [r[key] for r in rows if key in r][-1]


def test_a_two_member_sweep_summarises_each_members_own_final_numbers(tmp_path):
    result, sweep = multirun(tmp_path, "model.visual_vocab_size=32,64")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = summary_rows(sweep)
    assert len(rows) == 2
    for k, row in zip((32, 64), rows):
        run = member_dir(sweep, f"model.visual_vocab_size={k}")
        assert row["member"] == run.name and row["status"] == "completed"
        assert (run / "export" / "model.safetensors").is_file()
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert float(row["train_loss"]) == final(metrics, "loss")
        assert float(row["eval_loss"]) == final(metrics, "eval/loss")
        assert float(row["vet_entropy"]) == final(metrics, "vet/entropy")
        assert float(row["vet_rows_top1"]) == final(metrics, "vet/rows_top1")
        assert float(row["tokens_per_s"]) == statistics.median(m["tokens_per_s"] for m in metrics if "tokens_per_s" in m)
        assert float(row["peak_memory_gb"]) == final(metrics, "memory/peak_gb") > 0
        assert int(row["visual_vocab_size"]) == k and int(row["steps"]) == 2
        # connector = head Linear(32 * 2 * 2 -> K - 5) + LayerNorm(K - 5) + VET [K, 64]
        assert int(row["connector_params"]) == 128 * (k - 5) + 2 * (k - 5) + 64 * k
    text = (sweep / "summary.md").read_text()
    assert "2 members: 2 completed, 0 failed." in text
    for name in ("loss_curves.png", "heldout_vs_k.png"):
        assert (sweep / name).stat().st_size > 0


def test_a_failing_member_is_listed_while_the_other_completes(tmp_path):
    result, sweep = multirun(tmp_path, "model.visual_vocab_size=2,32")  # 2 rows cannot hold 5 indicator rows
    assert result.returncode != 0  # the sweep reports the failure at its end ...
    assert "model.visual_vocab_size=2 must be larger than" in result.stderr
    failed, done = summary_rows(sweep)  # ... after the other member ran
    assert failed["status"] == "failed" and "must be larger than model.num_indicator_tokens=5" in failed["error"]
    assert done["status"] == "completed" and float(done["train_loss"]) > 0
    assert (member_dir(sweep, "model.visual_vocab_size=32") / "export" / "model.safetensors").is_file()
    assert "1 failed" in (sweep / "summary.md").read_text()


def test_vet_and_mlp_connectors_train_side_by_side(tmp_path):
    result, sweep = multirun(tmp_path, "model.connector=vet,mlp", "model.visual_vocab_size=32",
                             "trainer.caption_eval_samples=2")
    assert result.returncode == 0, result.stderr[-3000:]
    vet, mlp = summary_rows(sweep)
    for row in (vet, mlp):  # greedy captions of 2 held-out images, logged by the member at its end
        metrics = [json.loads(line) for line in (sweep / row["member"] / "metrics.jsonl").read_text().splitlines()]
        assert float(row["eval_caption_accuracy"]) == final(metrics, "eval/caption_accuracy")
    assert (vet["connector"], mlp["connector"]) == ("vet", "mlp")
    assert vet["status"] == mlp["status"] == "completed"
    assert float(vet["train_loss"]) > 0 and float(mlp["train_loss"]) > 0
    # mlp: Linear(128 -> 64) + GELU + Linear(64 -> 64), plus the VET's 5 indicator rows
    assert int(mlp["connector_params"]) == (128 * 64 + 64) + (64 * 64 + 64) + 5 * 64
    assert vet["vet_entropy"] and not mlp["vet_entropy"]  # the mlp connector has no visual vocabulary
    text = (sweep / "summary.md").read_text()
    assert "model.connector=vet" in text and "model.connector=mlp" in text



def test_a_sweep_with_absolute_paths_lists_and_quotes_on_its_command_line_finds_every_member(tmp_path):
    """The command line a user with their own data writes: the data path (absolute, with a space and a
    quote) in a list of dicts, the sweep folder given as hydra.sweep.dir, no evaluation settings."""
    from ovis_train.data import write_synthetic_shards

    data = tmp_path / "it's my data"
    write_synthetic_shards(str(data / "train"), 64, 32, seed=0)
    write_synthetic_shards(str(data / "heldout"), 32, 32, seed=1)
    sweep = tmp_path / "k sweep"
    env = {**os.environ, "OVIS_TRAIN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    sources = f'data.sources=[{{urls: "{data}/train/synthetic-{{000000..000001}}.tar", weight: 1.0}}]'
    command = [sys.executable, "-m", "ovis_train", "-m", "phase=p1", "model=tiny", "trainer.max_steps=2",
               "data.batch_size=2", sources, f'data.eval_urls="{data}/heldout/synthetic-000000.tar"',
               "trainer.eval_batches=1", "logger=none", "model.visual_vocab_size=32,64", f"hydra.sweep.dir={sweep}"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    members = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert members == ["model.visual_vocab_size=32", "model.visual_vocab_size=64"]  # the swept key only
    rows = summary_rows(sweep)
    assert [r["member"] for r in rows] == ["model.visual_vocab_size=32", "model.visual_vocab_size=64"]
    for k, row in zip((32, 64), rows):
        record = json.loads((sweep / row["member"] / "sweep_member.json").read_text())
        assert record["status"] == "completed" and f"model.visual_vocab_size={k}" in record["overrides"]
        assert any(o.startswith("data.sources=") and str(data) in o for o in record["overrides"])
        metrics = [json.loads(line) for line in (sweep / row["member"] / "metrics.jsonl").read_text().splitlines()]
        # held-out loss after the last step and greedy-caption accuracy, by default (32 held-out images)
        assert [m["step"] for m in metrics if "eval/loss" in m] == [2]
        assert float(row["eval_loss"]) == final(metrics, "eval/loss") > 0
        assert float(row["eval_caption_accuracy"]) == final(metrics, "eval/caption_accuracy") >= 0
    assert "2 members: 2 completed, 0 failed." in (sweep / "summary.md").read_text()


@pytest.mark.slow
def test_a_multirun_inside_a_distributed_launch_is_refused_once_and_writes_nothing(tmp_path):
    env = {**os.environ, "OVIS_TRAIN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu", "--num_machines",
         "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ovis_train", "-m",
         "model.visual_vocab_size=32,64", *FAST, f"run_dir={sweep}"],
        capture_output=True, text=True, env=env, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert output.count("ovis-train: error:") == 1, output[-3000:]
    assert "inside a distributed launch" in output and "ovis_train.sweep.launch" in output
    assert not sweep.exists()
