"""The next-token loss of a batch as a sum over supervised tokens (callers divide by the global count)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ovis_train.data import IGNORE_INDEX
from ovis_train.data.images import NORM_KEYS, normalize_pixels

# A packed batch has position_ids and no attention_mask (see ovis_train/data/collate.py): with use_cache=False that is
# what makes transformers give each packed sample its own causal mask.
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "pixel_values")


def model_inputs(batch: dict, device) -> dict:
    """The forward's tensors on the device; uint8 pixels (as the stream ships them) normalised there."""
    return normalize_pixels({k: batch[k].to(device) for k in MODEL_INPUTS + NORM_KEYS if k in batch})


def supervised_tokens(labels: torch.Tensor) -> int:
    """Tokens that carry loss (labels are shifted by one: position i predicts token i + 1)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def token_loss_sum(model, batch: dict, device) -> torch.Tensor:
    """Sum (not mean) of next-token losses; logits only where the next token carries loss."""
    inputs = model_inputs(batch, device)
    targets = batch["labels"][:, 1:].to(device)
    keep = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(1)
    logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits
    return F.cross_entropy(
        logits.float().flatten(0, 1), targets[:, keep].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
