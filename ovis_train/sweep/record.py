"""A sweep member's own record, ``<member run dir>/sweep_member.json``: its overrides, its job number,
and how it ended (completed, or failed with the error). Written as the member starts (status started)
and again as it ends, so a member that failed or was stopped before writing anything else is still
reported, with every override it was given."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ovis_train.run import RunDir


@dataclass
class MemberRecord:
    overrides: list[str] = field(default_factory=list)
    job_num: int | None = None
    # started (written as the member starts: a member stopped midway is still found) | completed | failed |
    # unknown (no record: e.g. a summary made by hand)
    status: str = "unknown"
    error: str | None = None  # "ExceptionType: message" on one line


def one_line(error: BaseException) -> str:
    """A configuration error as the trainer's CLI prints it; anything else as "Type: message"."""
    from ovis_train.train.errors import one_line_error

    return one_line_error(error) or " ".join(f"{type(error).__name__}: {error}".split())


def write_record(run_dir: str | Path, record: MemberRecord) -> None:
    path = RunDir(run_dir).sweep_record
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(record), indent=1) + "\n")


def read_record(run_dir: str | Path) -> MemberRecord | None:
    path = RunDir(run_dir).sweep_record
    return MemberRecord(**json.loads(path.read_text())) if path.is_file() else None
