"""Visual-token probabilities from a model, through the model's own code path: the vision tower's
forward (ViT -> hidden-stride merge -> visual head -> softmax) returns them as ``pooler_output``,
the tensor ``get_image_features`` turns into VET embeddings. Its columns are the visual rows only:
the indicator rows get their (zero) columns later, in ``get_image_features``."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ovis_train.data.decode import DecodedSample

from .images import Crop, crops_of
from .stats import Reduced, reduce_probs


@torch.no_grad()
def visual_probabilities(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """[n_crops, 3, S, S] -> [n_crops, T, K - n_indicators] float32 probabilities. With
    tokenize_function gumbel_argmax / st_argmax they are the one-hot tokens the LLM sees."""
    tower = model.model.vision_tower
    outputs = tower(pixel_values.to(model.device, model.dtype), return_dict=True)
    probs = outputs.pooler_output
    if probs.shape[-1] == 0:
        raise ValueError("this model uses the mlp connector: it has no visual vocabulary to analyse")
    return probs.float()


def probe(bundle, samples: Iterable[DecodedSample], batch_size: int = 32) -> tuple[Reduced, list[Crop]]:
    """Run the samples' crops through the model, ``batch_size`` crops at a time; returns the reduced
    statistics (one entry per crop) and the crops' pictures, in the same order."""
    model = bundle.model.eval()
    image_processor = bundle.processor.image_processor
    parts, crops, pending = [], [], []

    def flush():
        if pending:
            parts.append(reduce_probs(visual_probabilities(model, torch.cat(pending))))
            pending.clear()

    for sample in samples:
        pixel_values, sample_crops = crops_of(image_processor, sample)
        pending.append(pixel_values)
        crops.extend(sample_crops)
        if sum(len(p) for p in pending) >= batch_size:
            flush()
    flush()
    if not parts:
        raise ValueError("no images to analyse: the shards held no decodable image samples")
    return Reduced.cat(parts), crops
