"""One sweep member's numbers, read from its run directory: the final value of each metric in its
``metrics.jsonl``, its loss curves, its K and connector (from the export's config, else the run
config), and the connector's parameter count (visual head + VET, counted on a meta-device copy of
the exported architecture)."""

from __future__ import annotations

import json
import logging
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ovis_train.run import EXPORT_CONFIG_FILE, RunDir, is_export, is_run_dir

from .naming import expand_members, swept_keys_of, sweep_overrides
from .record import MemberRecord, read_record

log = logging.getLogger(__name__)

# summary column -> metrics.jsonl key whose last logged value it shows
FINAL_METRICS = {
    "train_loss": "loss",
    "eval_loss": "eval/loss",
    "eval_caption_accuracy": "eval/caption_accuracy",
    "peak_memory_gb": "memory/peak_gb",
    "vet_entropy": "vet/entropy",
    "vet_rows_top1": "vet/rows_top1",
    "vet_rows_with_mass": "vet/rows_with_mass",
}
THROUGHPUT_KEY = "tokens_per_s"  # a per-step rate: the member's median (the first steps warm up)


@dataclass
class Member:
    name: str  # the run directory's name
    path: Path
    record: MemberRecord
    values: dict = field(default_factory=dict)  # summary columns -> numbers (missing: not logged)
    curves: dict = field(default_factory=dict)  # "loss" / "eval/loss" -> ([steps], [values])
    visual_vocab_size: int | None = None
    connector: str | None = None
    connector_params: int | None = None

    @property
    def ok(self) -> bool:
        """Finished: a row of numbers. Failed or unfinished members are listed with their reason."""
        return self.record.status not in ("failed", "started")


def final_values(rows: list[dict]) -> dict:
    """Summary columns from the rows of a metrics.jsonl (a metric missing from every row is left out)."""
    values = {}
    for column, key in FINAL_METRICS.items():
        logged = [row[key] for row in rows if row.get(key) is not None]
        if logged:
            values[column] = logged[-1]
    rates = [row[THROUGHPUT_KEY] for row in rows if row.get(THROUGHPUT_KEY) is not None]
    if rates:
        values["tokens_per_s"] = statistics.median(rates)
    steps = [row["step"] for row in rows if "step" in row]
    if steps:
        values["steps"] = max(steps)
    return values


def curve(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(row["step"], row[key]) for row in rows if row.get(key) is not None]
    return [s for s, _ in points], [v for _, v in points]


def read_member(path: str | Path) -> Member:
    path = Path(path)
    record = read_record(path) or MemberRecord(overrides=_overrides_from_name(path.name))
    rows = RunDir(path).read_metrics()
    member = Member(name=path.name, path=path, record=record, values=final_values(rows),
                    curves={key: curve(rows, key) for key in ("loss", "eval/loss")})
    member.connector, member.visual_vocab_size = _architecture(path)
    member.connector_params = connector_parameters(RunDir(path).export)
    if record.status in ("unknown", "started") and RunDir(path).export.is_dir():
        record.status = "completed"  # no end recorded (summary made by hand, callback lost): the export says
    elif record.status == "started":
        record.error = record.error or "did not finish (still running, or stopped before its end)"
    elif record.status == "unknown" and not rows:
        record.status, record.error = "failed", "no metrics logged (failed or never started)"
    return member


def _overrides_from_name(name: str) -> list[str]:
    """Members are named ``k1=v1,k2=v2`` (naming.py; older sweeps: hydra.job.override_dirname): split
    it back, gluing pieces without "=" to the previous one (values that held commas)."""
    parts: list[str] = []
    for piece in name.split(","):
        if "=" in piece or not parts:
            parts.append(piece)
        else:
            parts[-1] += "," + piece
    return parts if all("=" in p for p in parts) else [name]


def _architecture(run_dir: Path) -> tuple[str | None, int | None]:
    """(connector, K): the exported model's, else the run config's (K may be null there: the preset's)."""
    run = RunDir(run_dir)
    export = run.finished_export()
    if export is not None:
        config = json.loads((export / EXPORT_CONFIG_FILE).read_text())
        connector = (config.get("ovis_train") or {}).get("connector", "vet")
        return connector, config["vision_config"]["vocab_size"] if connector == "vet" else None
    run_config = run.read_config()
    if run_config is not None:
        model = run_config.get("model", {})
        connector = model.get("connector", "vet")
        return connector, model.get("visual_vocab_size") if connector == "vet" else None
    return None, None


def connector_parameters(export_dir: Path) -> int | None:
    """Parameters between the vision transformer and the LLM: the visual head (mlp: the projector)
    plus the VET (mlp: its indicator rows). None when the member exported nothing."""
    if not is_export(export_dir):
        return None
    try:
        import torch
        from transformers import Ovis2Config

        from ovis_train.model import OvisModel, model_components

        with torch.device("meta"):  # shapes only: no memory, no weights read
            model = OvisModel(Ovis2Config.from_pretrained(str(export_dir)))
        components = model_components(model)
        params = dict(model.named_parameters(remove_duplicate=False))
        return sum(params[name].numel() for key in ("visual_head", "vet") for name in components[key])
    except Exception as e:  # noqa: BLE001 - a count we cannot make is left blank, not fatal to the summary
        log.warning("cannot count the connector parameters of %s: %s", export_dir, e)
        return None


def swept_keys(sweep_dir: str | Path) -> list[str]:
    """The keys the sweep varies, from its recorded overrides (``naming.sweep_overrides``); [] when
    nothing is recorded or the overrides do not parse."""
    try:
        return swept_keys_of(sweep_overrides(sweep_dir) or [])
    except Exception:  # noqa: BLE001 - labels fall back to what differs between members
        return []


def expected_members(sweep_dir: str | Path) -> int | None:
    """How many members the recorded sweep has (None: no record, or a sweep only its sweeper can expand)."""
    overrides = sweep_overrides(sweep_dir)
    if overrides is None:
        return None
    try:
        return len(expand_members(overrides))
    except Exception:  # noqa: BLE001 - e.g. interval() sweeps: only an optimizing sweeper expands them
        return None


def read_sweep(sweep_dir: str | Path) -> list[Member]:
    """Every member directory under ``sweep_dir``, in job order (then name)."""
    members = [read_member(p) for p in Path(sweep_dir).iterdir() if is_run_dir(p)]
    return sorted(members, key=lambda m: (m.record.job_num is None, m.record.job_num or 0, _natural(m.name)))


def _natural(name: str) -> list:
    """Sort key putting "k=64" before "k=128"."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]
