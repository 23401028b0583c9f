"""The run folder: the one place that knows what a phase writes where, and how tools read it back.

A run directory (``run_dir=...``) holds::

    config.yaml                   the resolved config of the run (rewritten on every start)
    metrics.jsonl                 one JSON object per logged step: {"step": N, "loss": ..., ...}
    run.json                      the run's identity (what it was started as; see ``identity_file``)
    checkpoints/step_00000010/    one folder per save, visible only once complete (``COMPLETE`` marker)
        model.safetensors ...     the trainer's state (``ovis_train.train.state`` decides the contents)
    export/                       the finished phase as a ``from_pretrained`` folder (``config.json`` inside)
    .tmp-<name>                   a folder or file being written; renamed into place when whole
    launch.log                    a sweep member's console output (``ovis_train.sweep.launch``)
    sweep_member.json             a sweep member's record (status, overrides, error)

and a sweep folder holds its members' run directories plus ``sweep.yaml`` (the overrides a sweep
launcher was given), ``multirun.yaml`` (Hydra's, for a multirun) and ``summary.md`` / ``summary.csv``
(``summary_seeds.csv`` too when it varies a seed).

Nothing else in the package spells these names: writers ask :class:`RunDir` for a path, readers use
its readers. This module imports nothing from ovis_train, so every layer (train, sweep, analyze,
demo) may use it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
IDENTITY_FILE = "run.json"
CHECKPOINTS_DIR = "checkpoints"
EXPORT_DIR = "export"
COMPLETE_MARKER = "COMPLETE"
TEMP_PREFIX = ".tmp-"
LAUNCH_LOG = "launch.log"
SWEEP_RECORD_FILE = "sweep_member.json"
SWEEP_FILE = "sweep.yaml"
MULTIRUN_FILE = "multirun.yaml"
SUMMARY_MD, SUMMARY_CSV = "summary.md", "summary.csv"
SUMMARY_SEEDS_CSV = "summary_seeds.csv"  # mean +- std over seeds, when a sweep varies a seed
MODEL_WEIGHTS_FILE = "model.safetensors"  # Accelerate's name for the model inside a checkpoint
EXPORT_CONFIG_FILE = "config.json"  # what makes a folder loadable with from_pretrained

_CHECKPOINT_NAME = re.compile(r"step_(\d+)")


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def step_of(path: str | Path) -> int:
    match = _CHECKPOINT_NAME.fullmatch(Path(path).name)
    if not match:
        raise ValueError(f"not a checkpoint folder name: {path}")
    return int(match.group(1))


def is_complete(path: str | Path) -> bool:
    """A checkpoint folder that was published whole (it carries the marker)."""
    return (Path(path) / COMPLETE_MARKER).is_file()


def temp_path(final: str | Path) -> Path:
    """Where ``final`` is written before it is renamed into place (same folder, so the rename is atomic)."""
    final = Path(final)
    return final.with_name(TEMP_PREFIX + final.name)


def is_temp(path: str | Path) -> bool:
    return Path(path).name.startswith(TEMP_PREFIX)


def checkpoint_weights(checkpoint: str | Path) -> Path:
    """The model weights file inside a (non-DeepSpeed) checkpoint folder; it may not exist."""
    return Path(checkpoint) / MODEL_WEIGHTS_FILE


def is_export(path: str | Path) -> bool:
    """A folder that ``from_pretrained`` (``ovis_train.model.load_model``) can load."""
    return (Path(path) / EXPORT_CONFIG_FILE).is_file()


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Complete ``step_*`` folders directly under ``root``, oldest first ([] when there is no root)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _CHECKPOINT_NAME.fullmatch(p.name) and is_complete(p)]
    return sorted(found, key=step_of)


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class RunDir:
    """Paths and readers of one run directory (see the module docstring for the layout)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # where things go
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def identity_file(self) -> Path:
        return self.path / IDENTITY_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def export(self) -> Path:
        return self.path / EXPORT_DIR

    @property
    def launch_log(self) -> Path:
        return self.path / LAUNCH_LOG

    @property
    def sweep_record(self) -> Path:
        return self.path / SWEEP_RECORD_FILE

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / checkpoint_name(step)

    def temp_path(self, name: str) -> Path:
        """A temporary place in the run directory for ``name`` (a file or folder written, then renamed)."""
        return temp_path(self.path / name)

    # what is there
    def complete_checkpoints(self) -> list[Path]:
        return complete_checkpoints(self.checkpoints)

    def latest_checkpoint(self) -> Path | None:
        found = self.complete_checkpoints()
        return found[-1] if found else None

    def finished_export(self) -> Path | None:
        """The export folder when the phase wrote one that loads, else None."""
        return self.export if is_export(self.export) else None

    def read_metrics(self) -> list[dict]:
        """The rows of ``metrics.jsonl`` in file order ([] when nothing was logged)."""
        return read_jsonl(self.metrics_file)

    def read_config(self) -> dict | None:
        """The run's resolved config as a plain dict, or None when the run never wrote one."""
        import yaml

        return (yaml.safe_load(self.config_file.read_text()) or {}) if self.config_file.is_file() else None


def is_run_dir(path: str | Path) -> bool:
    """Something a phase or a sweep launcher left there (a record, metrics or a config)."""
    run = RunDir(path)
    return run.path.is_dir() and any(p.exists() for p in (run.sweep_record, run.metrics_file, run.config_file))
