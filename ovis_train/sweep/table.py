"""The sweep table: ``summary.csv`` (every column, machine-readable) and ``summary.md`` (for people)."""

from __future__ import annotations

import csv
from pathlib import Path

from .collect import Member

NUMBER_COLUMNS = [  # (column, markdown header, format)
    ("steps", "steps", "{:d}"),
    ("train_loss", "train loss", "{:.4f}"),
    ("eval_loss", "held-out loss", "{:.4f}"),
    ("eval_caption_accuracy", "held-out caption acc.", "{:.3f}"),
    ("tokens_per_s", "tokens/s", "{:,.0f}"),
    ("peak_memory_gb", "peak mem. GB", "{:.2f}"),
    ("vet_entropy", "VET entropy", "{:.3f}"),
    ("vet_rows_top1", "VET rows top-1", "{:.1%}"),
    ("vet_rows_with_mass", "VET rows w/ mass", "{:.1%}"),
]
CSV_COLUMNS = ["member", "status", "overrides", "visual_vocab_size", "connector", "connector_params",
               *(c for c, _, _ in NUMBER_COLUMNS), "error"]


def common_overrides(members: list[Member]) -> list[str]:
    """Overrides every member shares (the sweep's fixed settings)."""
    if not members:
        return []
    shared = set(members[0].record.overrides).intersection(*(m.record.overrides for m in members[1:]))
    return [o for o in members[0].record.overrides if o in shared]


def member_label(member: Member, common: list[str], swept: list[str] = ()) -> str:
    """What tells this member apart: its overrides of the swept keys, else those it does not share."""
    keys = set(swept)
    label = [o for o in member.record.overrides if o.split("=", 1)[0].lstrip("+~") in keys]
    return " ".join(label or [o for o in member.record.overrides if o not in common]) or member.name


def csv_row(member: Member) -> dict:
    return {"member": member.name, "status": member.record.status, "overrides": " ".join(member.record.overrides),
            "visual_vocab_size": member.visual_vocab_size, "connector": member.connector,
            "connector_params": member.connector_params, **member.values, "error": member.record.error}


def write_csv(members: list[Member], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for member in members:
            writer.writerow({k: ("" if v is None else v) for k, v in csv_row(member).items()})
    return path


def _cell(value, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "{:d}":
        value = int(value)
    return fmt.format(value)


def markdown(members: list[Member], title: str, figures: list[Path], labels: dict[str, str], shared: list[str],
             problem: str | None = None, extra: list[str] = ()) -> str:
    """``labels``: member name -> what tells it apart; ``shared``: the overrides all members have;
    ``problem``: a line saying the summary is incomplete; ``extra``: lines after the member table."""
    ok = [m for m in members if m.ok]
    failed = [m for m in members if not m.ok and m.record.status == "failed"]
    unfinished = [m for m in members if not m.ok and m.record.status != "failed"]
    lines = [f"# Sweep summary: {title}", ""]
    if problem:
        lines += [f"**Incomplete: {problem}.**", ""]
    lines.append(f"{len(members)} members: {len(ok)} completed, {len(failed)} failed"
                 + (f", {len(unfinished)} unfinished." if unfinished else "."))
    if shared:
        lines.append("Shared overrides: " + " ".join(f"`{o}`" for o in shared))
    lines += ["", "| member | K | connector | connector params | "
              + " | ".join(header for _, header, _ in NUMBER_COLUMNS) + " |",
              "|---|---:|---|---:|" + "---:|" * len(NUMBER_COLUMNS)]
    for m in ok:
        numbers = " | ".join(_cell(m.values.get(c), fmt) for c, _, fmt in NUMBER_COLUMNS)
        lines.append(f"| `{labels[m.name]}` | {_cell(m.visual_vocab_size, '{:d}')} | "
                     f"{m.connector or '-'} | {_cell(m.connector_params, '{:,d}')} | {numbers} |")
    if extra:
        lines += ["", *extra]
    if failed or unfinished:
        lines += ["", "## Failed or unfinished members", ""]
        lines += [f"- `{labels[m.name]}` ({m.name}): {m.record.status}: {m.record.error}" for m in failed + unfinished]
    lines += ["", "Final values of each member's metrics.jsonl (tokens/s: median over steps). VET rows top-1: share "
              "of the visual vocabulary that was some token's most probable row; w/ mass: rows that got at least 1% "
              "of a uniform share (last logging window). Connector params: visual head + VET (mlp: projector + "
              "indicator rows).", ""]
    lines += [f"![{p.stem}]({p.name})" for p in figures]
    return "\n".join(lines) + "\n"
