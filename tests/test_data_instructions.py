"""The offline instruction set: every answer follows from the pictures' labels, kinds take turns, counts
are balanced, and held-out conversations show only held-out pictures."""

import io
import json
from collections import Counter

import numpy as np
from PIL import Image

from ovis_train.data.instructions import KINDS, NUMBERS, Labelled, conversations, mnist_5k_chat

NAMES = [f"a class{c}" for c in range(10)]


def labelled() -> Labelled:
    """Ten classes whose pictures are flat grey at 20 * class, so a decoded picture names its class."""
    labels = np.repeat(np.arange(10), 5)
    images = np.stack([np.full((8, 8), 20 * c, dtype=np.uint8) for c in labels])
    return Labelled(images, labels, NAMES, "group", frozenset({1, 4, 7}))


def label_of(data: bytes) -> int:
    return int(np.asarray(Image.open(io.BytesIO(data)))[0, 0]) // 20


def test_every_answer_follows_from_the_labels():
    samples = list(conversations(labelled(), 400, np.random.default_rng(0), "t"))
    assert [s["json"]["kind"] for s in samples[:8]] == [*KINDS, *KINDS]  # kinds take turns
    counts = Counter()
    for sample in samples:
        kind, turns = sample["json"]["kind"], sample["json"]["conversations"]
        assert [t["from"] for t in turns] == ["system", "human", "gpt"]
        question, answer = turns[1]["value"], turns[2]["value"]
        classes = [label_of(sample[f"{i}.png"]) for i in range(question.count("<image>"))]
        assert sorted(k for k in sample if k.endswith(".png")) == [f"{i}.png" for i in range(len(classes))]
        if kind == "which_of_two":
            named = question.removeprefix("<image>\n<image>\nWhich of the two images shows ").removesuffix("?")
            assert len(classes) == 2 and classes[0] != classes[1]
            assert NAMES[classes[("the first", "the second").index(answer)]] == named
        elif kind == "count":
            assert len(classes) == 3 and question.endswith("How many of these three images show group?")
            assert NUMBERS.index(answer) == sum(c in {1, 4, 7} for c in classes)
            counts[answer] += 1
        elif kind == "what_is_this":
            assert question == "<image>\nWhat is this?" and answer == NAMES[classes[0]]
        else:
            assert classes == [] and answer in question and NAMES.index(answer) in {1, 4, 7}
    assert set(counts) == set(NUMBERS) and min(counts.values()) > 15  # 100 count questions, 4 answers


def test_mnist_chat_heldout_pictures_are_never_trained_on():
    splits = mnist_5k_chat(seed=0, limit=400, heldout=100)
    pictures = {}
    for split, samples in splits.items():
        samples = list(samples)
        assert len(samples) == (400 if split == "train" else 100)
        assert Counter(s["json"]["kind"] for s in samples) == {k: len(samples) // 4 for k in KINDS}
        json.dumps([s["json"] for s in samples])
        pictures[split] = {v for s in samples for k, v in s.items() if k.endswith(".png")}
    assert len(pictures["heldout"]) > 100 and not pictures["heldout"] & pictures["train"]
