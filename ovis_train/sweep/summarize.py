"""``python -m ovis_train.sweep.summarize SWEEP_DIR``: the sweep summary next to the members' run
directories: summary.md, summary.csv, loss_curves.png, heldout_vs_k.png (and summary_seeds.csv, mean +-
std over seeds, when the sweep varies a seed: seeds.py). The Hydra callback
(``ovis_train.sweep.callback``) runs the same after every member of a multirun.

A summary with fewer rows than the recorded sweep has members says so (first line of summary.md) and
makes the sweep, and this command, exit non-zero: a sweep never silently collects less than it ran."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ovis_train.run import SUMMARY_CSV, SUMMARY_MD, SUMMARY_SEEDS_CSV

from . import plots, seeds
from .collect import Member, expected_members, read_sweep, swept_keys
from .table import common_overrides, markdown, member_label, write_csv

def publish(path: Path, write: Callable[[Path], object]) -> Path:
    """Write through a temporary file and rename: members finishing together (e.g. SLURM jobs, whose
    callbacks run on their nodes) never leave a half-written summary."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    write(tmp)
    os.replace(tmp, path)
    return path


@dataclass
class Summary:
    path: Path  # summary.md
    members: list[Member]
    expected: int | None  # members the recorded sweep has (None: unknown)

    @property
    def problem(self) -> str | None:
        """One line when the summary holds fewer members than the sweep has (or none at all)."""
        found = len(self.members)
        if self.expected is not None and found < self.expected:
            return (f"the summary found {found} of the sweep's {self.expected} members in {self.path.parent}: "
                    "a member's run directory is missing (see the sweep's output)")
        if found == 0:
            return f"the summary found no member run directories in {self.path.parent}"
        return None


def summarize(sweep_dir: str | Path) -> Summary:
    """Write the summary files into ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    members = read_sweep(sweep_dir)
    expected = expected_members(sweep_dir)
    common = common_overrides(members)
    swept = swept_keys(sweep_dir)
    labels = {m.name: member_label(m, common, swept) for m in members}
    shared = [o for o in common if o.split("=", 1)[0] not in swept]
    ok = [m for m in members if m.ok]
    groups = seeds.seed_groups(members, swept)  # None unless the sweep varies a seed
    figures = [publish(sweep_dir / "loss_curves.png", lambda p: plots.loss_curves(ok, labels, p)),
               publish(sweep_dir / "heldout_vs_k.png", lambda p: plots.heldout_vs_k(ok, labels, p, groups))]
    publish(sweep_dir / SUMMARY_CSV, lambda p: write_csv(members, p))
    if groups is not None:
        publish(sweep_dir / SUMMARY_SEEDS_CSV, lambda p: seeds.write_csv(groups, p))
    summary = Summary(sweep_dir / SUMMARY_MD, members, expected)
    text = markdown(members, str(sweep_dir), figures, labels, shared, summary.problem,
                    seeds.markdown(groups) if groups is not None else [])
    publish(summary.path, lambda p: p.write_text(text))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ovis_train.sweep.summarize", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", help="the multirun's directory (run_dir of the sweep)")
    args = parser.parse_args(argv)
    if not Path(args.sweep_dir).is_dir():
        parser.error(f"{args.sweep_dir} is not a directory")
    summary = summarize(args.sweep_dir)
    print(f"summary: {summary.path}")
    if summary.problem:
        print(f"ovis-train: error: {summary.problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
