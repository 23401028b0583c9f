"""Training: one phase per run, driven by the Hydra configs under ``conf/``.

Modules, one concept each: ``config`` (structured configs, compose), ``freeze`` (ordered rules ->
parameter groups), ``optim`` (AdamW, cosine with warmup), ``checkpoint`` (atomic folders, resume
choice), ``state`` (what a checkpoint holds), ``distributed`` (Accelerator for one process / DDP /
DeepSpeed), ``metrics`` (metrics.jsonl, wandb, tqdm, VET health), ``loop`` (the recipe),
``synthetic_data`` (the ``${synthetic_shards:...}`` resolver), ``errors`` (ConfigError).
Nothing heavy is imported here, so ``python -m ovis_train`` reports config errors fast.
"""

from ovis_train.train.errors import ConfigError

__all__ = ["ConfigError"]
