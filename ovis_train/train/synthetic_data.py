"""``${synthetic_shards:split,n}`` in YAML: tiny coloured-shape shards, made on first use.

So that ``python -m ovis_train data=synthetic`` runs with nothing prepared. Shards go to
``$OVIS_TRAIN_CACHE/synthetic`` (default ``~/.cache/ovis-train``); each set is written to a
private temp folder and renamed into place, so ranks resolving the config together never see a
half-written set.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

SAMPLES_PER_SHARD = 32
SEEDS = {"train": 0, "eval": 1}  # disjoint samples for held-out loss


def cache_dir() -> Path:
    return Path(os.environ.get("OVIS_TRAIN_CACHE", Path.home() / ".cache" / "ovis-train"))


def synthetic_shards(split: str, n_samples: int) -> str:
    """The shards as one brace pattern, e.g. ``.../train-256/synthetic-{000000..000007}.tar``."""
    from ovis_train.data import write_synthetic_shards

    if split not in SEEDS:
        raise ValueError(f"synthetic_shards split must be one of {sorted(SEEDS)}, got {split!r}")
    folder = cache_dir() / "synthetic" / f"{split}-{n_samples}"
    if not folder.is_dir():
        tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
        write_synthetic_shards(str(tmp), n_samples, SAMPLES_PER_SHARD, seed=SEEDS[split])
        try:
            os.rename(tmp, folder)
        except OSError:  # another rank published the same (deterministic) shards first
            shutil.rmtree(tmp, ignore_errors=True)
    last = len(list(folder.glob("synthetic-*.tar"))) - 1
    return str(folder / (f"synthetic-{{000000..{last:06d}}}.tar" if last else "synthetic-000000.tar"))


def register_resolver() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("synthetic_shards"):
        OmegaConf.register_new_resolver("synthetic_shards", synthetic_shards)
