"""Statistics of visual-token probabilities (the Interpretability part of the Ovis VET description).

Input: ``probs [N images, T tokens, K rows]``, each token's probability distribution over the visual
vocabulary (the indicator rows excluded; they never get probability). A dataset rarely fits as one
tensor (N x T x K), so every statistic reads a ``Reduced``: the per-image reductions the statistics
need, O(N x K), computed batch by batch with ``reduce_probs`` and joined with ``Reduced.cat``.
Every statistic also accepts the raw tensor (it is reduced first), so they stay pure functions of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch


@dataclass
class Reduced:
    mass: torch.Tensor  # [N, K] probability summed over an image's tokens
    peak: torch.Tensor  # [N, K] an image's highest probability on each row ...
    peak_token: torch.Tensor  # [N, K] ... and the token that has it
    entropy: torch.Tensor  # [N, T] per-token entropy (nats)
    confidence: torch.Tensor  # [N, T] per-token max probability ...
    confident_row: torch.Tensor  # [N, T] ... and its row

    @property
    def vocab_size(self) -> int:
        return self.mass.shape[1]

    @staticmethod
    def cat(parts: list[Reduced]) -> Reduced:
        return Reduced(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Reduced)})


@torch.no_grad()
def reduce_probs(probs: torch.Tensor) -> Reduced:
    """[N, T, K] probabilities -> what the statistics need (per-image sums kept in float64: summed over
    thousands of images they stay exact enough)."""
    if probs.ndim != 3:
        raise ValueError(f"expected probabilities [N images, T tokens, K rows], got shape {tuple(probs.shape)}")
    probs = probs.float()
    peak, peak_token = probs.max(dim=1)
    confidence, confident_row = probs.max(dim=2)
    return Reduced(mass=probs.sum(1).double(), peak=peak, peak_token=peak_token.int(), entropy=token_entropy(probs),
                   confidence=confidence, confident_row=confident_row.int())


def token_entropy(probs: torch.Tensor) -> torch.Tensor:
    """[..., K] -> [...] entropy in nats, with 0 log 0 = 0."""
    probs = probs.float()
    return -torch.where(probs > 0, probs * probs.clamp_min(1e-45).log(), torch.zeros_like(probs)).sum(-1)


def _reduced(x: Reduced | torch.Tensor) -> Reduced:
    return x if isinstance(x, Reduced) else reduce_probs(x)


def row_usage(x: Reduced | torch.Tensor) -> torch.Tensor:
    """[K] summed probability of each row over every token of every image (sums to N x T)."""
    return _reduced(x).mass.sum(0)


def top_rows(x: Reduced | torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most used rows (by summed probability), most used first: (rows, their usage)."""
    usage = row_usage(x)
    values, rows = usage.topk(min(k, usage.numel()))
    return rows, values


def row_peak(x: Reduced | torch.Tensor) -> torch.Tensor:
    """[K] the highest probability any token ever gave each row."""
    return _reduced(x).peak.max(0).values


def dead_rows(x: Reduced | torch.Tensor, threshold: float) -> torch.Tensor:
    """Rows no token ever gave more than ``threshold`` probability (ascending row ids)."""
    return (row_peak(x) <= threshold).nonzero().flatten()


def top1_rows(x: Reduced | torch.Tensor) -> torch.Tensor:
    """Rows that are some token's most probable row (ascending row ids)."""
    return _reduced(x).confident_row.flatten().long().unique()


@dataclass
class EntropyProfile:
    mean: float
    quantiles: dict[float, float]  # q -> entropy (nats)
    max_entropy: float  # log K: a uniform distribution
    sharp_below: float  # nats; tokens under it count as sharp ...
    soft_above: float  # ... and over it as soft
    sharp_share: float
    soft_share: float


def entropy_profile(x: Reduced | torch.Tensor, sharp_below: float = math.log(2), soft_above: float | None = None,
                    quantiles=(0.1, 0.5, 0.9)) -> EntropyProfile:
    """Per-token entropy summary. Defaults: sharp = under 2 effective rows (exp(H) < 2); soft = over
    sqrt(K) effective rows (H > log(K) / 2)."""
    reduced = _reduced(x)
    entropy = reduced.entropy.flatten().double()
    max_entropy = math.log(reduced.vocab_size)
    soft_above = max_entropy / 2 if soft_above is None else soft_above
    return EntropyProfile(
        mean=float(entropy.mean()),
        quantiles={q: float(entropy.quantile(q)) for q in quantiles},
        max_entropy=max_entropy, sharp_below=sharp_below, soft_above=soft_above,
        sharp_share=float((entropy < sharp_below).double().mean()),
        soft_share=float((entropy > soft_above).double().mean()),
    )


def most_confident_patches(x: Reduced | torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image, its k tokens with the highest max probability: (confidence, token, row), each [N, k]."""
    reduced = _reduced(x)
    confidence, token = reduced.confidence.topk(min(k, reduced.confidence.shape[1]), dim=1)
    return confidence, token, reduced.confident_row.gather(1, token)


@dataclass
class RowImages:
    row: int
    images: list[int]  # image indices, best first
    tokens: list[int]  # each image's token with the highest probability on the row
    peaks: list[float]  # that probability
    masses: list[float]  # the image's summed probability on the row (how much of it maps there)


def images_for_rows(x: Reduced | torch.Tensor, rows, k: int) -> list[RowImages]:
    """For each row, the k images that put the most probability mass on it, with their best patch."""
    reduced = _reduced(x)
    result = []
    for row in (int(r) for r in rows):
        masses, images = reduced.mass[:, row].topk(min(k, reduced.mass.shape[0]))
        result.append(RowImages(
            row=row, images=images.tolist(), tokens=reduced.peak_token[images, row].tolist(),
            peaks=reduced.peak[images, row].tolist(), masses=masses.tolist(),
        ))
    return result
