"""Mean +- standard deviation over seeds: when a sweep varies a seed key (``trainer.seed``, ``data.seed``),
its finished members are grouped by their other swept overrides (e.g. ``arm=text_k1024``) and each
group's numbers are summarised as mean, sample standard deviation and count (``summary_seeds.csv`` and
a table in ``summary.md``). Unfinished or failed members are left out: the table always shows what
finished, and its ``n`` column says how many seeds that is."""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .collect import Member

SEED_KEYS = ("trainer.seed", "data.seed")
SEED_COLUMNS = [  # (column, markdown header, format of mean and std)
    ("eval_caption_accuracy", "held-out caption acc.", "{:.3f}"),
    ("eval_loss", "held-out loss", "{:.4f}"),
    ("train_loss", "train loss", "{:.4f}"),
    ("vet_entropy", "VET entropy", "{:.3f}"),
    ("vet_rows_top1", "VET rows top-1", "{:.3f}"),
    ("vet_rows_with_mass", "VET rows w/ mass", "{:.3f}"),
]


@dataclass
class SeedGroup:
    label: str  # the group's swept overrides other than the seeds ("" when only seeds vary)
    members: list[Member] = field(default_factory=list)

    def stats(self, column: str) -> tuple[float, float | None, int] | None:
        """(mean, sample std (None for one value), n) of the members that logged ``column``."""
        values = [m.values[column] for m in self.members if m.values.get(column) is not None]
        if not values:
            return None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def seed_groups(members: list[Member], swept: list[str]) -> list[SeedGroup] | None:
    """Finished members grouped by their non-seed swept overrides, in first-member order; None when the
    sweep varies no seed key."""
    if not any(key in SEED_KEYS for key in swept):
        return None
    keys = {key for key in swept if key not in SEED_KEYS}
    groups: dict[str, SeedGroup] = {}
    for member in members:
        if member.ok:
            label = " ".join(o for o in member.record.overrides if _key(o) in keys)
            groups.setdefault(label, SeedGroup(label)).members.append(member)
    return list(groups.values())


def _cell(stats, fmt: str) -> str:
    if stats is None:
        return "-"
    mean, std, _ = stats
    return fmt.format(mean) + (" ± " + fmt.format(std) if std is not None else "")


def markdown(groups: list[SeedGroup]) -> list[str]:
    lines = ["## Mean ± std over seeds", "",
             "| group | n | " + " | ".join(header for _, header, _ in SEED_COLUMNS) + " |",
             "|---|---:|" + "---:|" * len(SEED_COLUMNS)]
    for group in groups:
        cells = " | ".join(_cell(group.stats(c), fmt) for c, _, fmt in SEED_COLUMNS)
        lines.append(f"| `{group.label or 'all'}` | {len(group.members)} | {cells} |")
    lines += ["", "n: finished members (seeds) in the group; ± the sample standard deviation over them.", ""]
    return lines


def write_csv(groups: list[SeedGroup], path: Path) -> Path:
    names = ["group", "n"] + [f"{c}_{s}" for c, _, _ in SEED_COLUMNS for s in ("mean", "std")]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        for group in groups:
            row = {"group": group.label, "n": len(group.members)}
            for column, _, _ in SEED_COLUMNS:
                stats = group.stats(column)
                row[f"{column}_mean"] = "" if stats is None else stats[0]
                row[f"{column}_std"] = "" if stats is None or stats[1] is None else stats[1]
            writer.writerow(row)
    return path
