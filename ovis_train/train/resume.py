"""One run per run directory, and what a resume may change. Decided before anything is written.

A run directory records its run's identity in ``run.json``: an id (also the wandb run id, so a resumed
run continues the same wandb run), when it started, and where it was resumed from. Every checkpoint
carries the id too (``train_state.json``) and its resolved config (``config.yaml``).

How a phase may start (``plan_start``):
- **fresh** (no ``resume``, or ``resume=auto`` finding no checkpoint): the run directory must not hold
  another run's checkpoints or export. Otherwise the start is refused with one line naming the choices:
  ``resume=auto``, a new ``run_dir``, or ``existing_run=move_aside`` (the old run directory is renamed to
  ``<run_dir>.old-<time>`` and the new run starts in an empty one).
- **resume** (``resume=auto`` or a ``checkpoints/step_*`` folder): the checkpoint must be this run
  directory's run (same id) and its newest checkpoint (resuming an older one would interleave two
  continuations under one ``checkpoints/``; resume it into a new ``run_dir`` instead). The settings
  that define what is trained must be unchanged: ``model.*`` (except attention kernel and visual
  chunking, which do not change the result), ``phase.*``, ``init_from`` and the optimizer's
  ``trainer.lr / weight_decay / betas / eps`` (the optimizer state restores the saved values, so a
  change would be silently ignored); a difference is refused with one line listing the keys.
  The lr schedule (``trainer.max_steps``, ``warmup_ratio``, ``min_lr_ratio``) may change only with
  ``trainer.extend_schedule=true``: the schedule is then rebuilt for the new values and the step
  continues on it, so the lr moves at the resumed step to the new schedule's value (e.g. 100 -> 200
  steps resumed at step 100: from the old floor back up to the new cosine's value at step 100); the
  export is rewritten when the new ``max_steps`` is reached.
  Data settings follow the data stream's own rules (``ovis_train.data.stream``).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ovis_train.run import CONFIG_FILE, IDENTITY_FILE, RunDir, complete_checkpoints, step_of, temp_path
from ovis_train.train.checkpoint import resolve_resume
from ovis_train.train.config import Config
from ovis_train.train.errors import ConfigError
from ovis_train.train.state import TRAIN_STATE_FILE
# model keys that change speed or memory, not what is trained
_NOT_DEFINING = {"model.attn_implementation", "model.visual_chunk_size"}
_OPTIMIZER = ("trainer.lr", "trainer.weight_decay", "trainer.betas", "trainer.eps")
_SCHEDULE = ("trainer.max_steps", "trainer.warmup_ratio", "trainer.min_lr_ratio")


@dataclass
class Start:
    """How this phase starts: from ``resume_from`` (None: fresh) as run ``identity``."""

    resume_from: Path | None
    identity: dict
    move_aside: bool = False  # rename the old run directory before writing (existing_run=move_aside)
    notes: list[str] = field(default_factory=list)  # lines for the console


def plan_start(cfg: Config, run_dir: str | Path) -> Start:
    """Read-only: every rank may call it; ``begin`` then writes (main process)."""
    run_dir = Path(run_dir)
    resume_from = resolve_resume(cfg.resume, run_dir)
    saved = read_identity(run_dir)
    if resume_from is None:
        held = _held(run_dir)
        if held and cfg.existing_run != "move_aside":
            raise ConfigError(
                f"run_dir={run_dir} already holds a run ({held}); continue it with resume=auto, start in a "
                "new run_dir, or pass existing_run=move_aside to rename the old one and start afresh"
            )
        return Start(None, new_identity(), move_aside=bool(held))

    saved_config = resume_from / CONFIG_FILE
    checkpoint_config = yaml.safe_load(saved_config.read_text()) if saved_config.is_file() else None
    same_dir = resume_from.resolve().parent == RunDir(run_dir).checkpoints.resolve()
    owner = _checkpoint_run_id(resume_from)
    if same_dir:
        newer = [p.name for p in complete_checkpoints(resume_from.parent) if step_of(p) > step_of(resume_from)]
        if newer:
            raise ConfigError(
                f"resume={cfg.resume}: run_dir holds newer checkpoints ({', '.join(newer)}); continuing an older "
                "one here would mix two continuations; resume it into a new run_dir "
                f"(run_dir=<new folder> resume={resume_from}) or move the newer ones out of checkpoints/"
            )
        if saved and owner and owner != saved["id"]:
            raise ConfigError(f"{resume_from} belongs to run {owner}, but {run_dir} records run {saved['id']} "
                              f"({IDENTITY_FILE}); resume it into a new run_dir")
    elif held := _held(run_dir):
        raise ConfigError(
            f"resume={cfg.resume} into run_dir={run_dir}, which already holds another run ({held}); "
            "resume into a new run_dir"
        )
    notes = _compare(cfg, checkpoint_config, resume_from) if checkpoint_config else []
    if same_dir and saved:
        identity = dict(saved)
    elif same_dir and owner:  # a run directory from before run.json
        identity = {**new_identity(), "id": owner}
    else:
        identity = {**new_identity(), "branched_from": str(resume_from)}
    return Start(resume_from, identity, notes=notes)


def begin(start: Start, run_dir: str | Path) -> None:
    """Main process, once the start is known to be sound: move an old run aside, record the identity."""
    run_dir = Path(run_dir)
    if start.move_aside:
        aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        os.rename(run_dir, aside)
        start.notes.append(f"the run that was in {run_dir} is now in {aside} (existing_run=move_aside)")
    run_dir.mkdir(parents=True, exist_ok=True)
    identity = dict(start.identity)
    if start.resume_from is not None:
        identity["resumed"] = identity.get("resumed", []) + [{"from": str(start.resume_from), "time": _now()}]
    path = RunDir(run_dir).identity_file
    tmp = temp_path(path)
    tmp.write_text(json.dumps(identity, indent=1) + "\n")
    os.replace(tmp, path)


def new_identity() -> dict:
    return {"id": secrets.token_hex(6), "started": _now()}


def read_identity(run_dir: str | Path) -> dict | None:
    path = RunDir(run_dir).identity_file
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} cannot be read ({e}); restore it, or remove it to adopt the checkpoints' run") from e


def _held(run_dir: Path) -> str:
    """What of a run is in ``run_dir`` (checkpoints, export), as words; '' when nothing."""
    run = RunDir(run_dir)
    found = run.complete_checkpoints()
    held = [f"checkpoints up to {found[-1].name}"] if found else []
    if run.export.exists():
        held.append(f"{run.export.name}/")
    return ", ".join(held)


def _checkpoint_run_id(folder: Path) -> str | None:
    try:
        return json.loads((folder / TRAIN_STATE_FILE).read_text()).get("run_id")
    except (OSError, ValueError):
        return None  # load_checkpoint names a damaged file


def _compare(cfg: Config, saved: dict, folder: Path) -> list[str]:
    """Refuse changes to what defines the run; the schedule only with extend_schedule."""
    now, before = _flat(config_dict(cfg)), _flat(saved)
    keys = sorted(k for k in set(now) | set(before) if k.startswith(("model.", "phase.")) and k not in _NOT_DEFINING)
    keys += ["init_from", *_OPTIMIZER]
    changed = [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in keys if now.get(k) != before.get(k)]
    if changed:
        raise ConfigError(
            f"resume: {folder} was trained with different settings ({'; '.join(changed)}); resume with the "
            "checkpoint's values, or start a new phase from an export (init_from=<run_dir>/export)"
        )
    schedule = [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in _SCHEDULE if now.get(k) != before.get(k)]
    if schedule and not cfg.trainer.extend_schedule:
        raise ConfigError(
            f"resume: the lr schedule differs from {folder.name}'s ({'; '.join(schedule)}); pass "
            "trainer.extend_schedule=true to rebuild the schedule for the new values (the lr moves to the new "
            "schedule's value at the resumed step), or keep the checkpoint's values"
        )
    return [f"lr schedule rebuilt at the resumed step ({'; '.join(schedule)}; trainer.extend_schedule=true)"] \
        if schedule else []


def config_dict(cfg: Config) -> dict:
    """The resolved config as the plain dict that ``config.yaml`` holds."""
    from omegaconf import OmegaConf

    return yaml.safe_load(OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def _flat(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list) and all(isinstance(v, dict) for v in tree) and tree:
        items = enumerate(tree)
    else:
        return {prefix.rstrip("."): tree}
    out = {}
    for key, value in items:
        out.update(_flat(value, f"{prefix}{key}."))
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
