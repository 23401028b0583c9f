"""A sweep whose members are separate launches (``accelerate launch`` per member), one after another:

    python -m ovis_train.sweep.launch --launcher "accelerate launch --multi_gpu --num_processes 8 -m ovis_train" \
        phase=p1 model=demo model.visual_vocab_size=1024,4096 run_dir=runs/k-sweep

(``bash launch.sh --sweep ...`` calls this with its accelerate arguments.) A Hydra multirun inside one
distributed launch would run every member on every rank (docs/design.md, "Distributed runs"); here the
sweep stays outside.
Members are expanded exactly as ``python -m ovis_train -m`` expands them (Hydra's override grammar and
basic sweeper), get the same run directory names (``naming.member_name``: the swept keys only) and the
same held-out defaults. Each member's output goes to the console and ``<member>/launch.log``; its start
and end are recorded (``sweep_member.json``) and the summary rewritten after each member. Exit status 1
when any member failed or the summary found fewer members than the sweep has. ``--resume`` reruns a
stopped sweep: finished members are skipped, unfinished ones continue from their last checkpoint.
"""

from __future__ import annotations

import argparse
import collections
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from ovis_train.run import SUMMARY_MD, SWEEP_FILE, RunDir

from .multirun import heldout_defaults
from .naming import expand_members, member_name, swept_keys_of
from .record import MemberRecord, one_line, read_record, write_record
from .summarize import summarize

DEFAULT_LAUNCHER = f"{shlex.quote(sys.executable)} -m ovis_train"
ERROR_PREFIX = "ovis-train: error: "  # the trainer's one-line configuration errors


@dataclass
class PrimaryConfig:
    """Hydra's --config-dir / --config-name, handed to every member (e.g. a recipe's config)."""

    dir: str | None = None
    name: str | None = None

    def flags(self) -> list[str]:
        return [*(["--config-dir", self.dir] if self.dir else []), *(["--config-name", self.name] if self.name else [])]


def member_defaults(overrides: list[str], primary: PrimaryConfig) -> list[str]:
    """Checks the member's config as the trainer would (a config error is the member's, found before any
    launch) and returns the sweep defaults it lacks (held-out evaluation at the end, as ``-m`` members
    get), as overrides."""
    from ovis_train.train.config import compose

    config = compose(overrides, primary.dir, primary.name)
    return [f"{key}={value}" for key, value in heldout_defaults(config, overrides).items()]


def quoted(path: Path) -> str:
    """A path as a Hydra override value: quoted, as member names hold "=" and ","."""
    return "'" + str(path).replace("'", "\\'") + "'"


def run_member(command: list[str], log_file: Path) -> tuple[int, list[str]]:
    """Run one launch, echoing its output and keeping it in ``log_file``; (exit status, last lines)."""
    tail = collections.deque(maxlen=50)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as log, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                      text=True, bufsize=1) as process:
        for line in process.stdout:
            sys.stdout.write(line)
            log.write(line)
            tail.append(line.rstrip("\n"))
    return process.returncode, list(tail)


def error_line(status: int, tail: list[str]) -> str:
    errors = [line[len(ERROR_PREFIX):] for line in tail if line.startswith(ERROR_PREFIX)]
    if errors:
        return errors[-1]
    last = next((line.strip() for line in reversed(tail) if line.strip()), "")
    return f"exit status {status}: {last}"


def sweep(launcher: list[str], overrides: list[str], primary: PrimaryConfig = PrimaryConfig(),
          resume: bool = False) -> int:
    """Run every member; ``resume``: skip members recorded as completed, continue the others from their
    last checkpoint (``resume=auto``), e.g. after the machine went down midway."""
    run_dirs = [o.split("=", 1)[1] for o in overrides if o.startswith("run_dir=")]
    if len(run_dirs) != 1 or "," in run_dirs[0]:
        raise SystemExit("ovis_train.sweep.launch: give the sweep folder as one run_dir=<folder>")
    sweep_dir = Path(run_dirs[0])
    main_node = os.environ.get("NODE_RANK", os.environ.get("SLURM_NODEID", "0")) == "0"
    sweep_overrides = [o for o in overrides if not o.startswith("run_dir=")]
    if main_node:  # what the summary labels and counts members by (a multirun has Hydra's multirun.yaml)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SWEEP_FILE).write_text(yaml.safe_dump({"overrides": sweep_overrides}))
    swept = swept_keys_of(sweep_overrides)
    failed = 0
    for num, member in enumerate(expand_members(sweep_overrides)):
        run_dir = sweep_dir / member_name(member, swept, num)
        previous = read_record(run_dir)
        if resume and previous is not None and previous.status == "completed":
            print(f"[sweep] member {num}: {' '.join(member)} -> {run_dir} (completed before: skipped)", flush=True)
            continue
        record = MemberRecord(overrides=member, job_num=num)
        try:
            extra = member_defaults(member, primary)
        except Exception as e:  # noqa: BLE001 - the member's config does not compose: record it, go on
            record.status, record.error = "failed", one_line(e)
        else:
            print(f"[sweep] member {num}: {' '.join(member)} -> {run_dir}", flush=True)
            if main_node:
                write_record(run_dir, MemberRecord(overrides=member, job_num=num, status="started"))
            again = ["resume=auto"] if resume and not any(o.startswith("resume=") for o in member) else []
            command = [*launcher, *primary.flags(), *member, *extra, *again, f"run_dir={quoted(run_dir)}"]
            status, tail = run_member(command, RunDir(run_dir).launch_log)
            record.status = "completed" if status == 0 else "failed"
            record.error = None if status == 0 else error_line(status, tail)
        failed += record.status == "failed"
        if main_node:
            write_record(run_dir, record)
            summarize(sweep_dir)
    if not main_node:
        return 1 if failed else 0
    summary = summarize(sweep_dir)
    print(f"sweep summary: {sweep_dir / SUMMARY_MD}" + (f" ({failed} failed)" if failed else ""), flush=True)
    if summary.problem:
        print(f"{ERROR_PREFIX}{summary.problem}", file=sys.stderr, flush=True)
    return 1 if failed or summary.problem else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ovis_train.sweep.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--launcher", default=DEFAULT_LAUNCHER,
                        help="command that runs one member, given its overrides (default: %(default)s)")
    parser.add_argument("--config-dir", help="Hydra's --config-dir for every member (e.g. a recipe's conf folder)")
    parser.add_argument("--config-name", help="Hydra's --config-name for every member")
    parser.add_argument("--resume", action="store_true",
                        help="skip members completed before; continue the others from their last checkpoint")
    parser.add_argument("overrides", nargs="+", help="Hydra overrides, sweeps as k=a,b; must include run_dir=")
    args = parser.parse_intermixed_args(argv)  # options may come between overrides (launch.sh passes them on)
    return sweep(shlex.split(args.launcher), args.overrides, PrimaryConfig(args.config_dir, args.config_name),
                 resume=args.resume)


if __name__ == "__main__":
    sys.exit(main())
