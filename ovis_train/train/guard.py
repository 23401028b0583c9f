"""The non-finite guard: a step with a NaN/inf loss or gradient norm changes nothing, and no NaN/inf
tensor is ever published.

Contract. A step is *skipped* when its loss (summed over every rank) or its global gradient norm is
not finite; every rank reaches the same verdict. A skipped step leaves the weights, the optimizer
moments and any loss-scale state bit-identical; its batches are consumed and ``state.step`` and the
lr schedule still advance (the run ends on schedule, and resume stays exact across a skip).
``StepGuard`` counts skips (``train/skipped_steps``) and raises ``Diverged`` after
``trainer.max_nonfinite_steps`` skips in a row. ``require_finite`` checks every tensor a checkpoint
or export would hold (each rank its own ZeRO shards, verdict agreed) before anything is written, so
a published checkpoint is always finite and ``keep_last`` can never prune the last finite one.

How the skip happens is the train loop's business (``train_step``): under DDP it simply does not
call the optimizer; under DeepSpeed, whose step runs inside ``accelerator.backward``, it relies on
DeepSpeed's own overflow skip (ZeRO-1/2/3 skip a step whose gradient norm is not finite; the loop
makes a non-finite loss reach the gradients so that check sees it too).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ovis_train.train.distributed import all_reduce_sum
from ovis_train.train.errors import Diverged


class StepGuard:
    """Counts skipped steps; stops the run after ``max_consecutive`` of them in a row."""

    def __init__(self, max_consecutive: int, skipped_total: int = 0):
        self.max_consecutive = max_consecutive
        self.total = skipped_total
        self.streak = 0  # skipped steps in a row, ending at the latest step

    def record(self, applied: bool) -> None:
        self.streak = 0 if applied else self.streak + 1
        self.total += not applied

    def check(self, step: int, loss: float, grad_norm: float, last_checkpoint) -> None:
        """Raise ``Diverged`` when the streak ending at ``step`` reached the limit."""
        if self.streak >= self.max_consecutive:
            first = step - self.streak + 1
            raise Diverged(
                f"steps {first}-{step}: {self.streak} steps in a row had a non-finite loss or gradient norm "
                f"(last: loss={loss:g}, grad_norm={grad_norm:g}) and were skipped, so the weights are those of "
                f"step {first - 1}; latest checkpoint: {last_checkpoint or 'none'}. Lower trainer.lr, check the "
                "data these steps read, or raise trainer.max_nonfinite_steps"
            )


def _torch_optimizer(optimizer):
    """The innermost optimizer holding tensors (Accelerate and DeepSpeed wrap the torch one)."""
    while getattr(optimizer, "optimizer", None) is not None:
        optimizer = optimizer.optimizer
    return optimizer


def _tensors(model, optimizer) -> Iterator[tuple[str, torch.Tensor]]:
    """This rank's share of everything a checkpoint holds: parameters (the local ZeRO-3 partition),
    the optimizer's master weights and its state (moments, step counters)."""
    if model is not None:
        for name, p in model.named_parameters():
            yield name, getattr(p, "ds_tensor", p)  # ZeRO-3 keeps the rank's partition there
        for name, b in model.named_buffers():
            yield name, b
    if optimizer is not None:
        inner = _torch_optimizer(optimizer)
        for g, group in enumerate(getattr(inner, "param_groups", [])):
            for i, p in enumerate(group["params"]):
                yield f"optimizer group {g} param {i}", p
        for i, state in enumerate(getattr(inner, "state", {}).values()):
            for key, value in state.items():
                if torch.is_tensor(value):
                    yield f"optimizer state {i} {key}", value


@torch.no_grad()
def nonfinite_tensors(model, optimizer=None) -> list[str]:
    """Names of this rank's floating-point tensors (see ``_tensors``) holding a NaN or an inf."""
    bad, seen = [], set()
    for name, tensor in _tensors(model, optimizer):
        if id(tensor) in seen:  # without DeepSpeed the optimizer's params are the model's
            continue
        seen.add(id(tensor))
        if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            bad.append(name)
    return bad


def require_finite(accelerator, model, optimizer, what: str) -> None:
    """Raise ``Diverged`` on every rank if any rank holds a non-finite tensor. Collective: all ranks call it."""
    bad = nonfinite_tensors(model, optimizer)
    total = int(all_reduce_sum(accelerator, [len(bad)])[0])
    if total:
        example = f" (e.g. {', '.join(bad[:3])})" if bad else ""
        raise Diverged(
            f"{what} not written: {total} tensors hold NaN or inf{example}; the checkpoints already saved are "
            "kept. Lower trainer.lr or check the data, and resume from the latest checkpoint (resume=auto)"
        )
