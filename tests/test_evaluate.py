"""Held-out scoring (ovis_train.train.evaluation, which the loop and the evaluate tool share): exact-match
caption accuracy over exactly `limit` samples, bad samples counted, and a loss per caption token that
does not depend on how the held-out samples are batched; the tool reports both."""

import io
import json
from collections import Counter

import pytest
from PIL import Image

import ovis_train.train.evaluation as evaluation
from ovis_train import evaluate
from ovis_train.data import write_shards
from ovis_train.data.heldout import heldout_samples
from ovis_train.data.synthetic import synthetic_samples
from ovis_train.model import ModelConfig, build_model
from ovis_train.run import RunDir


@pytest.fixture(scope="module")
def bundle():
    return build_model(ModelConfig(preset="tiny"))


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """Two bad samples first (undecodable image, empty caption), then 8 good ones."""
    png = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(png, format="PNG")
    bad = [{"__key__": "bad0", "png": b"not an image", "txt": "a red square"},
           {"__key__": "bad1", "png": png.getvalue(), "txt": "   "}]
    folder = tmp_path_factory.mktemp("heldout")
    write_shards([*bad, *synthetic_samples(8, seed=3)], str(folder), samples_per_shard=5, prefix="heldout")
    return str(folder / "heldout-{000000..000001}.tar")


def test_accuracy_is_exact_match_over_limit_samples_and_bad_ones_are_counted(bundle, heldout, monkeypatch):
    def half_right(bundle, images, prompt, max_new_tokens):
        half_right.calls += 1
        return [" " + ref + " " if i % 2 == 0 else ref.upper() for i, ref in enumerate(references[:len(images)])]

    half_right.calls = 0
    references = [s.caption for s in heldout_samples(heldout, 5, Counter())]
    monkeypatch.setattr(evaluation, "caption", half_right)
    score = evaluation.caption_accuracy(bundle, heldout, limit=5, batch_size=8)
    assert score.n == 5 and half_right.calls == 1
    assert score.accuracy == pytest.approx(3 / 5)  # padding whitespace is forgiven, case is not
    assert score.bad_counts == {"undecodable_image": 1, "empty_caption": 1}
    assert [e[1] for e in score.examples] == references


def test_accuracy_with_a_real_model_scores_its_own_greedy_captions(bundle, heldout):
    score = evaluation.caption_accuracy(bundle, heldout, limit=4, batch_size=2, max_new_tokens=4)
    generated = evaluation.caption(bundle, [s.image for s in heldout_samples(heldout, 4, Counter())],
                                 prompt=evaluation.DEFAULT_PROMPT, max_new_tokens=4)
    assert [e[2] for e in score.examples] == generated
    assert score.accuracy == sum(g == e[1] for g, e in zip(generated, score.examples)) / 4


def test_heldout_loss_is_per_caption_token_whatever_the_batching(bundle, heldout):
    whole = evaluation.heldout_loss(bundle, heldout, limit=8, batch_size=8)
    split = evaluation.heldout_loss(bundle, heldout, limit=8, batch_size=2)
    first_half = evaluation.heldout_loss(bundle, heldout, limit=4, batch_size=4)
    assert whole == pytest.approx(split, rel=1e-5)
    assert whole != pytest.approx(first_half, rel=1e-4)  # `limit` really limits the samples scored


def test_evaluate_tool_reports_both_numbers_for_a_run_directory(bundle, heldout, tmp_path, capsys):
    bundle.save_pretrained(str(RunDir(tmp_path / "run").export))  # a run directory: the tool scores its export
    assert evaluate.main([str(tmp_path / "run"), "--shards", heldout, "--limit", "4"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n"] == 4 and printed["bad_counts"] == {"undecodable_image": 1, "empty_caption": 1}
    assert printed["heldout_loss"] == pytest.approx(evaluation.heldout_loss(bundle, heldout, limit=4), rel=1e-5)
    assert printed["caption_accuracy"] == evaluation.caption_accuracy(bundle, heldout, limit=4).accuracy
