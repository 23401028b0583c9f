"""What to analyse: a model (export folder, checkpoint folder or run directory) and the shards to read."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_model as load_safetensors_into

from ovis_train.model import ModelConfig, build_model, load_model
from ovis_train.run import CONFIG_FILE, RunDir, checkpoint_weights, is_export
from ovis_train.train.config import compose
from ovis_train.train.lora import BASE_HASH_FILE


def resolve_model_path(path: str | Path) -> Path:
    """An export or checkpoint folder as given; a run directory -> its export, else its latest checkpoint."""
    path = Path(path)
    if is_export(path) or checkpoint_weights(path).is_file():
        return path
    run = RunDir(path)
    found = run.finished_export() or run.latest_checkpoint()
    if found is not None:
        return found
    raise FileNotFoundError(f"{path}: neither an export folder, a checkpoint folder nor a run directory with one")


def load_bundle(path: str | Path):
    """An export loads as saved; a checkpoint rebuilds its run's model and takes the checkpoint's weights."""
    path = resolve_model_path(path)
    if is_export(path):
        return load_model(str(path))
    checkpoint = RunDir(path)  # a checkpoint folder holds the run's config.yaml, as the run directory does
    weights = checkpoint_weights(path)
    run_config = checkpoint.read_config()
    if run_config is None or not weights.is_file():
        raise FileNotFoundError(
            f"{path}: a checkpoint needs {CONFIG_FILE} and {weights.name} (a DeepSpeed checkpoint: analyse the "
            "run's export folder instead)"
        )
    if (path / BASE_HASH_FILE).is_file():
        raise FileNotFoundError(f"{path}: a LoRA run's checkpoint holds only what trains, not the frozen base; "
                                "analyse the run's export folder (adapters merged) instead")
    bundle = build_model(ModelConfig.from_dict(run_config["model"]))
    _load_weights(bundle.model, weights)
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
