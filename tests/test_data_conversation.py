"""Conversation samples: rendered with the chat template, loss only on assistant text + end of turn."""

import io

import pytest
from PIL import Image

from ovis_train.data import DataConfig, SourceConfig, build_stream, write_shards
from ovis_train.model import ModelConfig, build_model

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


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 20, 20)).save(buffer, format="PNG")
    return buffer.getvalue()


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


def stream_for(shard, chat_template, **kw):
    bundle = build_model(ModelConfig(preset="tiny"))
    bundle.tokenizer.chat_template = chat_template
    cfg = DataConfig(sources=[SourceConfig(urls=shard)], batch_size=8, epochs=1, shuffle=False,
                     max_bad_fraction=1.0, **kw)
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


def test_truncation_keeps_image_and_cuts_the_last_answer(shard):
    bundle, full = stream_for(shard, CHATML_WITH_EOS)
    row = next(iter(full))["labels"][0]
    supervised = (row != -100).nonzero().flatten().tolist()
    last_turn_start = supervised[len(bundle.tokenizer(ANSWERS[0], add_special_tokens=False)["input_ids"]) + 1]
    bundle, cut = stream_for(shard, CHATML_WITH_EOS, max_length=last_turn_start + 2)
    batch = next(iter(cut))
    runs = supervised_runs(batch["input_ids"][0], batch["labels"][0])
    assert batch["input_ids"].shape[1] == last_turn_start + 2
    assert bundle.tokenizer.decode(runs[0]) == ANSWERS[0] + bundle.tokenizer.eos_token and len(runs[1]) == 2


def test_no_answer_within_the_limit_drops_the_sample(shard):
    _, stream = stream_for(shard, CHATML_WITH_EOS, max_length=12)  # shorter than the image block
    assert list(stream) == []  # not even a cut image block slips through
    assert stream.bad_counts == {"too_long": 3, "image_marker_mismatch": 1, "no_supervised_tokens": 1}
