"""One training phase, top to bottom: model -> freeze -> accelerator -> data -> optimizer -> resume ->
steps (log, evaluate, checkpoint) -> export.

The loss of an optimizer step is the sum of token losses over every micro-batch on every rank,
divided by the number of supervised tokens in that whole global batch (so a short caption weighs
as much per token as a long one, whatever micro-batch it falls in). Each micro-batch's backward
therefore carries ``token_loss_sum * grad_accum * world_size / global_tokens``: Accelerate (or
DeepSpeed) divides by ``grad_accum`` and DDP / ZeRO average over ranks.

A step whose loss or grad norm is not finite applies no update (``ovis_train.train.guard``); a stop
signal ends the phase at the next step boundary with one checkpoint (``ovis_train.train.preempt``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from pathlib import Path

import torch
from accelerate.utils import DistributedType, set_seed

from ovis_train.data import build_stream
from ovis_train.model import build_model, model_components
from ovis_train.train.checkpoint import resolve_resume
from ovis_train.train.config import Config
from ovis_train.train.distributed import (
    accelerator_session,
    all_reduce_min,
    all_reduce_sum,
    broadcast_from_main,
    gathered_parameters,
)
from ovis_train.train.errors import Diverged, Stopped
from ovis_train.train.evaluation import caption_accuracy, first_batches, loss_sums
from ovis_train.train.flops import FlopCounter, peak_tflops, perf_metrics
from ovis_train.train.freeze import resolve_freeze
from ovis_train.train.guard import StepGuard, require_finite
from ovis_train.train.loss import supervised_tokens, token_loss_sum
from ovis_train.train.metrics import RunLogger, VetHealth, peak_memory_gb
from ovis_train.train.optim import build_optimizer, build_scheduler
from ovis_train.train.preempt import StopSignals
from ovis_train.run import RunDir
from ovis_train.train.state import Seen, TrainState, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


def train(cfg: Config) -> Path:
    """Run (or resume) one phase; returns its run directory. Stop signals from here on save first."""
    with StopSignals() as stop:
        return _train(cfg, stop)


def _train(cfg: Config, stop: StopSignals) -> Path:
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # it reports every file it saves at INFO
    t = cfg.trainer
    set_seed(t.seed)  # same initial weights on every rank
    bundle = _build_bundle(cfg)
    plan = resolve_freeze(bundle.model, cfg.phase.rules, model_components(bundle.model), t.lr, t.weight_decay)
    plan.apply()
    if t.grad_checkpointing:  # non-reentrant: gradients flow even when the first layers are frozen
        bundle.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    flop_counter = FlopCounter(bundle.model)  # reads the freeze mask; before any wrapper shards the weights

    stopped_at = None
    with accelerator_session(cfg) as accelerator:  # released even on errors (sweeps run members in-process)
        if accelerator.device.type == "cuda":  # memory/peak_gb: this phase's peak, not an earlier sweep member's
            torch.cuda.reset_peak_memory_stats(accelerator.device)
        cfg = dataclasses.replace(cfg, run_dir=broadcast_from_main(accelerator, cfg.run_dir))
        run_dir = Path(cfg.run_dir)
        resume_from = resolve_resume(cfg.resume, run_dir)
        rank, world = accelerator.process_index, accelerator.num_processes
        stream = build_stream(cfg.data, bundle, rank, world, "train")
        optimizer = build_optimizer(plan, t)
        scheduler = build_scheduler(optimizer, t)
        model, optimizer, scheduler = accelerator.prepare(bundle.model, optimizer, scheduler)
        model.train()  # from_pretrained leaves models in eval mode (no dropout, no gradient checkpointing)

        state = TrainState(world_size=world)
        if resume_from is not None:
            state = load_checkpoint(accelerator, resume_from, stream)
        config_yaml = _save_run_config(accelerator, cfg, run_dir)
        if accelerator.is_main_process:
            print(f"run_dir: {run_dir}" + (f" (resumed from {resume_from.name})" if resume_from else ""))
            print(plan.table, flush=True)

        logger = RunLogger(accelerator, cfg, run_dir, state.step, _config_dict(config_yaml))
        health = VetHealth(bundle.model)
        peak = _peak_tflops(accelerator.device, t.peak_tflops)
        trainable = [p for group in plan.trainable_groups for p in group.params]
        batches = iter(stream)
        last_step = min(t.max_steps, t.stop_at_step or t.max_steps)
        saved_step = state.step if resume_from else None
        last_checkpoint = resume_from
        guard = StepGuard(t.max_nonfinite_steps, state.skipped_steps)

        def save() -> Path:  # never a NaN/inf tensor (all ranks check their shards first)
            with _bar_closed_on_error(logger):
                require_finite(accelerator, model, optimizer, f"checkpoint step {state.step}")
            return save_checkpoint(accelerator, run_dir, state, stream, config_yaml, t.keep_last)

        data_ended = False
        while state.step < last_step:
            if stop.requested(accelerator):  # every rank agrees, before taking the next step's batches
                stopped_at = state.step
                break
            health.collecting = t.vet_health_every > 0
            start = time.perf_counter()
            micro_batches, data_wait = _next_micro_batches(batches, t.grad_accum)
            if all_reduce_sum(accelerator, [len(micro_batches) < t.grad_accum])[0] > 0:
                log.warning("the data stream ended on some rank at step %d; the phase ends there", state.step)
                data_ended = True
                break
            lrs = _lrs(optimizer)  # the ones this step uses
            loss, grad_norm, seen, applied = train_step(
                accelerator, model, optimizer, scheduler, trainable, micro_batches, t.clip
            )
            health.collecting = False
            state.step += 1
            state.add(seen)
            guard.record(applied)
            state.skipped_steps = guard.total
            if not applied and accelerator.is_main_process:
                log.warning("step %d: loss=%g, grad_norm=%g: not finite, update skipped (%d in a row, stop at %d)",
                            state.step, loss, grad_norm, guard.streak, t.max_nonfinite_steps)
            seconds = time.perf_counter() - start
            metrics = {"loss": loss, "grad_norm": grad_norm, **lrs, "step_seconds": seconds,
                       "data_wait": data_wait / seconds, "tokens_per_s": seen.tokens / seconds,
                       "images_per_s": seen.images / seconds, "train/skipped_steps": guard.total,
                       "memory/peak_gb": peak_memory_gb(accelerator.device),
                       **perf_metrics(flop_counter.total(micro_batches), seconds, peak)}
            if t.vet_health_every and state.step % t.vet_health_every == 0:
                metrics.update(health.summary(accelerator, _visual_vocab(bundle.model)))
            if t.eval_every and state.step % t.eval_every == 0:
                metrics["eval/loss"] = _evaluate(accelerator, model, cfg, bundle)
            logger.log(state.step, metrics)
            with _bar_closed_on_error(logger):
                guard.check(state.step, loss, grad_norm, last_checkpoint)
            if t.save_every and state.step % t.save_every == 0:
                last_checkpoint = save()
                saved_step = state.step

        if t.caption_eval_samples and stopped_at is None:
            logger.log(state.step, {"eval/caption_accuracy": _caption_accuracy(accelerator, cfg, bundle)})
        if saved_step != state.step:
            last_checkpoint = save()
        if t.export and stopped_at is None and (state.step >= t.max_steps or data_ended):
            _export(accelerator, bundle, RunDir(run_dir).export)
        logger.close()
        health.close()
        is_main = accelerator.is_main_process
    if stopped_at is not None:
        message = f"stopped at step {stopped_at}; resume with resume=auto run_dir={run_dir} ({stop.name})"
        raise Stopped(message if is_main else "")
    return run_dir


@contextlib.contextmanager
def _bar_closed_on_error(logger):
    """The entry point's one-line error then starts a line of its own, not after the progress bar."""
    try:
        yield
    except Diverged:
        logger.close()
        raise


def _build_bundle(cfg: Config):
    return build_model(cfg.model.replace(init_from=cfg.init_from or cfg.model.init_from))  # validate() agreed


def _next_micro_batches(batches, n: int) -> tuple[list[dict], float]:
    out, waited = [], 0.0
    for _ in range(n):
        start = time.perf_counter()
        batch = next(batches, None)
        waited += time.perf_counter() - start
        if batch is None:
            break
        out.append(batch)
    return out, waited


def train_step(accelerator, model, optimizer, scheduler, trainable, micro_batches, clip):
    """One optimizer step over ``micro_batches``; returns (loss, grad norm, global counts, applied).

    ``applied`` is False when the loss or the grad norm was not finite on some rank: then no weight,
    moment or loss scale changed, and the lr schedule advanced all the same (``ovis_train.train.guard``).
    """
    seen = all_reduce_sum(accelerator, _count(micro_batches))
    seen = Seen(*(int(v) for v in seen))
    scale = len(micro_batches) * accelerator.num_processes / seen.supervised_tokens  # module docstring
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    loss_sum, loss, grad_norm, applied = 0.0, float("nan"), float("nan"), False
    for batch in micro_batches:
        with accelerator.accumulate(model):
            token_loss = token_loss_sum(model, batch, accelerator.device)
            loss_sum += float(token_loss.detach())
            if accelerator.sync_gradients:  # last micro-batch: know the step's loss before anything steps
                loss = float(all_reduce_sum(accelerator, [loss_sum])[0]) / seen.supervised_tokens
                if not math.isfinite(loss):  # on any rank: make every rank's gradients say so (DeepSpeed skips)
                    token_loss = token_loss * math.nan
            accelerator.backward(token_loss * scale)  # under DeepSpeed this also runs (or skips) the step
            if accelerator.sync_gradients:
                grad_norm = float(accelerator.clip_grad_norm_(trainable, clip or math.inf))
                if deepspeed:  # DeepSpeed skips a step whose global grad norm is not finite, on every rank
                    applied = not optimizer.step_was_skipped
                    if applied and not (math.isfinite(loss) and math.isfinite(grad_norm)):
                        raise RuntimeError(f"DeepSpeed applied a step with loss={loss}, grad_norm={grad_norm}; "
                                           "keep its bf16.check_grad_overflow / zero_optimization.compute_grad_norm on")
                else:  # DDP grads are identical on every rank; the all-reduce makes the verdict so regardless
                    bad = not (math.isfinite(loss) and math.isfinite(grad_norm))
                    applied = all_reduce_sum(accelerator, [bad])[0] == 0
                    if applied:
                        optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    if not accelerator.sync_gradients:
        raise RuntimeError("gradient accumulation went out of step with the optimizer; please report this")
    if deepspeed and not applied:
        scheduler.scheduler.step()  # the engine steps the schedule only with an applied update
    else:
        scheduler.step()  # a no-op wrapper under DeepSpeed, whose engine stepped it
    return loss, grad_norm, seen, applied


def _count(micro_batches) -> list[int]:
    """This rank's (supervised tokens, tokens, images, samples), in ``Seen`` order."""
    return [
        sum(supervised_tokens(b["labels"]) for b in micro_batches),
        sum(int(b["attention_mask"].sum()) for b in micro_batches),
        sum(int(b.get("n_images", 0)) for b in micro_batches),
        sum(len(b["input_ids"]) for b in micro_batches),
    ]


def _evaluate(accelerator, model, cfg: Config, bundle) -> float:
    """Token-weighted loss over the first ``eval_batches`` held-out batches of every rank."""
    stream = build_stream(cfg.data, bundle, accelerator.process_index, accelerator.num_processes, "eval")
    batches = first_batches(stream, cfg.trainer.eval_batches)
    n = all_reduce_min(accelerator, len(batches))  # ZeRO-3 forwards are collective: same count everywhere
    totals = all_reduce_sum(accelerator, list(loss_sums(model, batches[:n], accelerator.device)))
    return float(totals[0] / totals[1]) if totals[1] > 0 else float("nan")


def _caption_accuracy(accelerator, cfg: Config, bundle) -> float:
    """Exact-match accuracy of greedy captions of the first held-out images, on the main process while
    the others wait. Not under ZeRO-3: generation needs whole weights on one rank."""
    zero_stage = cfg.distributed.deepspeed.get("zero_optimization", {}).get("stage")
    if cfg.distributed.strategy == "deepspeed" and zero_stage == 3:
        log.warning("trainer.caption_eval_samples is skipped under ZeRO-3; evaluate the export instead")
        return float("nan")
    accuracy = float("nan")
    if accelerator.is_main_process:
        prompt = cfg.data.sources[0].template  # the captions' own template (the stream refused an empty list)
        score = caption_accuracy(bundle, cfg.data.eval_urls, limit=cfg.trainer.caption_eval_samples, prompt=prompt)
        accuracy = score.accuracy
        bundle.model.train()
    accelerator.wait_for_everyone()
    return accuracy


def _peak_tflops(device, override: float | None) -> float | None:
    peak = peak_tflops(device, override)
    if peak is None and device.type == "cuda":
        log.warning("no dense bf16 peak known for %s: set trainer.peak_tflops=<TFLOP/s> to log perf/mfu",
                    torch.cuda.get_device_name(device))
    return peak


def _lrs(optimizer) -> dict:
    return {f"lr/{group['name']}": group["lr"] for group in optimizer.param_groups}


def _visual_vocab(model) -> int:
    tower = model.config.vision_config
    return tower.vocab_size - tower.num_visual_indicator_tokens


def _save_run_config(accelerator, cfg: Config, run_dir: Path) -> str:
    from omegaconf import OmegaConf

    text = OmegaConf.to_yaml(OmegaConf.structured(cfg))
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        RunDir(run_dir).config_file.write_text(text)
    accelerator.wait_for_everyone()
    return text


def _config_dict(config_yaml: str) -> dict:
    import yaml

    return yaml.safe_load(config_yaml)


def _export(accelerator, bundle, path: Path) -> None:
    """The phase's result as a from_pretrained folder; the next phase starts from it (init_from)."""
    with gathered_parameters(accelerator, bundle.model):
        require_finite(accelerator, bundle.model, None, f"export {path}")
        if accelerator.is_main_process:
            bundle.save_pretrained(str(path))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        print(f"exported: {path}", flush=True)
