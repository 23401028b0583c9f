"""AdamW over the trainable parameter groups of a freeze plan, and cosine decay after linear warmup."""

from __future__ import annotations

import math

import torch

from ovis_train.train.config import TrainerConfig
from ovis_train.train.freeze import FreezePlan


def build_optimizer(plan: FreezePlan, trainer: TrainerConfig) -> torch.optim.AdamW:
    """One param group per trainable rule, each with its own lr / weight decay (frozen tensors never enter)."""
    return torch.optim.AdamW(plan.optimizer_groups(), betas=tuple(trainer.betas), eps=trainer.eps)


def lr_factor(step: int, trainer: TrainerConfig) -> float:
    """Multiplier of every group's lr for optimizer step ``step`` (0-based)."""
    warmup = round(trainer.warmup_ratio * trainer.max_steps)
    if step < warmup:
        return (step + 1) / warmup
    decay_steps = max(1, trainer.max_steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    floor = trainer.min_lr_ratio
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, trainer: TrainerConfig):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, trainer))
