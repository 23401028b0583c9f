"""Trainer overhead: ovis-train's training step vs a bare PyTorch loop (same model, same batches, same
optimizer and scheduler, same loss maths), and transformers' Trainer on the same model, batches,
batch size and freeze mask. Each contender runs in its own process; step time = median over the
steps after the warm-up.

    python -m benchmarks.trainer_overhead                  # tiny preset, P1
    python -m benchmarks.trainer_overhead --preset demo    # SmolLM2-135M + EfficientNet-Lite0 (slow)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from benchmarks.common import (
    CPU_THREADS_HELP,
    MODEL_INPUTS,
    bare_step,
    build_phase,
    collect_batches,
    compose_config,
    machine_line,
    print_table,
    run_isolated,
    set_threads,
)


def _overrides(batch_size: int, bf16: bool) -> list[str]:
    return [f"data.batch_size={batch_size}", f"trainer.bf16={str(bf16).lower()}"]


def _median_after(times: list[float], warmup: int) -> float:
    return statistics.median(times[warmup:])


def run_ovis_train(preset: str, phase: str, steps: int, warmup: int, batch_size: int, bf16: bool, threads: int) -> dict:
    """ovis-train's own loop (python -m ovis_train ...), its per-step times from metrics.jsonl."""
    from ovis_train.train.loop import train
    from ovis_train.run import RunDir

    set_threads(threads)
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = compose_config(preset, phase, steps + warmup, run_dir, _overrides(batch_size, bf16))
        train(cfg)
        rows = RunDir(run_dir).read_metrics()[warmup:]
    step = statistics.median(r["step_seconds"] for r in rows)
    compute = statistics.median(r["step_seconds"] * (1 - r["data_wait"]) for r in rows)
    wait = statistics.median(r["data_wait"] for r in rows)
    return {"step_s": step, "compute_s": compute, "data_wait": wait, "loss": rows[-1]["loss"]}


def run_bare(preset: str, phase: str, steps: int, warmup: int, batch_size: int, bf16: bool, threads: int,
             loss: str) -> dict:
    set_threads(threads)
    cfg = compose_config(preset, phase, steps + warmup, "unused", _overrides(batch_size, bf16))
    bundle, optimizer, scheduler = build_phase(cfg)
    batches = collect_batches(cfg, bundle, steps + warmup)
    times, value = [], float("nan")
    for batch in batches:
        start = time.perf_counter()
        value = bare_step(bundle.model, batch, optimizer, scheduler, cfg.trainer.clip, autocast=bf16, loss=loss)
        times.append(time.perf_counter() - start)
    step = _median_after(times, warmup)
    return {"step_s": step, "compute_s": step, "loss": value}


def run_hf_trainer(preset: str, phase: str, steps: int, warmup: int, batch_size: int, bf16: bool, threads: int) -> dict:
    """transformers' Trainer with our optimizer/scheduler; each dataset item is one pre-collated batch."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    set_threads(threads)
    cfg = compose_config(preset, phase, steps + warmup, "unused", _overrides(batch_size, bf16))
    bundle, optimizer, scheduler = build_phase(cfg)
    batches = [{k: b[k] for k in (*MODEL_INPUTS, "labels") if k in b}
               for b in collect_batches(cfg, bundle, steps + warmup)]

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.ends = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    timer = StepTimes()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=1, max_steps=steps + warmup, logging_strategy="no",
            save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(), bf16=bf16,
            dataloader_num_workers=0, remove_unused_columns=False, max_grad_norm=cfg.trainer.clip or 0.0,
            disable_tqdm=True, seed=cfg.trainer.seed,
        )
        trainer = Trainer(model=bundle.model, args=args, train_dataset=batches, data_collator=lambda items: items[0],
                          optimizers=(optimizer, scheduler), callbacks=[timer])
        trainer.train()
    times = [b - a for a, b in zip(timer.ends, timer.ends[1:])]
    step = _median_after(times, warmup)
    return {"step_s": step, "compute_s": step}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "demo"])
    parser.add_argument("--phase", default="p1", choices=["p1", "p2", "p3"])
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 40 tiny, 8 demo)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast everywhere")
    parser.add_argument("--repeat", type=int, default=None, help="rounds of all contenders (default: 2 tiny, 1 demo)")
    parser.add_argument("--threads", type=int, default=1, help=CPU_THREADS_HELP)
    args = parser.parse_args(argv)
    steps = args.steps or (100 if args.preset == "tiny" else 8)
    args.repeat = args.repeat or (2 if args.preset == "tiny" else 1)
    common = dict(preset=args.preset, phase=args.phase, steps=steps, warmup=args.warmup, batch_size=args.batch_size,
                  bf16=args.bf16, threads=args.threads)

    print(machine_line())
    print(f"# {args.preset} preset, phase {args.phase}, batch {args.batch_size}, {steps} timed steps after "
          f"{args.warmup} warm-up, bf16={args.bf16}, {args.threads} thread(s), best of {args.repeat} round(s); "
          "synthetic shapes data")
    module = "benchmarks.trainer_overhead"
    contenders = {
        "bare torch loop (same loss maths)": ("run_bare", {**common, "loss": "ovis"}),
        "ovis-train": ("run_ovis_train", common),
        "bare torch loop (model's own loss)": ("run_bare", {**common, "loss": "hf"}),
        "transformers Trainer": ("run_hf_trainer", common),
    }
    # the contenders take turns, `repeat` rounds; each keeps its fastest round (the load from other
    # jobs on this shared machine only ever slows a round down)
    results = {}
    for _ in range(args.repeat):
        for name, (function, kwargs) in contenders.items():
            r = run_isolated(module, function, kwargs)
            if name not in results or r["compute_s"] < results[name]["compute_s"]:
                results[name] = r
    baseline = results["bare torch loop (same loss maths)"]["compute_s"]
    rows = []
    for name, r in results.items():
        rows.append({"loop": name, "step s (incl. data wait)": r["step_s"], "step s (excl. data wait)": r["compute_s"],
                     "data wait share": r.get("data_wait", 0.0), "samples/s": args.batch_size / r["compute_s"],
                     "vs bare": r["compute_s"] / baseline})
    print()
    print_table(rows, list(rows[0]))
    ovis = results["ovis-train"]
    print(f"ovis-train / bare loop (excl. data wait): {ovis['compute_s'] / baseline:.3f} (goal <= 1.05); "
          f"incl. data wait: {ovis['step_s'] / baseline:.3f}; data wait {ovis['data_wait']:.1%} of the step")
    print(machine_line())


if __name__ == "__main__":
    main()
