"""Chat mode: a tiny model taught, through the trainer's own encoding of conversations, which of two
images is red must answer about two images by their order, in Python and from the command line; and
held-out conversations are scored per kind by normalised exact match."""

import io
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from ovis_train.data import DataConfig, SourceConfig, build_stream, write_shards
from ovis_train.data.decode import DecodedSample
from ovis_train.data.encode import IGNORE_INDEX, SampleEncoder
from ovis_train.evaluate import score_answers
from ovis_train.model import ModelConfig, build_model, load_model
from ovis_train.model.caption import chat, chat_prompt, main, question_messages
from ovis_train.train import evaluation
from ovis_train.train.evaluation import answer_accuracy, normalize_answer
from ovis_train.train.loss import token_loss_sum

COLOURS = {"red": (230, 20, 20), "blue": (20, 20, 230)}
QUESTION = "Which of the two images is red?"


def solid(colour):
    return Image.new("RGB", (48, 48), COLOURS[colour])


def png(colour) -> bytes:
    buffer = io.BytesIO()
    solid(colour).save(buffer, format="PNG")
    return buffer.getvalue()


def which_is_red(key, first, second, kind="which_of_two"):
    """A held-out style sample: two images, the question, the answer naming the red one's position."""
    answer = "the first" if first == "red" else "the second"
    turns = [{"from": "human", "value": "<image>\n<image>\n" + QUESTION}, {"from": "gpt", "value": answer}]
    return {"__key__": key, "0.png": png(first), "1.png": png(second), "json": {"kind": kind, "conversations": turns}}


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    """(export folder, shard): the tiny model trained on red/blue and blue/red pairs until it answers."""
    folder = tmp_path_factory.mktemp("chat")
    shard = str(folder / "train-000000.tar")
    write_shards([which_is_red("rb", "red", "blue"), which_is_red("br", "blue", "red")], str(folder), 10,
                 prefix="train")
    torch.manual_seed(0)
    bundle = build_model(ModelConfig(preset="tiny"))
    data = DataConfig(sources=[SourceConfig(urls=shard)], batch_size=2, shuffle=False, max_length=256)
    batch = next(iter(build_stream(data, bundle)))  # the trainer's encoding: labels on the answers only
    model = bundle.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(600):  # it stops as soon as the answers are learned (~100-300 steps, by init and threads)
        loss = token_loss_sum(model, batch, "cpu") / int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 0.05:
            break
    export = folder / "export"
    bundle.save_pretrained(str(export))
    return str(export), shard


def test_chat_answers_about_two_images_in_their_order(taught):
    bundle = load_model(taught[0])
    pairs = [["red", "blue"], ["blue", "red"], ["blue", "red"], ["red", "blue"]]
    answers = chat(bundle, [question_messages(QUESTION, 2)] * 4, [[solid(c) for c in p] for p in pairs])
    assert answers == ["the first", "the second", "the second", "the first"]


def test_chat_prompt_is_the_training_encoding_up_to_the_answer():
    """What chat feeds the model is token for token what the trainer encoded before the answer, for
    two images, marked images, a system turn and no image at all."""
    bundle = build_model(ModelConfig(preset="tiny"))
    encoder = SampleEncoder(bundle.processor, bundle.tokenizer, max_length=512, caption_eos=False)
    cases = [(question_messages(QUESTION, 2), [solid("red"), solid("blue")]),
             (question_messages("Is <image> blue?", 1, system="Be brief."), [solid("blue")]),
             (question_messages("Hello?", 0), [])]
    for messages, images in cases:
        sample = DecodedSample("k", "s", images=images, conversation=[*messages, {"role": "assistant", "content": "x"}])
        encoded = encoder.encode_many([(sample, "")])[0]
        answer_start = next(i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX)
        ids = bundle.processor(text=[chat_prompt(bundle.tokenizer, messages)], images=images or None,
                               return_tensors="pt", add_special_tokens=False)["input_ids"][0].tolist()
        assert ids == encoded.input_ids[:answer_start]


def test_markers_must_match_the_images():
    assert question_messages("Which?", 2)[-1]["content"] == "<image>\n<image>\nWhich?"
    assert question_messages("Is <image> left of <image>?", 2, system="s")[0] == {"role": "system", "content": "s"}
    with pytest.raises(ValueError, match="1 <image> marker for 2 images"):
        question_messages("Is <image> red?", 2)
    bundle = build_model(ModelConfig(preset="tiny"))
    with pytest.raises(ValueError, match="conversation 0 has 2 <image> markers for 1 images"):
        chat(bundle, [question_messages(QUESTION, 2)], [[solid("red")]])


def test_chat_cli_answers_about_two_image_files(taught, tmp_path):
    paths = []
    for colour in ("blue", "red"):
        paths.append(str(tmp_path / f"{colour}.png"))
        solid(colour).save(paths[-1])
    out = subprocess.run([sys.executable, "-m", "ovis_train.caption", "--model", taught[0], "--ask", QUESTION, *paths],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["the second"]


@pytest.mark.parametrize("args, expected", [
    (["--ask", "Is <image> red?", "A", "B"], "the question has 1 <image> marker for 2 images"),
    (["--prompt", "Describe:", "A"], "the caption prompt needs exactly one <image> marker"),
    (["--ask", QUESTION, "A", "missing.png"], "missing.png"),
])
def test_cli_mistakes_are_one_line_without_a_traceback(args, expected, tmp_path, capsys):
    for name in ("A", "B"):
        solid("red").save(tmp_path / name, format="PNG")
    args = [str(tmp_path / a) if a in ("A", "B", "missing.png") else a for a in args]
    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(tmp_path / "no-model-needed"), *args])  # refused before any model loads
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err


@pytest.mark.parametrize("answer, reference, hit", [
    ("The second.", "the second", True),
    ("  SECOND ", "the second", True),
    ("an ankle boot", "ankle boot", True),
    ("a t-shirt", "A T-shirt!", True),
    ("two", "Two.", True),
    ("2", "two", False),  # numbers are not spelled out
    ("the first", "the second", False),
    ("a sandal or a coat", "a sandal", False),  # more than the answer is wrong
    ("", "the first", False),
])
def test_answers_are_normalised_for_case_punctuation_and_articles(answer, reference, hit):
    assert (normalize_answer(answer) == normalize_answer(reference)) is hit


def test_answer_accuracy_per_kind_with_hand_made_answers(tmp_path, monkeypatch):
    """Held-out shards with known references, answered by a stand-in for generation, so that every
    count is known: hits per kind, majority rates, and the samples that cannot be scored."""
    count = lambda key, answer: {"__key__": key, "json": {"kind": "count", "conversations": [  # noqa: E731
        {"from": "human", "value": "How many?"}, {"from": "gpt", "value": answer}]}}
    samples = [which_is_red("w0", "red", "blue"), which_is_red("w1", "blue", "red"), which_is_red("w2", "red", "blue"),
               count("c0", "two"), count("c1", "Zero."), count("c2", "two"), count("c3", "three"),
               {"__key__": "caption", "png": png("red"), "txt": "a red square"},  # not a conversation
               {"__key__": "open", "json": {"conversations": [{"from": "human", "value": "Hi"}]}},  # no answer
               {"__key__": "mismatch", "0.png": png("red"), "json": {"conversations": [
                   {"from": "human", "value": "<image><image>Hm?"}, {"from": "gpt", "value": "x"}]}}]
    write_shards(samples, str(tmp_path), 100, prefix="heldout")
    replies = {"w0": "The first.", "w1": "the first", "w2": "first", "c0": "two", "c1": "zero", "c2": "2", "c3": "three"}
    seen = []

    def answer_by_key(bundle, conversations, images, max_new_tokens):
        seen.extend(len(i) for i in images)
        budgets.add(max_new_tokens)
        return [replies[keys.pop(0)] for _ in conversations]

    keys, budgets = ["w0", "w1", "w2", "c0", "c1", "c2", "c3"], set()
    monkeypatch.setattr(evaluation, "chat", answer_by_key)
    words = SimpleNamespace(processor=SimpleNamespace(tokenizer=lambda text, add_special_tokens: {"input_ids": text.split()}))
    score = answer_accuracy(words, str(tmp_path / "heldout-000000.tar"), limit=20, batch_size=3)
    assert seen == [2, 2, 2, 0, 0, 0, 0]
    longest = max(len(reference.split()) for _, reference, _ in score.examples)  # the budget follows the references
    assert budgets == {longest + evaluation.ANSWER_SLACK}
    assert score.n == 7 and score.accuracy == pytest.approx(5 / 7)
    assert score.per_kind["which_of_two"].accuracy == pytest.approx(2 / 3)
    assert score.per_kind["which_of_two"].majority == pytest.approx(2 / 3)  # "first" twice of three
    assert score.per_kind["count"].accuracy == pytest.approx(3 / 4)
    assert score.per_kind["count"].majority == pytest.approx(2 / 4)
    assert score.bad_counts == {"not_a_conversation": 1, "no_final_answer": 1, "image_marker_mismatch": 1}
    assert [key for key, _, _ in score.examples] == ["w0", "w1", "w2", "c0", "c1", "c2", "c3"]


def test_score_answers_with_the_taught_model(taught, tmp_path, capsys):
    """The evaluate tool on held-out pairs the taught model answers right (and a kind it cannot)."""
    odd = {"__key__": "odd", "0.png": png("red"), "1.png": png("blue"), "json": {"kind": "odd", "conversations": [
        {"from": "human", "value": "<image>\n<image>\nWhat colour is the sky?"}, {"from": "gpt", "value": "grey"}]}}
    write_shards([which_is_red("h0", "blue", "red"), which_is_red("h1", "red", "blue"), odd], str(tmp_path), 10,
                 prefix="heldout")
    result = score_answers(load_model(taught[0]), str(tmp_path / "heldout-000000.tar"), limit=3)
    assert result["per_kind"]["which_of_two"] == {"accuracy": 1.0, "n": 2, "majority": 0.5}
    assert result["per_kind"]["odd"]["accuracy"] == 0.0
    assert result["answer_accuracy"] == pytest.approx(2 / 3)
    assert 0 < result["heldout_loss"] < 50 and json.dumps(result)  # serialisable for results.json
    # the command line says the same
    from ovis_train import evaluate

    assert evaluate.main([taught[0], "--shards", str(tmp_path / "heldout-000000.tar"), "--limit", "3", "--answers"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["per_kind"] == result["per_kind"] and printed["heldout_loss"] == pytest.approx(result["heldout_loss"])


def test_the_trainer_scores_held_out_answers_at_phase_end(tmp_path, monkeypatch):
    """trainer.answer_eval_samples: the phase's last metrics hold the answer accuracy overall and per
    kind, the same numbers the evaluation gives its export."""
    from ovis_train.run import RunDir
    from ovis_train.train.config import compose
    from ovis_train.train.loop import train

    monkeypatch.setenv("OVIS_TRAIN_CACHE", str(tmp_path / "cache"))
    pairs = [("red", "blue"), ("blue", "red")] * 4
    write_shards([which_is_red(f"t{i}", *p) for i, p in enumerate(pairs)], str(tmp_path), 100, prefix="train")
    held = [which_is_red("h0", "red", "blue"), which_is_red("h1", "blue", "red", kind="other")]
    write_shards(held, str(tmp_path), 100, prefix="heldout")
    heldout = str(tmp_path / "heldout-000000.tar")
    cfg = compose(["model=tiny", "data=synthetic", "logger=none", "phase=p3", f"run_dir={tmp_path / 'run'}",
                   f"data.sources=[{{urls: {tmp_path / 'train-000000.tar'}}}]", f"data.eval_urls={heldout}",
                   "trainer.max_steps=2", "trainer.answer_eval_samples=2"])
    run = RunDir(train(cfg))
    last = run.read_metrics()[-1]
    expected = answer_accuracy(load_model(str(run.export)), heldout, limit=2)
    assert last["eval/answer_accuracy"] == expected.accuracy
    assert last["eval/answer_accuracy/which_of_two"] == expected.per_kind["which_of_two"].accuracy
    assert last["eval/answer_accuracy/other"] == expected.per_kind["other"].accuracy
