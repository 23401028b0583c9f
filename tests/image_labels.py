"""A test helper: labels for a batch the processor built by hand (the data pipeline masks image
positions itself, as it encodes each sample)."""

import torch

from ovis_train.model import image_token_ids


def mask_image_labels(labels: torch.Tensor, input_ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """``labels`` with every image position (atom or indicator) set to -100."""
    ids = torch.tensor(image_token_ids(tokenizer), device=input_ids.device)
    return labels.masked_fill(torch.isin(input_ids, ids), -100)
