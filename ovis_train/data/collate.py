"""Encoded samples -> one padded batch of tensors the model's forward takes.

``collate`` puts one sample per row, padded to the longest, with an attention mask. ``collate_packed``
puts several samples per row (packing): their tokens back to back, ``position_ids`` restarting at 0 at
every sample and no attention mask. transformers detects packed rows from exactly that (position ids
that restart, no mask, no cache) and gives every sample its own causal mask, so no sample sees another.
The first label of each sample is ignored: in a packed row it would be the target of the previous
sample's last token (unpacked, a row's first label is never a target anyway).
Both report the real (non-padding) token count as ``n_tokens`` and the sample count as ``n_samples``."""

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
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return _with_images_and_counts(batch, samples, keys, int(attention_mask.sum()), "samples")


def collate_packed(rows: list[list[EncodedSample]], pad_token_id: int, keys: list[str] | None = None) -> dict:
    """Packed rows (each a list of samples) -> input_ids, labels, position_ids (no attention_mask), image
    tensors in token order, and counts n_samples, n_images, n_tokens (real tokens), keys. Rows are right-padded
    to the longest row; padding continues the last sample's positions, so it forms no sample of its own and,
    coming last under a causal mask, is seen by nothing real."""
    length = max(sum(len(s.input_ids) for s in row) for row in rows)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), length), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for sample in row:
            n = len(sample.input_ids)
            input_ids[r, start: start + n] = torch.tensor(sample.input_ids, dtype=torch.long)
            labels[r, start + 1: start + n] = torch.tensor(sample.labels[1:], dtype=torch.long)
            position_ids[r, start: start + n] = torch.arange(n)
            start += n
        position_ids[r, start:] = torch.arange(length - start) + (int(position_ids[r, start - 1]) + 1)
    samples = [sample for row in rows for sample in row]
    batch = {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}
    batch = _with_images_and_counts(batch, samples, keys, sum(len(s.input_ids) for s in samples), "packed samples")
    return batch


def _named(keys):
    return f" ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})" if keys else ""


def _with_images_and_counts(batch: dict, samples: list[EncodedSample], keys, n_tokens: int, what: str) -> dict:
    """Both collates' tail: refuse a batch without a supervised token, add the image tensors in token order
    and the counts the loss and metrics use."""
    if int((batch["labels"] != IGNORE_INDEX).sum()) == 0:
        raise NoSupervisedTokens(
            f"batch of {len(samples)} {what}{_named(keys)} has no supervised token (every label is -100): "
            "the loss would be a silent zero; check the captions/assistant turns and data.max_length"
        )
    image_inputs = [inputs for sample in samples for inputs in sample.image_inputs]
    batch.update(stack_image_inputs(image_inputs))
    batch.update(n_samples=len(samples), n_images=len(image_inputs), n_tokens=n_tokens, keys=list(keys or []))
    return batch
