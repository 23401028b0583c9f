"""The analysis report: ``report.md`` with PNG figures and ``vet_stats.json`` (headline numbers)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from . import figures
from .images import Crop
from .stats import (
    Reduced,
    dead_rows,
    entropy_profile,
    images_for_rows,
    most_confident_patches,
    row_usage,
    top1_rows,
    top_rows,
)

REPORT_FILE = "report.md"
STATS_FILE = "vet_stats.json"


@dataclass
class ReportSettings:
    top_rows: int = 12  # most used rows listed and drawn
    images_per_row: int = 8  # images shown per top row
    patches_per_image: int = 3  # most confident patches listed per image
    images_listed: int = 16  # images in the per-image table
    dead_threshold: float = 0.01  # a row never given more probability than this is dead


def _share_holding(usage, fraction: float) -> int:
    """How many of the most used rows together hold ``fraction`` of all probability mass."""
    ordered = usage.sort(descending=True).values.cumsum(0)
    return int((ordered < fraction * ordered[-1]).sum()) + 1


def _grid_position(token: int, n_tokens: int) -> str:
    side = int(round(n_tokens**0.5))
    return f"({token // side},{token % side})"


def _label(crop: Crop) -> str:
    return f"`{crop.name}` {crop.caption}".replace("|", "/")


def write_report(reduced: Reduced, crops: list[Crop], out_dir: str | Path, source: dict,
                 settings: ReportSettings = ReportSettings()) -> Path:
    """Write the report into ``out_dir``; ``source`` names what was analysed (model, shards, ...)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_images, n_tokens = reduced.entropy.shape
    side = int(round(n_tokens**0.5))
    vocab = reduced.vocab_size
    usage = row_usage(reduced)
    rows, row_mass = top_rows(reduced, settings.top_rows)
    dead = dead_rows(reduced, settings.dead_threshold)
    used_top1 = top1_rows(reduced)
    profile = entropy_profile(reduced)
    confidence, tokens, conf_rows = most_confident_patches(reduced, settings.patches_per_image)
    by_row = images_for_rows(reduced, rows, settings.images_per_row)

    figs = {
        "usage": figures.usage_histogram(reduced, out / "usage_histogram.png"),
        "entropy": figures.entropy_histogram(reduced, profile, out / "entropy_histogram.png"),
        "rows": figures.row_patch_grid(by_row, crops, n_tokens, out / "top_rows_patches.png"),
        "confident": figures.confident_patches(crops, tokens.numpy(), confidence.numpy(), n_tokens,
                                               out / "confident_patches.png"),
    }
    stats = {
        **source, "images": n_images, "tokens_per_image": n_tokens, "visual_rows": vocab,
        "rows_top1": len(used_top1), "rows_holding_half_mass": _share_holding(usage, 0.5),
        "rows_holding_90pct_mass": _share_holding(usage, 0.9), "dead_threshold": settings.dead_threshold,
        "dead_rows": len(dead),
        "entropy": {**asdict(profile), "quantiles": {str(q): v for q, v in profile.quantiles.items()}},
        "top_rows": [{"row": int(r), "usage": float(m), "share": float(m / usage.sum())}
                     for r, m in zip(rows, row_mass)],
    }
    (out / STATS_FILE).write_text(json.dumps(stats, indent=1) + "\n")

    q = profile.quantiles
    lines = [
        "# VET analysis", "",
        *(f"- {key}: `{value}`" for key, value in source.items()),
        f"- {n_images} images (crops) x {n_tokens} visual tokens, K = {vocab} visual rows "
        "(indicator rows excluded: they never receive probability)", "",
        "## Row usage (summed probability over the data set)", "",
        f"- rows that are some token's most probable row: {len(used_top1)} of {vocab} ({len(used_top1) / vocab:.1%})",
        f"- the most used {stats['rows_holding_half_mass']} rows hold half of all probability mass, "
        f"{stats['rows_holding_90pct_mass']} rows hold 90%",
        f"- dead rows (never above p = {settings.dead_threshold:g}): {len(dead)} ({len(dead) / vocab:.1%})"
        + (f"; first ids: {', '.join(str(int(r)) for r in dead[:20])}" if len(dead) else ""), "",
        f"![usage histogram]({figs['usage'].name})", "",
        "| rank | row | summed probability | share of mass "
        "| images that map to it most (their summed probability on the row) |",
        "|---:|---:|---:|---:|---|",
    ]
    for rank, (info, mass) in enumerate(zip(by_row, row_mass), 1):
        who = "; ".join(f"{_label(crops[i])} ({m:.2f})" for i, m in zip(info.images[:4], info.masses))
        lines.append(f"| {rank} | {info.row} | {float(mass):.2f} | {float(mass / usage.sum()):.2%} | {who} |")
    lines += [
        "", "## Per-token entropy (sharp vs soft)", "",
        f"- mean {profile.mean:.3f} nats; 10% / 50% / 90% quantiles {q[0.1]:.3f} / {q[0.5]:.3f} / {q[0.9]:.3f}; "
        f"uniform over K: {profile.max_entropy:.3f}",
        f"- sharp (entropy < {profile.sharp_below:.3f}, under 2 effective rows): {profile.sharp_share:.1%} of tokens; "
        f"soft (entropy > {profile.soft_above:.3f}, over sqrt(K) effective rows): {profile.soft_share:.1%}", "",
        f"![entropy histogram]({figs['entropy'].name})", "",
        "## Most confident patches per image", "",
        f"Patches are (row, column) on the {side}x{side} visual-token grid; "
        "p is the token's highest probability, on VET row r.", "",
        f"![confident patches]({figs['confident'].name})", "",
        "| image | most confident patches: position, row r, p |", "|---|---|",
    ]
    for i in range(min(settings.images_listed, n_images)):
        patches = ", ".join(f"{_grid_position(int(t), n_tokens)} r{int(r)} p={float(c):.3f}"
                            for t, r, c in zip(tokens[i], conf_rows[i], confidence[i]))
        lines.append(f"| {_label(crops[i])} | {patches} |")
    lines += [
        "", "## Image patches of the most used rows", "",
        "Each line is one of the most used VET rows; each picture is the patch of one of the images that put the most "
        "mass on that row, where the row's probability peaks (p).", "",
        f"![patches per top row]({figs['rows'].name})", "",
    ]
    path = out / REPORT_FILE
    path.write_text("\n".join(lines) + "\n")
    return path
