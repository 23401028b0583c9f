"""Conversation samples with 0..N images: rendered with the chat template, loss only on assistant text + end
of turn, images in any turn, truncation by whole turns, marker / image checks, the visual-token budget."""

import io

import pytest
import torch
from PIL import Image

from ovis_train.data import DataConfig, SourceConfig, build_stream, write_shards
from ovis_train.data.images import normalize_pixels
from ovis_train.model import ModelConfig, build_model
from ovis_train.model.tokens import ATOM_TOKEN, INDICATOR_TOKENS

CHATML_WITH_EOS = (  # ChatML layout with the tokenizer's eos as end-of-turn (as SmolLM2 / Qwen instruct do)
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ANSWERS = ["It is a red circle.", "Yes, on a grey background."]
CONVERSATION = [
    {"from": "system", "value": "You describe images."},
    {"from": "human", "value": "<image>\nWhat is this?"},
    {"from": "gpt", "value": ANSWERS[0]},
    {"from": "human", "value": "Anything else?"},
    {"from": "gpt", "value": ANSWERS[1]},
]
COLOURS = [(200, 20, 20), (20, 200, 20), (20, 20, 200)]
THREE_IMAGES = [  # 3 images, 2 turns, the third image in the second turn
    {"from": "human", "value": "<image>\n<image>\nWhat are these?"},
    {"from": "gpt", "value": "two squares"},
    {"from": "human", "value": "<image>\nAnd this?"},
    {"from": "gpt", "value": "a blue one"},
]
TEXT_ONLY = [{"from": "human", "value": "Which colour is red?"}, {"from": "gpt", "value": "red"}]


def png(colour=COLOURS[0], size=(40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def numbered(images: list[bytes]) -> dict:
    return {f"{i}.png": data for i, data in enumerate(images)}


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    no_marker = [dict(t, value=t["value"].replace("<image>\n", "")) for t in CONVERSATION]
    samples = [
        {"__key__": "marked", "png": png(), "json": {"conversations": CONVERSATION}},
        {"__key__": "unmarked", "png": png(), "json": {"conversations": no_marker}},  # marker added to turn 1
        {"__key__": "textonly", "json": {"conversations": no_marker}},
        {"__key__": "twomarkers", "png": png(), "json": {"conversations": CONVERSATION + CONVERSATION[1:3]}},
        {"__key__": "noanswer", "png": png(), "json": {"conversations": CONVERSATION[:2]}},
    ]
    return write_shards(samples, str(tmp_path_factory.mktemp("conv")), samples_per_shard=10)


@pytest.fixture(scope="module")
def multi_shard(tmp_path_factory):
    three = numbered([png(c) for c in COLOURS])
    samples = [
        {"__key__": "three", **three, "json": {"conversations": THREE_IMAGES}},
        {"__key__": "text", "json": {"conversations": TEXT_ONLY}},
        {"__key__": "messages", **three, "json": {"messages": [  # the messages layout, content parts too
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\n"}, {"type": "image"},
                                         {"type": "text", "text": "\nWhat are these?"}]},
            {"role": "assistant", "content": "two squares"},
            {"role": "user", "content": "<image>\nAnd this?"}, {"role": "assistant", "content": "a blue one"}]}},
        {"__key__": "fewer", **numbered([png(), png()]), "json": {"conversations": THREE_IMAGES}},  # 3 markers
        {"__key__": "gap", "0.png": png(), "2.png": png(), "json": {"conversations": THREE_IMAGES[:2]}},
        {"__key__": "many", **numbered([png()] * 5), "json": {"conversations": THREE_IMAGES}},
    ]
    return write_shards(samples, str(tmp_path_factory.mktemp("multi")), samples_per_shard=10)


def stream_for(shard, chat_template, max_crops=1, **kw):
    bundle = build_model(ModelConfig(preset="tiny", max_crops=max_crops))
    bundle.tokenizer.chat_template = chat_template
    kw.setdefault("batch_size", 8)
    cfg = DataConfig(sources=[SourceConfig(urls=shard)], epochs=1, shuffle=False, max_bad_fraction=1.0,
                     max_images_per_sample=4, **kw)
    return bundle, build_stream(cfg, bundle)


def supervised_runs(input_ids, labels):
    """Contiguous runs of supervised positions, as token lists (and checks labels == input ids there)."""
    runs, current = [], []
    for token, label in zip(input_ids.tolist(), labels.tolist()):
        if label != -100:
            assert label == token
            current.append(label)
        elif current:
            runs, current = runs + [current], []
    return runs + ([current] if current else [])


def rows(batch):
    """(ids, labels) of each row without padding."""
    out = []
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"].bool()):
        out.append((ids[mask].tolist(), labels[mask].tolist()))
    return out


@pytest.mark.parametrize("chat_template", [CHATML_WITH_EOS, None])  # None: the built-in fallback
def test_only_assistant_text_and_end_of_turn_carry_labels(shard, chat_template):
    bundle, stream = stream_for(shard, chat_template)
    batch = next(iter(stream))
    tok = bundle.tokenizer
    assert batch["keys"] == ["marked", "unmarked", "textonly"]
    assert stream.bad_counts == {"image_marker_mismatch": 1, "no_supervised_tokens": 1}
    assert batch["n_images"] == 2 and batch["pixel_values"].shape[0] == 2
    image_start = tok.convert_tokens_to_ids("<IMG_START>")
    for row in range(3):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()]
        assert (ids == image_start).sum() == (0 if row == 2 else 1)
        runs = supervised_runs(batch["input_ids"][row], batch["labels"][row])
        assert [tok.decode(run) for run in runs] == [answer + tok.eos_token for answer in ANSWERS]
        text = tok.decode(ids)
        assert "What is this?" in text and "You describe images." in text  # present, but not supervised


def expected_three_image_sample(bundle):
    """Ids and labels of THREE_IMAGES under CHATML_WITH_EOS, built piece by piece by hand."""
    tok = bundle.tokenizer
    eos = tok.eos_token_id
    start, grid, _, _, end = tok.convert_tokens_to_ids(list(INDICATOR_TOKENS))
    block = [start] + [tok.convert_tokens_to_ids(ATOM_TOKEN)] * bundle.processor.image_seq_length + [grid, end]

    def t(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    prompt_1 = t("<|im_start|>user\n") + block + t("\n") + block + t("\nWhat are these?") + [eos] \
        + t("\n<|im_start|>assistant\n")
    answer_1 = t("two squares") + [eos]
    prompt_2 = t("<|im_start|>user\n") + block + t("\nAnd this?") + [eos] + t("\n<|im_start|>assistant\n")
    answer_2 = t("a blue one") + [eos]
    newline = t("\n")  # after each end of turn: part of the turn, not supervised
    ids = prompt_1 + answer_1 + newline + prompt_2 + answer_2 + newline
    labels = [-100] * len(prompt_1) + answer_1 + [-100] * len(newline + prompt_2) + answer_2 + [-100] * len(newline)
    return ids, labels, len(prompt_1 + answer_1 + newline)


def test_exact_labels_for_three_images_over_two_turns_and_for_a_text_only_sample(multi_shard):
    bundle, stream = stream_for(multi_shard, CHATML_WITH_EOS)
    batch = next(iter(stream))
    assert batch["keys"] == ["three", "text", "messages"]
    ids, labels, _ = expected_three_image_sample(bundle)
    (three_ids, three_labels), (text_ids, text_labels), (messages_ids, messages_labels) = rows(batch)
    assert three_ids == ids and three_labels == labels
    assert (messages_ids, messages_labels) == (ids, labels)  # the messages layout reads the same
    tok = bundle.tokenizer
    question = tok("<|im_start|>user\nWhich colour is red?", add_special_tokens=False)["input_ids"]
    header = tok("\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    answer = tok("red", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert text_ids == question + [tok.eos_token_id] + header + answer + newline
    assert text_labels == [-100] * (len(question) + 1 + len(header)) + answer + [-100] * len(newline)
    # pixels: the three images of each image sample in marker order, none for the text-only one
    one = [bundle.processor.image_processor([Image.open(io.BytesIO(png(c)))], return_tensors="pt")["pixel_values"]
           for c in COLOURS]
    assert batch["n_images"] == 6 and torch.equal(normalize_pixels(batch)["pixel_values"], torch.cat(one + one))


def test_marker_and_image_file_problems_are_counted_per_reason(multi_shard):
    _, stream = stream_for(multi_shard, CHATML_WITH_EOS)
    assert sum(len(batch["keys"]) for batch in stream) == 3
    assert stream.bad_counts == {"image_marker_mismatch": 1, "image_numbering": 1, "too_many_images": 1}


def test_truncation_drops_whole_later_turns_with_their_images(multi_shard):
    bundle, _ = stream_for(multi_shard, CHATML_WITH_EOS)
    ids, labels, first_turn = expected_three_image_sample(bundle)
    for max_length in (first_turn, len(ids) - 1):  # the second turn fits nowhere near, or misses one token
        bundle, stream = stream_for(multi_shard, CHATML_WITH_EOS, max_length=max_length, batch_size=1)
        batch = next(iter(stream))
        assert batch["keys"] == ["three"]
        assert rows(batch) == [(ids[:first_turn], labels[:first_turn])]
        assert batch["n_images"] == 2 and batch["pixel_values"].shape[0] == 2  # the third went with its turn


def test_a_first_turn_too_long_is_cut_in_its_answer_never_in_an_image_block(multi_shard):
    bundle, _ = stream_for(multi_shard, CHATML_WITH_EOS)
    ids, labels, first_turn = expected_three_image_sample(bundle)
    answer_start = labels.index(next(label for label in labels if label != -100))
    bundle, stream = stream_for(multi_shard, CHATML_WITH_EOS, max_length=answer_start + 1, batch_size=1)
    batch = next(iter(stream))
    assert rows(batch) == [(ids[:answer_start + 1], labels[:answer_start + 1])]  # one answer token
    # one token short of the second image block: too_long, not cut (the short text-only sample still fits)
    second_block_end = [i for i, token in enumerate(ids) if token == bundle.tokenizer.convert_tokens_to_ids(
        "<IMG_END>")][1] + 1
    bundle, stream = stream_for(multi_shard, CHATML_WITH_EOS, max_length=second_block_end - 1)
    keys = [key for batch in stream for key in batch["keys"]]
    assert keys == ["text"] and stream.bad_counts["too_long"] == 2


def test_visual_token_budget_lowers_crops_per_image_and_keeps_every_image(multi_shard):
    big = Image.new("RGB", (128, 128), COLOURS[0])
    bundle = build_model(ModelConfig(preset="tiny", max_crops=4))
    per_crop = bundle.processor.image_seq_length
    # without a budget a 128 px image makes a 2 x 2 grid plus its thumbnail
    assert bundle.processor.image_processor([big], return_tensors="pt")["pixel_values"].shape[0] == 5
    samples = []
    for n in (1, 2, 3):
        buffer = io.BytesIO()
        big.save(buffer, format="PNG")
        turns = [{"from": "human", "value": "<image>\n" * n + "What?"}, {"from": "gpt", "value": "red"}]
        samples.append({"__key__": f"n{n}", **numbered([buffer.getvalue()] * n), "json": {"conversations": turns}})
    urls = write_shards(samples, str(multi_shard[0]) + ".budget", samples_per_shard=10)
    atom = bundle.tokenizer.convert_tokens_to_ids(ATOM_TOKEN)
    image_start = bundle.tokenizer.convert_tokens_to_ids("<IMG_START>")
    # budget 6 crops: 1 image -> grids up to 4 (5 crops); 2 -> 3 crops each allowed, max_patches 2, for which
    # the processor's covering rule picks one crop of a square image; 3 -> one crop each
    for budget, crops in ((None, [5, 10, 15]), (6 * per_crop, [5, 2, 3])):
        cfg = DataConfig(sources=[SourceConfig(urls=urls)], epochs=1, shuffle=False, batch_size=3,
                         max_visual_tokens_per_sample=budget, max_length=1024)
        batch = next(iter(build_stream(cfg, bundle)))
        assert [int((ids == image_start).sum()) for ids in batch["input_ids"]] == [1, 2, 3]  # no image dropped
        assert [int((ids == atom).sum()) // per_crop for ids in batch["input_ids"]] == crops
        assert batch["pixel_values"].shape[0] == sum(crops)
    # the 2-image sample's crops are what the processor makes with 2 patches at most, image by image
    alone = bundle.processor.image_processor([big], return_tensors="pt", max_patches=2)["pixel_values"]
    assert torch.equal(normalize_pixels(batch)["pixel_values"][5:7], torch.cat([alone, alone]))


def test_no_answer_within_the_limit_drops_the_sample(shard):
    _, stream = stream_for(shard, CHATML_WITH_EOS, max_length=12)  # shorter than the image block
    assert list(stream) == []  # not even a cut image block slips through
    assert stream.bad_counts == {"too_long": 3, "image_marker_mismatch": 1, "no_supervised_tokens": 1}


@pytest.fixture(scope="module")
def conversation_shards(tmp_path_factory):
    from ovis_train.data.make_shards import main as make_shards
    from ovis_train.data.synthetic import write_synthetic_conversations

    folder = tmp_path_factory.mktemp("convshards")
    meta = write_synthetic_conversations(str(folder / "raw"), n_samples=48, seed=4)
    return make_shards(["ovis", meta, "--out", str(folder / "shards"), "--samples-per-shard", "6"])["shard"]


@pytest.mark.parametrize("num_workers,n_saved", [(0, 7), (2, 5)])
def test_resume_continues_exactly_with_multi_image_and_text_only_samples(conversation_shards, num_workers, n_saved):
    bundle = build_model(ModelConfig(preset="tiny"))
    cfg = DataConfig(sources=[SourceConfig(urls=conversation_shards)], batch_size=3, shuffle_buffer=5, seed=3,
                     num_workers=num_workers)  # endless: crosses epoch ends (48 samples = 16 batches)
    k = 12

    def first(stream, n):
        out = []
        for batch in stream:
            out.append(batch)
            if len(out) == n:
                return out

    reference = first(build_stream(cfg, bundle), n_saved + k)
    stream = build_stream(cfg, bundle)
    first(stream, n_saved)
    resumed = build_stream(cfg, bundle)
    resumed.load_state_dict(stream.state_dict())
    after = first(resumed, k)
    for want, got in zip(reference[n_saved:], after):
        assert want["keys"] == got["keys"] and want["n_images"] == got["n_images"]
        for key in ("input_ids", "attention_mask", "labels", "pixel_values"):
            assert (key in want) == (key in got) and (key not in want or torch.equal(want[key], got[key])), key
    images_per_sample = {int((ids == bundle.tokenizer.convert_tokens_to_ids("<IMG_START>")).sum())
                         for batch in after for ids in batch["input_ids"]}
    assert images_per_sample == {0, 1, 2, 3}  # the resumed stretch holds text-only and 1-3 image samples
