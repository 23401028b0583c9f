"""Tiny deterministic image-caption shards for tests: a coloured shape whose caption names it
("a red circle"; "a small blue square" when it covers under half the image side, so lengths vary)."""

from __future__ import annotations

import io

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
