"""Accelerator set-up for one process, DDP, or DeepSpeed ZeRO-2/3, on GPUs or CPUs.

CPU facts this encodes (docs/design.md, "Distributed runs"; checked with accelerate 1.15): ``Accelerator(cpu=True)`` drops
DeepSpeed, so only DDP gets it (without it a launched CPU run is DistributedType.NO: no gradient
sync, no-op barriers); under a launcher pass the gloo backend explicitly; DeepSpeed needs
``train_micro_batch_size_per_gpu`` because no DataLoader goes through ``prepare()``; its shared-memory
comm op would be compiled at start on CPU (skipped); gloo can abort at interpreter exit, so a
launched run ends with ``destroy_process_group()`` + ``os._exit``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys

import torch

from ovis_train.train.config import Config
from ovis_train.train.errors import ConfigError


_LAUNCHED = "LOCAL_RANK" in os.environ  # read before a single DeepSpeed process sets it itself


def is_launched() -> bool:
    """True under accelerate launch / torchrun / deepspeed (they set LOCAL_RANK)."""
    return _LAUNCHED


def make_accelerator(cfg: Config):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    dist = cfg.distributed
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" and dist.strategy != "deepspeed":
        raise ConfigError(
            f"launched with --use_deepspeed but distributed.strategy={dist.strategy}; pass distributed=zero2 "
            "or distributed=zero3 (and drop --use_deepspeed: the config carries the DeepSpeed settings)"
        )
    deepspeed = dist.strategy == "deepspeed"
    plugin = _deepspeed_plugin(cfg) if deepspeed else None
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=dist.find_unused_parameters)]
    if "LOCAL_RANK" in os.environ:  # a process group will be made
        backend = dist.backend or ("nccl" if torch.cuda.is_available() else "gloo")
        handlers.append(InitProcessGroupKwargs(backend=backend))
    return Accelerator(
        # CPU-only DDP needs cpu=True to become MULTI_CPU; for DeepSpeed it must stay False (it drops DeepSpeed)
        cpu=not deepspeed and not torch.cuda.is_available(),
        mixed_precision="bf16" if cfg.trainer.bf16 else "no",
        gradient_accumulation_steps=cfg.trainer.grad_accum,
        step_scheduler_with_optimizer=False,  # we step it once per optimizer step (no per-process multiple)
        deepspeed_plugin=plugin,
        log_with="wandb" if cfg.logger.backend == "wandb" else None,
        kwargs_handlers=handlers,
    )


def _deepspeed_plugin(cfg: Config):
    from accelerate.utils import DeepSpeedPlugin

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # avoid a ~30 s C++ build at start
    if not is_launched():  # DeepSpeed always wants a process group; else it looks for MPI
        _single_process_group_env()
    ds = copy.deepcopy(dict(cfg.distributed.deepspeed))
    ds.update(
        train_micro_batch_size_per_gpu=cfg.data.batch_size,
        gradient_accumulation_steps=cfg.trainer.grad_accum,
        gradient_clipping=cfg.trainer.clip or 0.0,
        # skip (not apply) a step with NaN/inf gradients; fp32 ZeRO always does (ovis_train.train.guard)
        bf16={"enabled": cfg.trainer.bf16, "check_grad_overflow": True},
    )
    ds.setdefault("steps_per_print", sys.maxsize)  # we log ourselves
    ds.setdefault("zero_allow_untested_optimizer", True)  # torch AdamW: no C++ op build
    return DeepSpeedPlugin(hf_ds_config=ds)


def _single_process_group_env() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    group = dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    for key, value in group.items():
        os.environ.setdefault(key, value)


def zero_stage(accelerator) -> int:
    plugin = accelerator.state.deepspeed_plugin
    return plugin.zero_stage if plugin is not None else 0


def broadcast_from_main(accelerator, value):
    """Rank 0's value on every rank (e.g. a run directory computed from a per-process timestamp)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def all_reduce_sum(accelerator, values) -> torch.Tensor:
    """Element-wise sum over ranks of a list of numbers or a 1-D tensor, as float64 on the CPU."""
    tensor = torch.as_tensor(values, dtype=torch.float64).to(accelerator.device)
    if accelerator.num_processes > 1:
        torch.distributed.all_reduce(tensor)
    return tensor.cpu()


def all_reduce_min(accelerator, value: int) -> int:
    if accelerator.num_processes == 1:
        return value
    tensor = torch.tensor([value], device=accelerator.device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MIN)
    return int(tensor.item())


def gathered_parameters(accelerator, model):
    """Context in which a ZeRO-3 model holds its full weights on every rank (no-op otherwise)."""
    if zero_stage(accelerator) != 3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)


@contextlib.contextmanager
def accelerator_session(cfg: Config):
    """An Accelerator for one run. Afterwards, even after an error, this process can make a fresh one
    (Accelerate keeps process-wide singletons); a clean end also closes trackers and the process group."""
    from accelerate.state import AcceleratorState

    accelerator = make_accelerator(cfg)
    try:
        yield accelerator
        accelerator.end_training()
        if torch.distributed.is_initialized():
            accelerator.wait_for_everyone()
            torch.distributed.destroy_process_group()
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def exit_launched_process(code: int = 0) -> None:
    """torch + gloo can abort at interpreter exit after all work is done; a launched rank skips it."""
    if is_launched():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
