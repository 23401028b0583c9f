"""What to analyse: a model (export folder, checkpoint folder or run directory) and the shards to read."""

from __future__ import annotations

from pathlib import Path

import yaml
from safetensors.torch import load_model as load_safetensors_into

from ovis_train.model import ModelConfig, build_model, load_model
from ovis_train.train.checkpoint import checkpoint_root, complete_checkpoints
from ovis_train.train.config import compose
from ovis_train.train.loop import EXPORT_DIR
from ovis_train.train.state import CONFIG_FILE


def resolve_model_path(path: str | Path) -> Path:
    """An export or checkpoint folder as given; a run directory -> its export, else its latest checkpoint."""
    path = Path(path)
    if (path / "config.json").is_file() or (path / "model.safetensors").is_file():
        return path
    if (path / EXPORT_DIR / "config.json").is_file():
        return path / EXPORT_DIR
    found = complete_checkpoints(checkpoint_root(path))
    if found:
        return found[-1]
    raise FileNotFoundError(f"{path}: neither an export folder, a checkpoint folder nor a run directory with one")


def load_bundle(path: str | Path):
    """An export loads as saved; a checkpoint rebuilds its run's model and takes the checkpoint's weights."""
    path = resolve_model_path(path)
    if (path / "config.json").is_file():
        return load_model(str(path))
    config_file = path / CONFIG_FILE
    if not config_file.is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{path}: a checkpoint needs {CONFIG_FILE} and model.safetensors (a DeepSpeed checkpoint: analyse the "
            "run's export folder instead)"
        )
    bundle = build_model(ModelConfig.from_dict(yaml.safe_load(config_file.read_text())["model"]))
    _load_weights(bundle.model, path / "model.safetensors")
    return bundle


def _load_weights(model, file: Path) -> None:
    # safetensors' loader knows which names tied weights share (the file keeps one of them)
    missing, unexpected = load_safetensors_into(model, str(file), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{file} does not fit the run's model: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )


def data_urls(overrides: list[str], split: str) -> str:
    """Shard pattern of the run config's data group (``data=fashion_mnist``, ``data.eval_urls=...``):
    its held-out shards (split="eval") or its first training source (split="train")."""
    data = compose(overrides).data
    if split == "eval":
        if not data.eval_urls:
            raise ValueError("the data config has no eval_urls: pass --split train or --shards")
        return data.eval_urls
    if not data.sources:
        raise ValueError("the data config has no sources: pass --shards")
    return data.sources[0].urls
