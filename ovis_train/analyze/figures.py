"""PNG figures of the analysis. Built on ``matplotlib.figure.Figure`` (rendered by Agg), never pyplot,
so nothing needs a display and no global backend state changes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .images import Crop, patch_box
from .stats import EntropyProfile, Reduced, RowImages, row_usage


def usage_histogram(reduced: Reduced, path: Path) -> Path:
    """Left: how many rows get how much use (in units of a uniform share); right: usage by rank."""
    usage = row_usage(reduced).numpy()
    share = usage / max(usage.sum(), 1e-30) * len(usage)  # 1.0 = what every row gets under uniform use
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    floor = 1e-4
    left.hist(np.log10(np.maximum(share, floor)), bins=50, color="tab:blue")
    left.set_xlabel(f"log10(row usage / uniform share)  (rows under {floor:g} at the left edge)")
    left.set_ylabel("VET rows")
    left.set_title("VET row usage (summed probability)")
    right.plot(np.arange(1, len(usage) + 1), np.sort(share)[::-1], color="tab:blue")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("row rank")
    right.set_ylabel("usage / uniform share")
    right.set_title("usage by rank")
    fig.savefig(path, dpi=100)
    return path


def entropy_histogram(reduced: Reduced, profile: EntropyProfile, path: Path) -> Path:
    entropy = reduced.entropy.flatten().numpy()
    fig = Figure(figsize=(6, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.hist(entropy, bins=50, range=(0, profile.max_entropy), color="tab:orange")
    ax.axvline(profile.sharp_below, color="k", linestyle="--", linewidth=1, label="sharp | soft thresholds")
    ax.axvline(profile.soft_above, color="k", linestyle="--", linewidth=1)
    ax.set_xlabel(f"per-token entropy (nats; uniform over K = {reduced.vocab_size}: {profile.max_entropy:.2f})")
    ax.set_ylabel("visual tokens")
    ax.set_title(f"sharp {profile.sharp_share:.0%}, soft {profile.soft_share:.0%}")
    ax.legend(loc="upper left", fontsize=8)
    fig.savefig(path, dpi=100)
    return path


def row_patch_grid(row_images: list[RowImages], crops: list[Crop], n_tokens: int, path: Path) -> Path:
    """One line per VET row: the patch of each top image that gives the row its highest probability."""
    n_cols = max((len(r.images) for r in row_images), default=1)
    fig = Figure(figsize=(1.3 * n_cols + 0.8, 1.45 * max(len(row_images), 1)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(max(len(row_images), 1), n_cols, squeeze=False))
    for ax in axes.flat:
        ax.set_axis_off()
    for line, info in zip(axes, row_images):
        line[0].text(-0.15, 0.5, f"row {info.row}", transform=line[0].transAxes, ha="right", va="center", fontsize=8)
        for ax, image, token, peak in zip(line, info.images, info.tokens, info.peaks):
            picture = crops[image].pixels
            left, top, right, bottom = patch_box(token, n_tokens, picture.shape[0])
            ax.imshow(picture[top:bottom, left:right], interpolation="nearest")
            ax.set_title(f"p={peak:.2f}", fontsize=7)
    fig.savefig(path, dpi=100)
    return path


def confident_patches(crops: list[Crop], tokens: np.ndarray, confidence: np.ndarray, n_tokens: int,
                      path: Path, max_images: int = 8) -> Path:
    """The first images with their most confident patches outlined (brightest = most confident)."""
    shown = min(max_images, len(crops))
    n_cols = min(shown, 4)
    n_rows = math.ceil(shown / n_cols)
    fig = Figure(figsize=(2.4 * n_cols, 2.6 * n_rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(n_rows, n_cols, squeeze=False).flatten())
    for ax in axes:
        ax.set_axis_off()
    for ax, crop, crop_tokens, crop_confidence in zip(axes, crops[:shown], tokens, confidence):
        ax.imshow(crop.pixels, interpolation="nearest")
        for token, value in zip(crop_tokens, crop_confidence):
            left, top, right, bottom = patch_box(token, n_tokens, crop.pixels.shape[0])
            ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False,
                                   edgecolor="red", linewidth=1.5, alpha=float(0.3 + 0.7 * value)))
        ax.set_title(f"{crop.caption[:28]}\nmax p={crop_confidence[0]:.2f}", fontsize=7)
    fig.savefig(path, dpi=100)
    return path
