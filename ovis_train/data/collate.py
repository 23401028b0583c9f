"""Encoded samples -> one padded batch of tensors the model's forward takes."""

from __future__ import annotations

import torch

from .encode import IGNORE_INDEX, EncodedSample
from .images import stack_image_inputs


class NoSupervisedTokens(ValueError):
    pass


def collate(samples: list[EncodedSample], pad_token_id: int, padding_side: str, keys: list[str] | None = None) -> dict:
    """Pad to the longest sample. Output keys: input_ids, attention_mask, labels, the processor's
    image tensors concatenated over images (pixel_values as uint8 + pixel_mean, pixel_std: normalise on the
    device with ``normalize_pixels``; absent when no sample has an image),
    plain-int counts n_samples, n_images, and the sample keys (debugging)."""
    length = max(len(s.input_ids) for s in samples)
    input_ids = torch.full((len(samples), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample.input_ids)
        span = slice(0, n) if padding_side == "right" else slice(length - n, length)
        input_ids[row, span] = torch.tensor(sample.input_ids, dtype=torch.long)
        labels[row, span] = torch.tensor(sample.labels, dtype=torch.long)
        attention_mask[row, span] = 1
    n_label_tokens = int((labels != IGNORE_INDEX).sum())
    if n_label_tokens == 0:
        raise NoSupervisedTokens(
            f"batch of {len(samples)} samples{_named(keys)} has no supervised token (every label is -100): "
            "the loss would be a silent zero; check the captions/assistant turns and data.max_length"
        )
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    image_inputs = [inputs for sample in samples for inputs in sample.image_inputs]
    batch.update(stack_image_inputs(image_inputs))
    batch.update(n_samples=len(samples), n_images=len(image_inputs), keys=list(keys or []))
    return batch


def _named(keys):
    return f" ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})" if keys else ""
