"""The sweep summary from member run directories (no training): final numbers, failures, files."""

import csv
import json

import pytest
from PIL import Image

from ovis_train.sweep.record import MemberRecord, write_record
from ovis_train.sweep.summarize import main, summarize


def make_member(sweep, name, job_num, losses, status="completed", error=None, extra=None):
    run = sweep / name
    run.mkdir(parents=True)
    rows = [{"step": i + 1, "loss": loss, "tokens_per_s": 100.0 * (i + 1)} for i, loss in enumerate(losses)]
    if rows:
        rows[-1].update({"eval/loss": losses[-1] + 0.5, "vet/entropy": 2.0, **(extra or {})})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_record(run, MemberRecord(overrides=[name.replace(",", " ").split()[0], "trainer.max_steps=3"],
                                   job_num=job_num, status=status, error=error))
    return run


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_rows_hold_each_members_final_numbers_and_failures_are_listed(tmp_path):
    make_member(tmp_path, "model.visual_vocab_size=128", 1, [3.0, 2.5, 2.25], extra={"eval/caption_accuracy": 0.5})
    make_member(tmp_path, "model.visual_vocab_size=64", 0, [3.0, 2.0, 1.5])
    make_member(tmp_path, "model.visual_vocab_size=2", 2, [], status="failed", error="ConfigError: K too small")
    summarize(tmp_path)
    rows = read_csv(tmp_path / "summary.csv")
    assert [r["member"] for r in rows] == ["model.visual_vocab_size=64", "model.visual_vocab_size=128",
                                          "model.visual_vocab_size=2"]  # job order
    first, second, failed = rows
    assert float(first["train_loss"]) == 1.5 and float(first["eval_loss"]) == 2.0
    assert float(first["tokens_per_s"]) == 200.0  # median of 100, 200, 300
    assert first["eval_caption_accuracy"] == "" and float(second["eval_caption_accuracy"]) == 0.5
    assert failed["status"] == "failed" and failed["error"] == "ConfigError: K too small"
    text = (tmp_path / "summary.md").read_text()
    assert "3 members: 2 completed, 1 failed." in text and "Shared overrides: `trainer.max_steps=3`" in text
    assert "`model.visual_vocab_size=2` (model.visual_vocab_size=2): failed: ConfigError: K too small" in text
    for name in ("loss_curves.png", "heldout_vs_k.png"):
        with Image.open(tmp_path / name) as image:
            image.verify()


def test_members_are_labelled_by_the_swept_keys_even_alone(tmp_path):
    make_member(tmp_path, "model.connector=vet,trainer.seed=1", 0, [2.0])
    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task: [\"model.connector=vet,mlp\", trainer.max_steps=3]\n")
    text = summarize(tmp_path).path.read_text()
    assert "| `model.connector=vet` |" in text  # not every override the lone member has
    assert "Shared overrides: `trainer.max_steps=3`" in text


def test_without_callback_records_members_are_named_by_their_directory(tmp_path, capsys):
    run = tmp_path / "model.connector=mlp,trainer.max_steps=2"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 4.0}) + "\n")
    (tmp_path / "model.connector=vet,trainer.max_steps=2").mkdir()  # started, never logged
    (tmp_path / "model.connector=vet,trainer.max_steps=2" / "config.yaml").write_text("model: {connector: vet}\n")
    assert main([str(tmp_path)]) == 0
    assert "summary.md" in capsys.readouterr().out
    rows = {r["member"]: r for r in read_csv(tmp_path / "summary.csv")}
    assert rows["model.connector=mlp,trainer.max_steps=2"]["overrides"] == "model.connector=mlp trainer.max_steps=2"
    assert rows["model.connector=vet,trainer.max_steps=2"]["status"] == "failed"
    assert rows["model.connector=vet,trainer.max_steps=2"]["connector"] == "vet"


def test_the_cli_refuses_a_missing_directory(tmp_path):
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nope")])


def test_a_member_stopped_midway_is_listed_as_unfinished_with_its_overrides(tmp_path):
    make_member(tmp_path, "model.visual_vocab_size=64", 0, [3.0, 2.0])
    stopped = tmp_path / "model.visual_vocab_size=128"  # killed after its start was recorded
    write_record(stopped, MemberRecord(overrides=["model.visual_vocab_size=128", "data.batch_size=2"], job_num=1,
                                       status="started"))
    summary = summarize(tmp_path)
    rows = {r["member"]: r for r in read_csv(tmp_path / "summary.csv")}
    assert rows["model.visual_vocab_size=128"]["status"] == "started"
    assert rows["model.visual_vocab_size=128"]["overrides"] == "model.visual_vocab_size=128 data.batch_size=2"
    text = summary.path.read_text()
    assert "2 members: 1 completed, 0 failed, 1 unfinished." in text and "did not finish" in text
    assert summary.problem is None  # no sweep recorded here: nothing to count against


def test_a_summary_with_fewer_members_than_the_sweep_says_so_and_fails(tmp_path, capsys):
    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task: [\"model.visual_vocab_size=64,128,256\", trainer.max_steps=3]\n")
    make_member(tmp_path, "model.visual_vocab_size=64", 0, [3.0, 2.0])
    make_member(tmp_path, "model.visual_vocab_size=128", 1, [3.0, 2.5])
    assert main([str(tmp_path)]) == 1
    assert "found 2 of the sweep's 3 members" in capsys.readouterr().err
    text = (tmp_path / "summary.md").read_text()
    assert text.splitlines()[2].startswith("**Incomplete: the summary found 2 of the sweep's 3 members")
    make_member(tmp_path, "model.visual_vocab_size=256", 2, [3.0, 2.2])
    assert main([str(tmp_path)]) == 0
    assert "Incomplete" not in (tmp_path / "summary.md").read_text()


def test_a_sweep_over_seeds_gets_mean_and_std_per_group_from_its_finished_members(tmp_path):
    import statistics

    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task: [\"arm=a,b\", \"trainer.seed=0,1,2\", trainer.max_steps=3]\n")
    accuracy = {("a", 0): 0.70, ("a", 1): 0.74, ("a", 2): 0.75, ("b", 0): 0.60, ("b", 1): 0.64}
    for num, ((arm, seed), acc) in enumerate(accuracy.items()):
        run = tmp_path / f"arm={arm},trainer.seed={seed}"
        run.mkdir()
        (run / "metrics.jsonl").write_text(json.dumps({"step": 3, "loss": 1.0, "eval/loss": 1.0 + seed,
                                                       "eval/caption_accuracy": acc}) + "\n")
        write_record(run, MemberRecord([f"arm={arm}", f"trainer.seed={seed}", "trainer.max_steps=3"], num, "completed"))
    write_record(tmp_path / "arm=b,trainer.seed=2", MemberRecord(["arm=b", "trainer.seed=2", "trainer.max_steps=3"],
                                                                 5, "started"))  # stopped: not in the means
    summary = summarize(tmp_path)
    assert summary.problem is None  # 6 of 6 members found (one unfinished)
    groups = {r["group"]: r for r in read_csv(tmp_path / "summary_seeds.csv")}
    assert set(groups) == {"arm=a", "arm=b"} and groups["arm=a"]["n"] == "3" and groups["arm=b"]["n"] == "2"
    assert float(groups["arm=a"]["eval_caption_accuracy_mean"]) == pytest.approx(statistics.fmean([0.70, 0.74, 0.75]))
    assert float(groups["arm=a"]["eval_caption_accuracy_std"]) == pytest.approx(statistics.stdev([0.70, 0.74, 0.75]))
    assert float(groups["arm=b"]["eval_loss_mean"]) == pytest.approx(1.5)
    text = summary.path.read_text()
    assert "## Mean ± std over seeds" in text and "| `arm=a` | 3 | 0.730 ± 0.026 |" in text
