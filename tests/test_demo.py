"""The demo's mechanics (P1 -> P2 -> P3 -> scored tables) with the tiny preset; the real run is in the README."""

import json

import pytest

from ovis_train import demo
from ovis_train.data.instructions import KINDS, OPTIONS
from ovis_train.model import load_model


@pytest.mark.slow
def test_demo_runs_the_three_phases_and_scores_each_stage(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE", "DS_ACCELERATOR"):
        monkeypatch.setenv(name, "")  # records the original value, so what quiet_environment sets is undone
        monkeypatch.delenv(name)
    demo.quiet_environment()
    scored_vet_rows = []  # VET size of every model the demo scores (bundles and exports alike)
    real_score = demo.score

    def spy_score(bundle_or_path, *args):
        bundle = bundle_or_path if hasattr(bundle_or_path, "model") else load_model(bundle_or_path)
        scored_vet_rows.append(bundle.model.model.visual_embeddings_table.num_embeddings)
        return real_score(bundle, *args)

    monkeypatch.setattr(demo, "score", spy_score)
    results = demo.main(["--model", "tiny", "--dataset", "mnist_5k", "--p1-steps", "2", "--p2-steps", "2",
                         "--p3-steps", "2", "--eval-samples", "8", "--answer-samples", "8", "--out",
                         str(tmp_path / "demo"), "model.visual_vocab_size=48"])
    out = tmp_path / "demo"
    # a model override reaches the untrained model scored before P1 as well as both phases
    assert scored_vet_rows == [48, 48, 48]
    for phase in ("p1", "p2", "p3"):
        assert (out / phase / "export" / "model.safetensors").exists()
        assert len((out / phase / "metrics.jsonl").read_text().splitlines()) == 2
    saved = json.loads((out / "results.json").read_text())
    assert saved["after P2"]["heldout_loss"] == results["after P2"]["heldout_loss"]
    stages = [results[s] for s in ("before P1", "after P1", "after P2")]
    assert all(s["n"] == 8 and 0.0 <= s["caption_accuracy"] <= 1.0 for s in stages)
    # the scores come from the trained exports: held-out loss falls as the phases train
    assert stages[2]["heldout_loss"] < stages[1]["heldout_loss"] < stages[0]["heldout_loss"]
    # P3: held-out answers per question kind (two of each), before (the P2 export) and after
    before, after = results["before P3"], results["after P3"]
    assert list(after["per_kind"]) == sorted(KINDS) and {k["n"] for k in after["per_kind"].values()} == {2}
    assert all(after["per_kind"][kind]["chance"] >= 1 / OPTIONS[kind] for kind in KINDS)
    assert after["heldout_loss"] < before["heldout_loss"]  # P3 trained on the answers
    printed = capfd.readouterr()
    assert "| after P2  |" in printed.out and str(out / "results.md") in printed.out
    assert "| which_of_two   |   2 |" in printed.out and f"--model {out / 'p3' / 'export'}" in printed.out
    # quieted, the phases still draw their progress bars (the demo's one sign of life while it trains)
    assert "p1: 100%" in printed.err and "p2: 100%" in printed.err and "p3: 100%" in printed.err


def test_the_documented_phase_commands_are_the_ones_the_demo_runs():
    """README.md and recipes/demo/README.md show the commands the demo prints (its defaults, Fashion-MNIST)."""
    import re
    import shlex
    from pathlib import Path

    repo = Path(demo.__file__).resolve().parents[1]
    expected = demo.phase_commands(demo.parse_args(["--dataset", "fashion_mnist"]), "fashion_mnist")
    for doc in ("README.md", "recipes/demo/README.md"):
        documented = {}
        for line in re.findall(r"^python -m ovis_train (phase=demo_p\d.*)$", (repo / doc).read_text(), re.M):
            words = [w for w in shlex.split(line) if not w.startswith(("run_dir=", "init_from="))]
            documented["P" + words[0][-1]] = words
        assert documented == expected, doc
