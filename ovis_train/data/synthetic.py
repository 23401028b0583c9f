"""Tiny deterministic data for tests: image-caption shards of a coloured shape whose caption names it
("a red circle"; "a small blue square" when it covers under half the image side, so lengths vary), and
multi-image / text-only conversations about such shapes in the Ovis meta-JSON layout."""

from __future__ import annotations

import io
import json
import os

import numpy as np
from PIL import Image, ImageDraw

from .writer import write_shards

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle")


def synthetic_image(colour: str, shape: str, size: int, small: bool, rng: np.random.Generator) -> Image.Image:
    image = Image.new("RGB", (size, size), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    half = int(size * (rng.uniform(0.12, 0.2) if small else rng.uniform(0.3, 0.45)))
    cx, cy = (int(v) for v in rng.integers(half, size - half, 2, endpoint=True))
    box = (cx - half, cy - half, cx + half, cy + half)
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    else:
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=COLOURS[colour])
    return image


def synthetic_samples(n_samples: int, seed: int = 0, image_size: int = 32, image_format: str = "png",
                      key_prefix: str = "sample"):
    rng = np.random.default_rng(seed)
    for index in range(n_samples):
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        small = bool(rng.integers(2))
        buffer = io.BytesIO()
        image = synthetic_image(colour, shape, image_size, small, rng)
        image.save(buffer, format="JPEG" if image_format == "jpg" else "PNG")
        caption = f"a {'small ' if small else ''}{colour} {shape}"
        yield {"__key__": f"{key_prefix}{index:07d}", image_format: buffer.getvalue(), "txt": caption}


def write_synthetic_shards(out_dir: str, n_samples: int = 64, samples_per_shard: int = 16, seed: int = 0,
                           image_size: int = 32, image_format: str = "png", prefix: str = "synthetic") -> list[str]:
    """Shards of ``n_samples`` coloured shapes captioned "a <colour> <shape>"; returns their paths.
    Sample keys are ``<prefix><index>``, so shards written with different prefixes never share keys."""
    return write_shards(synthetic_samples(n_samples, seed, image_size, image_format, key_prefix=prefix), out_dir,
                        samples_per_shard, prefix=prefix, source=f"synthetic(seed={seed})")


NUMBERS = ("no", "one", "two", "three")


def write_synthetic_conversations(out_dir: str, n_samples: int = 32, seed: int = 0, image_size: int = 32,
                                  max_images: int = 3) -> str:
    """An Ovis meta-JSON (``out_dir/meta.json``, images beside it in ``images/``) of conversations about
    0..``max_images`` coloured shapes: one question over all images, and for some a second turn that brings
    one more image ("<image> And this one?"). Every fourth sample is text-only. Returns the JSON's path."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    records = []
    for index in range(n_samples):
        n_images = 0 if index % 4 == 3 else int(rng.integers(1, max_images + 1))
        shapes = [(list(COLOURS)[int(rng.integers(len(COLOURS)))], SHAPES[int(rng.integers(len(SHAPES)))],
                   bool(rng.integers(2))) for _ in range(n_images)]
        paths = []
        for k, (colour, shape, small) in enumerate(shapes):
            path = f"images/{index:05d}_{k}.png"
            synthetic_image(colour, shape, image_size, small, rng).save(os.path.join(out_dir, path))
            paths.append(path)
        if n_images == 0:
            colour = list(COLOURS)[index % len(COLOURS)]
            turns = [("human", f"Which colour is {colour}?"), ("gpt", f"{colour}")]
        elif n_images == 1 or not rng.integers(2):
            circles = sum(shape == "circle" for _, shape, _ in shapes)
            turns = [("human", "<image>\n" * n_images + "How many circles?"), ("gpt", NUMBERS[min(circles, 3)])]
        else:  # the last image arrives in the second turn
            first = shapes[:-1]
            colour, shape, small = shapes[-1]
            turns = [("human", "<image>\n" * len(first) + "What is the first one?"),
                     ("gpt", f"a {'small ' if first[0][2] else ''}{first[0][0]} {first[0][1]}"),
                     ("human", "<image>\nAnd this one?"), ("gpt", f"a {'small ' if small else ''}{colour} {shape}")]
        record = {"id": f"conv{index:05d}", "conversations": [{"from": who, "value": text} for who, text in turns]}
        if paths:
            record["image"] = paths if len(paths) > 1 else paths[0]
        records.append(record)
    path = os.path.join(out_dir, "meta.json")
    with open(path, "w") as f:
        json.dump(records, f, indent=1)
    return path
