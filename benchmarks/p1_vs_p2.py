"""P1 (frozen LLM) vs P2 (everything trains) vs P2 with LoRA on the LLM (p2_lora) on the same model and
batches: step time, peak memory (RSS above the built model on CPU, max_memory_allocated on GPU) and
optimizer state size. Each phase runs in its own process.
The phases' freeze rules and optimizer come from the trainer's own conf/phase/*.yaml; the step is
the trainer's maths in a bare loop (benchmarks/trainer_overhead.py measures the loop's overhead).

    python -m benchmarks.p1_vs_p2                   # tiny preset
    python -m benchmarks.p1_vs_p2 --preset demo     # SmolLM2-135M + EfficientNet-Lite0 (goal: P1 <= 0.7x time, <= 0.6x memory)
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.common import (
    CPU_THREADS_HELP,
    MiB,
    PeakMemory,
    bare_step,
    build_phase,
    collect_batches,
    compose_config,
    device,
    machine_line,
    peak_rss_mib,
    print_table,
    run_isolated,
    set_threads,
)


def run_phase(preset: str, phase: str, steps: int, warmup: int, batch_size: int, bf16: bool, threads: int) -> dict:
    set_threads(threads)
    cfg = compose_config(preset, phase, steps + warmup, "unused", [f"data.batch_size={batch_size}"])
    bundle, optimizer, scheduler = build_phase(cfg)
    dev = device()
    model = bundle.model.to(dev)
    batches = [{k: v.to(dev) if hasattr(v, "to") else v for k, v in b.items()}
               for b in collect_batches(cfg, bundle, steps + warmup)]
    trainable = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    times = []
    with PeakMemory() as peak:  # optimizer state, gradients and activations; the weights were there before
        for batch in batches:
            start = time.perf_counter()
            bare_step(model, batch, optimizer, scheduler, cfg.trainer.clip, autocast=bf16)
            times.append(time.perf_counter() - start)
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / MiB
    optimizer_state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                          if hasattr(t, "numel")) / MiB
    return {"step_s": statistics.median(times[warmup:]), "peak_mib": peak.mib, "process_peak_rss_mib": peak_rss_mib(),
            "weights_mib": weights, "optimizer_mib": optimizer_state, "trainable": trainable,
            "total": sum(p.numel() for p in model.parameters())}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "demo"])
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 30 tiny, 6 demo)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--threads", type=int, default=1, help=CPU_THREADS_HELP)
    args = parser.parse_args(argv)
    steps = args.steps or (30 if args.preset == "tiny" else 6)
    common = dict(preset=args.preset, steps=steps, warmup=args.warmup, batch_size=args.batch_size, bf16=args.bf16,
                  threads=args.threads)

    print(machine_line())
    print(f"# {args.preset} preset, batch {args.batch_size}, {steps} timed steps after {args.warmup} warm-up, "
          f"bf16={args.bf16}; peak = memory added by training over the built model")
    results = {phase: run_isolated("benchmarks.p1_vs_p2", "run_phase", {**common, "phase": phase})
               for phase in ("p2", "p2_lora", "p1")}
    rows = [{"phase": phase, "trainable params": r["trainable"], "of total": r["trainable"] / r["total"],
             "step s": r["step_s"], "peak MiB (training)": r["peak_mib"], "optimizer state MiB": r["optimizer_mib"],
             "weights MiB": r["weights_mib"],
             "process peak RSS MiB": r["process_peak_rss_mib"]} for phase, r in results.items()]
    print()
    print_table(rows, list(rows[0]))
    p1, p2, lora = results["p1"], results["p2"], results["p2_lora"]
    print(f"P1/P2 step time: {p1['step_s'] / p2['step_s']:.2f} (goal <= 0.7); "
          f"P1/P2 training memory: {p1['peak_mib'] / p2['peak_mib']:.2f} (goal <= 0.6); "
          f"P1/P2 process peak: {p1['process_peak_rss_mib'] / p2['process_peak_rss_mib']:.2f}")
    print(f"LoRA/P2 step time: {lora['step_s'] / p2['step_s']:.2f}; training memory: "
          f"{lora['peak_mib'] / p2['peak_mib']:.2f}; optimizer state: {lora['optimizer_mib'] / p2['optimizer_mib']:.3f}")
    print(machine_line())


if __name__ == "__main__":
    main()
