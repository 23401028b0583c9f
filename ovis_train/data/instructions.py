"""A small offline instruction set made from a labelled image dataset (the demo's P3): conversations whose
answers need several images, one image, or none.

| kind            | images | question                                          | answer                         |
|-----------------|--------|---------------------------------------------------|--------------------------------|
| which_of_two    | 2      | Which of the two images shows a bag?              | the first / the second         |
| count           | 3      | How many of these three images show footwear?     | zero .. three (equally often)  |
| what_is_this    | 1      | What is this?                                     | the class: a sandal            |
| text_only       | 0      | Which of these is footwear: a coat or a sandal?   | the member of the group        |

    python -m ovis_train.data.make_shards fashion-mnist-chat   # -> data/shards/fashion_mnist_chat (conf/data)

Every conversation opens with a short system turn (a tokenizer's default system prompt, SmolLM2's for
one, would otherwise be a quarter of the text). The train split draws its images from the dataset's
training images only and the held-out split from its held-out images only (the same held-out images
as the caption builders'), so held-out answers are about pictures never trained on; text-only
questions have no picture and repeat across splits. Kinds take turns, so the first N held-out samples
cover every kind evenly, and each sample's json names its ``kind`` (held-out answers are scored per kind).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .inputs import parse_heldout
from .offline_datasets import DIGIT_NAMES, FASHION_CLASSES, FASHION_MNIST_DIR, mnist_5k_path, png_bytes, read_idx

SYSTEM = "Answer in a few words."
KINDS = ("which_of_two", "count", "what_is_this", "text_only")
NUMBERS = ("zero", "one", "two", "three")
ORDINALS = ("the first", "the second")
DEFAULT_TRAIN, DEFAULT_HELDOUT = 4000, 400
SAMPLES_PER_SHARD = {"fashion-mnist-chat": 1000, "mnist-5k-chat": 1000}  # 4 train shards, 1 held-out


@dataclass
class Labelled:
    """Images (N x H x W uint8), their labels, what each class is called and a group of classes to count."""
    images: np.ndarray
    labels: np.ndarray
    names: list[str]  # "a sandal"
    group: str  # "footwear"
    members: frozenset[int]  # the classes in the group


def conversations(data: Labelled, n: int, rng: np.random.Generator, prefix: str) -> Iterator[dict]:
    """``n`` samples ``{"__key__", "0.png", ..., "json": {"kind", "conversations"}}``, kinds in turn."""
    by_class = {c: np.flatnonzero(data.labels == c) for c in range(len(data.names))}
    inside = [c for c in by_class if c in data.members]
    outside = [c for c in by_class if c not in data.members]

    def image_of(cls):
        return data.images[rng.choice(by_class[cls])]

    for index in range(n):
        kind = KINDS[index % len(KINDS)]
        if kind == "which_of_two":
            a, b = rng.choice(len(data.names), size=2, replace=False)
            pictures, which = [image_of(a), image_of(b)], int(rng.integers(2))
            question, answer = f"Which of the two images shows {data.names[(a, b)[which]]}?", ORDINALS[which]
        elif kind == "count":
            count = int(rng.integers(4))
            classes = [rng.choice(inside) for _ in range(count)] + [rng.choice(outside) for _ in range(3 - count)]
            pictures = [image_of(c) for c in rng.permutation(classes)]
            question, answer = f"How many of these three images show {data.group}?", NUMBERS[count]
        elif kind == "what_is_this":
            cls = int(rng.integers(len(data.names)))
            pictures, question, answer = [image_of(cls)], "What is this?", data.names[cls]
        else:
            member, other = data.names[rng.choice(inside)], data.names[rng.choice(outside)]
            pair = (member, other) if rng.integers(2) else (other, member)
            pictures, question, answer = [], f"Which of these is {data.group}: {pair[0]} or {pair[1]}?", member
        turns = [{"from": "system", "value": SYSTEM},
                 {"from": "human", "value": "<image>\n" * len(pictures) + question},
                 {"from": "gpt", "value": answer}]
        sample = {"__key__": f"{prefix}{index:06d}", "json": {"kind": kind, "conversations": turns}}
        sample.update({f"{i}.png": png_bytes(p) for i, p in enumerate(pictures)})
        yield sample


def _splits(train: Labelled, heldout: Labelled, seed: int, limit: int | None, n_heldout) -> dict:
    n_train = DEFAULT_TRAIN if limit is None else limit
    if n_heldout is not None and float(n_heldout) != int(float(n_heldout)):
        raise ValueError(f"--heldout {n_heldout}: the instruction builders take a count of held-out conversations")
    n_held = DEFAULT_HELDOUT if n_heldout is None else int(float(n_heldout))
    if limit is not None:
        n_held = min(n_held, limit)
    return {"train": conversations(train, n_train, np.random.default_rng([seed, 0]), "chattrain"),
            "heldout": conversations(heldout, n_held, np.random.default_rng([seed, 1]), "chatheldout")}


def fashion_mnist_chat(seed: int = 0, limit: int | None = None, heldout=None, root: str = FASHION_MNIST_DIR) -> dict:
    """Questions about Fashion-MNIST: train images from its train set, held-out ones from its test set."""
    parts = []
    for stem in ("train", "t10k"):
        paths = [os.path.join(root, f"{stem}-{what}-idx{d}-ubyte.gz") for what, d in (("images", 3), ("labels", 1))]
        for path in paths:
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} is missing: install the Debian package dataset-fashion-mnist")
        parts.append(Labelled(read_idx(paths[0]), read_idx(paths[1]), FASHION_CLASSES, "footwear",
                              frozenset({5, 7, 9})))  # sandal, sneaker, ankle boot
    return _splits(*parts, seed, limit, heldout)


def mnist_5k_chat(seed: int = 0, limit: int | None = None, heldout=None) -> dict:
    """Questions about MNIST-5k digits; held-out images are the caption builder's held-out 10%."""
    table = np.loadtxt(mnist_5k_path(), delimiter=",", dtype=np.float32)
    images, labels = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(int)
    order = np.random.default_rng(seed).permutation(len(labels))  # the caption builder's split
    n_held = parse_heldout(0.1, len(labels))
    names = [("an " if n == "eight" else "a ") + n for n in DIGIT_NAMES]
    even = frozenset(range(0, 10, 2))
    parts = [Labelled(images[idx], labels[idx], names, "an even digit", even)
             for idx in (order[n_held:], order[:n_held])]
    return _splits(*parts, seed, limit, heldout)


BUILDERS = {"fashion-mnist-chat": fashion_mnist_chat, "mnist-5k-chat": mnist_5k_chat}
# answers a question of each kind offers to choose from (a uniform guess is right 1 in this many times)
OPTIONS = {"which_of_two": 2, "count": len(NUMBERS), "what_is_this": 10, "text_only": 2}
