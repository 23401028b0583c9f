"""The run's configuration: structured dataclasses that Hydra's YAML tree under ``conf/`` fills in.

Because the root is a registered schema, a misspelt key or a wrong type fails at composition
(one error line from the entry point) instead of being silently ignored. ``validate`` then checks
every group in one go (the model's through its preset, the data's through ``DataConfig.validate``),
so ``python -m ovis_train``, ``--cfg job``, sweeps and the tools that ``compose`` all refuse the same
settings with the same line before anything is built. Public override names
(a contract, keep them): ``phase``, ``model``, ``data``, ``model.visual_vocab_size``,
``model.connector``, ``trainer.max_steps``, ``trainer.save_every``, ``trainer.seed``, ``run_dir``,
``resume``, ``init_from``, ``logger``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovis_train.data.config import DataConfig
from ovis_train.model.config import ModelConfig
from ovis_train.train.errors import ConfigError
from ovis_train.train.freeze import FreezeRule

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
SCHEMA_NAME = "ovis_train_schema"
PRIMARY_CONFIG = "config"  # conf/config.yaml, the config Hydra composes from


@dataclass
class PhaseConfig:
    """What a phase trains: ordered freeze rules (first match wins); its lr etc. live in trainer.*."""

    name: str = "p1"
    rules: list[FreezeRule] = field(default_factory=list)


@dataclass
class TrainerConfig:
    max_steps: int = 100  # optimizer steps for the whole phase (the lr schedule spans them)
    stop_at_step: int | None = None  # end this invocation early (time-boxed jobs); resume=auto continues
    grad_accum: int = 1  # micro-batches per optimizer step and rank
    lr: float = 1e-4  # default for freeze rules that set no lr
    weight_decay: float = 0.0  # default for freeze rules that set no weight_decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_ratio: float = 0.1  # share of max_steps with linear warmup, then cosine decay
    min_lr_ratio: float = 0.0  # cosine floor, as a share of each group's lr
    clip: float | None = 1.0  # max global grad norm; null disables clipping
    # a step with a NaN/inf loss or grad norm is skipped (no update); this many in a row stop the run (exit 4)
    max_nonfinite_steps: int = 5
    bf16: bool = False  # bf16 autocast (DeepSpeed: bf16 weights with fp32 master copies)
    grad_checkpointing: bool = False  # non-reentrant: works with a frozen first layer
    seed: int = 0
    save_every: int = 0  # steps between checkpoints; 0: only at the end
    keep_last: int | None = 2  # complete checkpoints kept; null keeps all
    eval_every: int = 0  # steps between held-out loss evaluations (needs data.eval_urls); 0: off
    eval_batches: int = 8  # batches per rank per evaluation
    # held-out images greedy-captioned at the end of the phase (eval/caption_accuracy, exact match); 0: off
    caption_eval_samples: int = 0
    vet_health_every: int = 10  # window (steps) for visual-token entropy / VET row usage; 0: off
    export: bool = True  # save a from_pretrained folder (run_dir/export) at the end of the phase
    # the device's dense bf16 peak in TFLOP/s for perf/mfu; null: from the known-device table (flops.py)
    peak_tflops: float | None = None


@dataclass
class DistributedConfig:
    strategy: str = "ddp"  # ddp | deepspeed (ddp also covers a single process)
    backend: str | None = None  # torch.distributed backend; null: nccl on GPUs, gloo on CPU
    find_unused_parameters: bool = False
    # DeepSpeed JSON config; batch size, accumulation, clipping and bf16 are filled from data/trainer
    deepspeed: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoggerConfig:
    backend: str = "wandb"  # wandb | none (metrics.jsonl is always written)
    project: str = "ovis-train"
    name: str | None = None  # null: the run directory's name
    mode: str = "offline"  # wandb mode when WANDB_MODE is unset; offline never touches the network


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    phase: PhaseConfig = field(default_factory=PhaseConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # every rank takes rank 0's value, so a per-process timestamp here is harmless
    run_dir: str = "runs/${phase.name}-${now:%Y%m%d-%H%M%S}"
    resume: str | None = None  # auto | <checkpoint folder> | null
    init_from: str | None = None  # a previous phase's export folder (or any Ovis2 checkpoint)


def register() -> None:
    """Make the schema and the ``${synthetic_shards:...}`` resolver known to Hydra."""
    from hydra.core.config_store import ConfigStore

    from ovis_train.train.synthetic_data import register_resolver

    ConfigStore.instance().store(name=SCHEMA_NAME, node=Config)
    register_resolver()


def compose_tree(overrides: list[str] = (), config_dir: str | None = None, config_name: str | None = None,
                 return_hydra_config: bool = False):
    """The OmegaConf tree Hydra composes for ``python -m ovis_train [--config-dir D] [--config-name N]
    <overrides>`` (a ``--config-dir`` goes before ours on the search path, as with Hydra's flag)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register()
    directory = str(Path(config_dir).resolve()) if config_dir else str(CONF_DIR)
    ours = [f"hydra.searchpath=[file://{CONF_DIR}]"] if config_dir else []
    with initialize_config_dir(config_dir=directory, version_base="1.3"):
        return hydra_compose(config_name=config_name or PRIMARY_CONFIG, overrides=[*overrides, *ours],
                             return_hydra_config=return_hydra_config)


def compose(overrides: list[str] = (), config_dir: str | None = None, config_name: str | None = None) -> Config:
    """The checked config ``python -m ovis_train <overrides>`` would run with (tests, tools, sweeps)."""
    return to_config(compose_tree(overrides, config_dir, config_name))


def to_config(cfg) -> Config:
    """OmegaConf tree (Hydra's node, if any, is left out) -> checked ``Config`` dataclasses."""
    from omegaconf import OmegaConf, open_dict

    if "hydra" in cfg:  # composed with return_hydra_config (sweeps read the member's directory name there)
        cfg = cfg.copy()
        with open_dict(cfg):
            del cfg["hydra"]
    config = OmegaConf.to_object(cfg)
    validate(config)
    return config


def validate(cfg: Config) -> None:
    """Every check that needs no model weights and no shard: raise a ConfigError naming the key and the fix."""
    from ovis_train.model.presets import resolve_config

    cfg.data.validate()
    resolve_config(cfg.model)  # fills the preset's values and checks the result
    _require(
        not (cfg.init_from and cfg.model.init_from and cfg.init_from != cfg.model.init_from),
        f"init_from={cfg.init_from} and model.init_from={cfg.model.init_from} disagree; set one",
    )
    t = cfg.trainer
    _require(t.max_steps >= 0, f"trainer.max_steps={t.max_steps}: must be >= 0")
    _require(t.grad_accum >= 1, f"trainer.grad_accum={t.grad_accum}: must be >= 1")
    _require(t.stop_at_step is None or t.stop_at_step >= 1, f"trainer.stop_at_step={t.stop_at_step}: >= 1 or null")
    _require(0 <= t.warmup_ratio <= 1, f"trainer.warmup_ratio={t.warmup_ratio}: must be in [0, 1]")
    _require(0 <= t.min_lr_ratio <= 1, f"trainer.min_lr_ratio={t.min_lr_ratio}: must be in [0, 1]")
    _require(t.max_nonfinite_steps >= 1, f"trainer.max_nonfinite_steps={t.max_nonfinite_steps}: must be >= 1")
    _require(len(t.betas) == 2, f"trainer.betas={t.betas}: give two numbers, e.g. [0.9, 0.999]")
    _require(t.peak_tflops is None or t.peak_tflops > 0, f"trainer.peak_tflops={t.peak_tflops}: > 0 or null")
    for key in ("save_every", "eval_every", "vet_health_every", "caption_eval_samples"):
        _require(getattr(t, key) >= 0, f"trainer.{key}={getattr(t, key)}: must be >= 0")
    _require(
        t.caption_eval_samples == 0 or cfg.data.eval_urls,
        f"trainer.caption_eval_samples={t.caption_eval_samples} needs held-out shards: set data.eval_urls "
        "or trainer.caption_eval_samples=0",
    )
    _require(
        t.eval_every == 0 or cfg.data.eval_urls,
        f"trainer.eval_every={t.eval_every} needs held-out shards: set data.eval_urls or trainer.eval_every=0",
    )
    _require(
        cfg.distributed.strategy in ("ddp", "deepspeed"),
        f"distributed.strategy={cfg.distributed.strategy!r}: choose ddp or deepspeed (distributed=ddp|zero2|zero3)",
    )
    _require(cfg.logger.backend in ("wandb", "none"), f"logger.backend={cfg.logger.backend!r}: choose wandb or none")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
