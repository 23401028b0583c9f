"""Checkpoint folders that are either complete or invisible.

Layout: ``<run_dir>/checkpoints/step_00000010/`` holding whatever the writer puts there plus a
``COMPLETE`` marker. Every rank writes into ``.tmp-step_00000010`` first; after a barrier rank 0
adds the marker and renames the folder, so a crash mid-save leaves only a ``.tmp-*`` folder that
``resume=auto`` never looks at (and the next save removes). ``keep_last`` prunes older complete ones.
The writer is storage-agnostic; ``ovis_train.train.state`` decides what goes in a checkpoint, and
``ovis_train.run`` owns the names (folder, marker, temp prefix) and the readers.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from ovis_train.run import (
    COMPLETE_MARKER,
    TEMP_PREFIX,
    RunDir,
    checkpoint_name,
    complete_checkpoints,
    is_complete,
    temp_path,
)
from ovis_train.train.errors import ConfigError


def resolve_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """``None``: start fresh; ``"auto"``: latest complete checkpoint or fresh; else that folder."""
    if resume is None:
        return None
    if resume == "auto":
        return RunDir(run_dir).latest_checkpoint()
    path = Path(resume)
    if not is_complete(path):
        raise ConfigError(
            f"resume={resume}: not a complete checkpoint folder (no {COMPLETE_MARKER} marker); "
            "pass a checkpoints/step_* folder, resume=auto, or resume=null"
        )
    return path


def save_atomic(
    root: str | Path,
    step: int,
    write: Callable[[Path], None],
    *,
    is_main: bool = True,
    barrier: Callable[[], None] = lambda: None,
    keep_last: int | None = None,
) -> Path:
    """Run ``write(folder)`` on every rank, then publish the folder; returns the final path.

    All ranks must call this together (it has barriers); ``write`` writes this rank's files.
    """
    root = Path(root)
    final = root / checkpoint_name(step)
    tmp = temp_path(final)
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    try:
        write(tmp)
    except BaseException:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier()
    if is_main:
        _write_marker(tmp, step)
        _replace_dir(tmp, final)
        prune(root, keep_last)
    barrier()
    return final


def prune(root: str | Path, keep_last: int | None) -> None:
    """Keep the newest ``keep_last`` complete checkpoints (None or <= 0: keep all); drop stale temps."""
    root = Path(root)
    for stale in root.glob(TEMP_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    if keep_last and keep_last > 0:
        for old in complete_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old)


def _write_marker(folder: Path, step: int) -> None:
    with open(folder / COMPLETE_MARKER, "w") as f:
        json.dump({"step": step, "time": time.time()}, f)
        f.flush()
        os.fsync(f.fileno())


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; an existing ``dst`` (same step saved again) is moved aside first."""
    if dst.exists():
        old = temp_path(dst.with_name(f"old-{dst.name}"))
        shutil.rmtree(old, ignore_errors=True)
        os.rename(dst, old)
        os.rename(src, dst)
        shutil.rmtree(old)
    else:
        os.rename(src, dst)
