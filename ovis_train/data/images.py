"""PIL images -> uint8 crops the way the model's ``Ovis2ImageProcessor`` makes them; normalised later, on the device.

Contract. ``ImagePreparer(image_processor).prepare(images, max_crops)`` returns, per image, its crops as a
uint8 tensor ``[n_crops, 3, H, W]`` and its ``(rows, cols)`` grid. The crops are the processor's own
pixels before its rescale + normalise: the same grid choice (imported from transformers), the same
torchvision resize on uint8 (antialiased, the processor's resample), the same thumbnail-first order.
``normalize_pixels(batch)`` then does the processor's fused rescale + normalise, ``(x - 255 mean) /
(255 std)`` in float32, on whatever device the batch is on. Together they reproduce the processor's
``pixel_values`` (tested against it for every preset's processor, multi-crop included).

Why: the processor's batched call spends most of its time on per-image Python bookkeeping and on
float32 normalisation of every pixel in the worker; the float tensor is then 4x the bytes to pickle
from DataLoader workers. Here a worker does one resize per image and ships uint8; the device
normalises a whole batch in one fused op.

Batch keys: ``pixel_values`` (uint8 until normalised), ``pixel_mean`` and ``pixel_std`` (float32 ``[3]``,
already times 255; dropped by ``normalize_pixels``).
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.v2 import functional as tvF
from transformers.image_utils import pil_torch_interpolation_mapping
from transformers.models.ovis2.image_processing_ovis2 import get_min_tile_covering_grid, get_optimal_tiled_canvas

NORM_KEYS = ("pixel_mean", "pixel_std")


class ImagePreparer:
    """The processor's resize / multi-crop on uint8, with its settings read once."""

    def __init__(self, image_processor):
        p = image_processor
        if not (p.do_resize and p.do_rescale and p.do_normalize) or getattr(p, "do_center_crop", False):
            raise ValueError(f"{type(p).__name__} with do_resize/do_rescale/do_normalize off or center crop on: "
                             "the uint8 fast path only reproduces the resize + normalise processors")
        self.height, self.width = p.size["height"], p.size["width"]
        self.interpolation = pil_torch_interpolation_mapping[p.resample]
        self.crop_to_patches, self.min_patches = p.crop_to_patches, p.min_patches
        self.use_covering_area_grid = p.use_covering_area_grid
        # float32 like the processor's fused rescale + normalise; shared by every image of a batch
        self.mean = torch.tensor(p.image_mean, dtype=torch.float32) * (1.0 / p.rescale_factor)
        self.std = torch.tensor(p.image_std, dtype=torch.float32) * (1.0 / p.rescale_factor)

    def prepare(self, images: list, max_crops: int) -> list[tuple[dict, tuple[int, int]]]:
        """(inputs, grid) per PIL RGB image; inputs hold uint8 ``pixel_values`` and the norm constants."""
        return [self.one(image, max_crops) for image in images]

    def one(self, image, max_crops: int) -> tuple[dict, tuple[int, int]]:
        pixels = torch.from_numpy(np.array(image.convert("RGB") if image.mode != "RGB" else image)).permute(2, 0, 1)
        height, width = pixels.shape[-2:]
        if self.crop_to_patches and max_crops > 1:
            if self.use_covering_area_grid:
                cols, rows = get_min_tile_covering_grid((height, width), self.height, max_crops)
            else:
                cols, rows = get_optimal_tiled_canvas((height, width), (self.height, self.width),
                                                      self.min_patches, max_crops)
        else:
            rows = cols = 1
        canvas = self.resize(pixels, rows * self.height, cols * self.width)
        crops = [canvas[:, r * self.height: (r + 1) * self.height, c * self.width: (c + 1) * self.width]
                 for r in range(rows) for c in range(cols)]
        if len(crops) > 1:  # a whole-image thumbnail comes first
            crops.insert(0, self.resize(pixels, self.height, self.width))
        inputs = {"pixel_values": torch.stack(crops), "pixel_mean": self.mean, "pixel_std": self.std}
        return inputs, (rows, cols)

    def resize(self, pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if tuple(pixels.shape[-2:]) == (height, width):
            return pixels
        return tvF.resize(pixels, [height, width], interpolation=self.interpolation, antialias=True)


def stack_image_inputs(image_inputs: list[dict]) -> dict:
    """Per-image inputs -> batch tensors: crops concatenated, norm constants once (they are per processor)."""
    if not image_inputs:
        return {}
    batch = {k: torch.cat([inputs[k] for inputs in image_inputs]) for k in image_inputs[0] if k not in NORM_KEYS}
    batch.update({k: image_inputs[0][k] for k in NORM_KEYS if k in image_inputs[0]})
    return batch


def normalize_pixels(inputs: dict) -> dict:
    """uint8 ``pixel_values`` -> the processor's float32 values, on the tensors' device (call after the move)."""
    inputs = dict(inputs)
    mean, std = (inputs.pop(k, None) for k in NORM_KEYS)
    pixels = inputs.get("pixel_values")
    if pixels is not None and pixels.dtype == torch.uint8:
        if mean is None:
            raise ValueError("uint8 pixel_values without pixel_mean/pixel_std: the batch did not come from "
                             "ovis_train.data's collate; normalise the pixels before the forward")
        mean, std = mean.to(pixels.device).view(-1, 1, 1), std.to(pixels.device).view(-1, 1, 1)
        inputs["pixel_values"] = (pixels.float() - mean) / std
    return inputs
