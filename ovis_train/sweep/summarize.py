"""``python -m ovis_train.sweep.summarize SWEEP_DIR``: the sweep summary next to the members' run
directories: summary.md, summary.csv, loss_curves.png, heldout_vs_k.png. The Hydra callback
(``ovis_train.sweep.callback``) runs the same after every member of a multirun."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from ovis_train.run import SUMMARY_CSV, SUMMARY_MD

from . import plots
from .collect import read_sweep, swept_keys
from .table import common_overrides, markdown, member_label, write_csv

def publish(path: Path, write: Callable[[Path], object]) -> Path:
    """Write through a temporary file and rename: members finishing together (e.g. SLURM jobs, whose
    callbacks run on their nodes) never leave a half-written summary."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    write(tmp)
    os.replace(tmp, path)
    return path


def summarize(sweep_dir: str | Path) -> Path:
    """Write the summary files into ``sweep_dir``; returns the markdown file."""
    sweep_dir = Path(sweep_dir)
    members = read_sweep(sweep_dir)
    common = common_overrides(members)
    swept = swept_keys(sweep_dir)
    labels = {m.name: member_label(m, common, swept) for m in members}
    shared = [o for o in common if o.split("=", 1)[0] not in swept]
    ok = [m for m in members if m.ok]
    figures = [publish(sweep_dir / "loss_curves.png", lambda p: plots.loss_curves(ok, labels, p)),
               publish(sweep_dir / "heldout_vs_k.png", lambda p: plots.heldout_vs_k(ok, labels, p))]
    publish(sweep_dir / SUMMARY_CSV, lambda p: write_csv(members, p))
    text = markdown(members, str(sweep_dir), figures, labels, shared)
    return publish(sweep_dir / SUMMARY_MD, lambda p: p.write_text(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ovis_train.sweep.summarize", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", help="the multirun's directory (run_dir of the sweep)")
    args = parser.parse_args(argv)
    if not Path(args.sweep_dir).is_dir():
        parser.error(f"{args.sweep_dir} is not a directory")
    print(f"summary: {summarize(args.sweep_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
