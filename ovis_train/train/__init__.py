"""Training: one phase per run, driven by the Hydra configs under ``conf/``.

Modules, one concept each: ``config`` (structured configs, compose, one validate() for every group),
``freeze`` (ordered rules -> parameter groups), ``optim`` (AdamW, cosine with warmup), ``loss`` (token
loss sums), ``evaluation`` (held-out loss and caption accuracy, shared with the tools), ``checkpoint``
(atomic folders, resume choice), ``state`` (what a checkpoint holds), ``distributed`` (Accelerator for
one process / DDP / DeepSpeed), ``metrics`` (metrics.jsonl, wandb, tqdm, VET health), ``loop`` (the
recipe), ``guard`` (NaN/inf steps skipped, finite checks before saving), ``preempt`` (stop signals ->
one checkpoint), ``synthetic_data`` (the ``${synthetic_shards:...}`` resolver), ``errors`` (one-line errors, exit
codes; ``ConfigError`` itself lives in ``ovis_train.errors``). The run folder's layout is ``ovis_train.run``'s.
This package never imports a tool (evaluate, caption, demo, analyze, sweep).
Nothing heavy is imported here, so ``python -m ovis_train`` reports config errors fast.
"""

from ovis_train.train.errors import ConfigError

__all__ = ["ConfigError"]
