"""Sweep member folder names: made from the swept keys only, e.g. ``model.visual_vocab_size=1024`` or
``arm=text_k256,trainer.seed=2``, whatever else the command line holds (paths, lists, quotes).

Contract: a name is one path segment (no ``/``), of safe characters only (``A-Z a-z 0-9 . _ + - = ,``),
at most ``MAX_NAME`` characters, and two members with different swept values get different names:
a value that is not already short and safe is cleaned and suffixed with a hash of its exact text.
The member's full override list lives in its record (``sweep_member.json``), not in its name.

Both ways of running a sweep name members with ``member_name``: ``python -m ovis_train -m`` through
the ``${ovis_sweep_member:}`` resolver (``hydra.sweep.subdir`` in ``conf/config.yaml``), which reads the
swept keys from the ``multirun.yaml`` Hydra's sweeper writes into the sweep folder before any member
starts (so it works in every process a launcher plugin runs members in), and
``ovis_train.sweep.launch``, which knows its sweep directly.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import yaml

from ovis_train.run import MULTIRUN_FILE, SWEEP_FILE

RESOLVER = "ovis_sweep_member"
SAFE_VALUE = re.compile(r"[A-Za-z0-9._+-]+")
MAX_VALUE = 40  # characters of one value kept in a name
MAX_NAME = 120  # a whole name; longer ones are cut and hashed


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _clean(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_")


def safe_value(value: str) -> str:
    """``value`` itself when short and safe; else its cleaned start plus a hash of the exact text."""
    if SAFE_VALUE.fullmatch(value) and len(value) <= MAX_VALUE:
        return value
    cleaned = _clean(value)[: MAX_VALUE - 9]
    return f"{cleaned}-{_digest(value)}" if cleaned else _digest(value)


def _key(override) -> str:
    """An override's key without its +/++/~ prefix ("model", "model.visual_vocab_size", "a@pkg")."""
    return override.get_key_element().lstrip("+~")


def parse(overrides: list[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def swept_keys_of(overrides: list[str]) -> list[str]:
    """The keys a sweep's command-line overrides vary (``k=a,b``, ``range(...)``, ``choice(...)``...)."""
    return [_key(o) for o in parse(overrides) if o.is_sweep_override()]


def expand_members(overrides: list[str]) -> list[list[str]]:
    """Sweep overrides -> one override list per member, as ``python -m ovis_train -m`` expands them
    (Hydra's override grammar and basic sweeper, cartesian product in command-line order)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    (members,) = BasicSweeper.split_arguments(parse(overrides), None)
    return members


def member_name(member_overrides: list[str], swept: list[str], job_num: int | None = None) -> str:
    """The folder name of the member with these (expanded) overrides in a sweep varying ``swept``."""
    keys = set(swept)
    parts = []
    for override in parse(member_overrides):
        key = _key(override)
        if key in keys:
            value = override.get_value_element_as_str() if override.value() is not None else "null"
            parts.append(f"{_clean(key.replace('/', '.'))}={safe_value(value)}")
    if not parts:  # nothing swept (a one-member multirun): name it by its number
        return f"member-{job_num or 0}"
    name = ",".join(parts)
    if len(name) > MAX_NAME:
        name = f"{name[: MAX_NAME - 9]}-{_digest(name)}"
    return name


def sweep_overrides(sweep_dir: str | Path) -> list[str] | None:
    """The sweep's own command-line overrides (with sweep syntax) as recorded in its folder: Hydra's
    ``multirun.yaml``, or the ``sweep.yaml`` that ``ovis_train.sweep.launch`` writes; None if neither."""
    sweep_dir = Path(sweep_dir)
    if (sweep_dir / MULTIRUN_FILE).is_file():
        hydra = (yaml.safe_load((sweep_dir / MULTIRUN_FILE).read_text()) or {}).get("hydra", {})
        return list(hydra.get("overrides", {}).get("task", []))
    if (sweep_dir / SWEEP_FILE).is_file():
        return list((yaml.safe_load((sweep_dir / SWEEP_FILE).read_text()) or {}).get("overrides", []))
    return None


def _resolve_member_name(*, _root_) -> str:
    """``${ovis_sweep_member:}``: this multirun member's folder name (hydra.sweep.subdir)."""
    hydra = _root_.hydra
    recorded = sweep_overrides(str(hydra.sweep.dir)) or []
    return member_name(list(hydra.overrides.task), swept_keys_of(recorded), int(hydra.job.num))


def register_resolver() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, _resolve_member_name)


register_resolver()  # at import: the callback imports this module wherever a launcher runs members
