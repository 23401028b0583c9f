"""Images to analyse: read from shards as the held-out evaluation reads them, turned into crops by
the model's own image processor, and kept as uint8 pictures of exactly what the vision tower saw
(for the patch figures)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from ovis_train.data.decode import DecodedSample
from ovis_train.data.heldout import heldout_samples

log = logging.getLogger(__name__)


@dataclass
class Crop:
    name: str  # the sample key; "<key>#<i>" for the i-th crop of a multi-crop image
    caption: str
    pixels: np.ndarray  # uint8 [S, S, 3]


def read_samples(urls, limit: int) -> list[DecodedSample]:
    """The first ``limit`` decodable image-caption samples of the shards, in shard order."""
    bad = Counter()
    samples = heldout_samples(urls, limit, bad)
    if bad:
        log.warning("skipped samples: %s", dict(bad))
    return samples


def to_uint8(pixel_values: torch.Tensor, image_processor) -> np.ndarray:
    """Undo the processor's normalisation: [n, 3, S, S] model input -> uint8 [n, S, S, 3] pictures."""
    mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)
    pixels = (pixel_values.float().cpu() * std + mean).clamp(0, 1) * 255
    return pixels.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def crops_of(image_processor, sample: DecodedSample) -> tuple[torch.Tensor, list[Crop]]:
    """The model input for one image (all its crops) and a picture of each crop."""
    pixel_values = image_processor(images=[sample.image], return_tensors="pt")["pixel_values"]
    pictures = to_uint8(pixel_values, image_processor)
    caption = sample.caption or ""
    if len(pictures) == 1:
        return pixel_values, [Crop(sample.key, caption, pictures[0])]
    return pixel_values, [Crop(f"{sample.key}#{i}", caption, p) for i, p in enumerate(pictures)]


def patch_box(token: int, n_tokens: int, image_side: int) -> tuple[int, int, int, int]:
    """Pixel box (left, top, right, bottom) of a visual token: tokens tile the crop row by row on a
    square grid (after the hidden-stride merge, one token covers hs x hs ViT patches)."""
    side = int(round(n_tokens**0.5))
    cell = image_side / side
    row, col = divmod(int(token), side)
    return int(col * cell), int(row * cell), int((col + 1) * cell), int((row + 1) * cell)
