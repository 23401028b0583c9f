"""GPU throughput of training steps at real model shapes with random weights: tokens/s, model TFLOP/s,
MFU (total and per component: ViT, visual head + VET, LLM, lm_head) and peak memory, in P1 and P2 (the
phases' own freeze rules from conf/phase/, AdamW, the trainer's loss maths in a bare loop). One process
per row. FLOPs come from the trainer's counter (ovis_train/train/flops.py, its docstring says what
counts); the peak is the device's dense bf16 figure (H100 / H200 SXM 989 TFLOP/s), on CPU the measured
rate of a large matmul.

    bash benchmarks/gpu_check.sh                   # the prepared check: one table of <= 8 rows, ~5 min
    bash benchmarks/gpu_check.sh --tiny            # the same rows at tiny shapes on CPU (CI)
    python -m benchmarks.gpu_mfu --preset ovis2_5_2b --phases p1 p2 --visual-chunk-size 1024

Imports torch, transformers, PyYAML, PIL and ovis_train.model / .train.freeze / .train.flops only: the
GPU image has no hydra, omegaconf, webdataset, deepspeed, wandb or gguf (each row reports any of them
it imported, and the check fails on it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import (
    REPO_ROOT,
    MiB,
    PeakMemory,
    bare_step,
    device,
    machine_line,
    peak_rss_mib,
    run_isolated,
    set_threads,
)

PROMPT = "<image>\nDescription:\n"
ABSENT_ON_GPU_IMAGE = ("hydra", "omegaconf", "webdataset", "deepspeed", "wandb", "gguf")
# The check's rows: (shape, phase, visual chunk size). Packing and LoRA rows join when they exist.
CHECK_ROWS = [
    ("ovis2_1b", "p1", None), ("ovis2_1b", "p2", None),
    ("ovis2_5_2b", "p1", None), ("ovis2_5_2b", "p2", None),
    ("ovis2_5_2b", "p1", 1024), ("ovis2_5_2b", "p2", 1024),
]


def measured_peak_tflops(dtype: torch.dtype) -> tuple[float, str]:
    """The device's dense bf16 peak (ovis_train.train.flops table); on CPU what a large matmul reaches."""
    from ovis_train.train.flops import peak_tflops

    if torch.cuda.is_available():
        peak = peak_tflops(device())
        if peak is None:
            raise SystemExit(f"unknown GPU {torch.cuda.get_device_name()}: pass --peak-tflops")
        return peak, f"{torch.cuda.get_device_name()}: dense bf16 spec"
    n = 1024
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start, reps = time.perf_counter(), 5
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12, f"CPU measured {dtype} matmul"


def synthetic_batch(bundle, batch_size: int, caption_tokens: int, dev) -> dict:
    """One image + prompt + caption per sample, random pixels; labels on the caption only."""
    from PIL import Image

    side = bundle.model.config.vision_config.image_size
    prompt = bundle.processor(text=PROMPT, images=[Image.new("RGB", (side, side))], return_tensors="pt")
    words = bundle.tokenizer(" a small red circle on the left of a large blue square", add_special_tokens=False)
    caption = (words["input_ids"] * caption_tokens)[:caption_tokens]
    ids = prompt["input_ids"][0].tolist() + caption
    input_ids = torch.tensor([ids] * batch_size)
    labels = input_ids.clone()
    labels[:, : len(ids) - len(caption)] = -100
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn((batch_size, *prompt["pixel_values"].shape[1:]), generator=gen)
    return {"input_ids": input_ids.to(dev), "attention_mask": torch.ones_like(input_ids).to(dev), "labels": labels.to(dev),
            "pixel_values": pixels.to(dev, bundle.model.dtype)}


def phase_recipe(phase: str) -> tuple[list, float]:
    """The phase's freeze rules and lr from conf/phase/<phase>.yaml, read without Hydra."""
    import yaml

    from ovis_train.train.freeze import FreezeRule

    recipe = yaml.safe_load((Path(REPO_ROOT) / "conf" / "phase" / f"{phase}.yaml").read_text())
    return [FreezeRule(**rule) for rule in recipe["phase"]["rules"]], recipe["trainer"]["lr"]


def build_for_phase(preset: str, phase: str, tiny: bool, visual_chunk_size: int | None, dev):
    """The preset's shapes with random weights (bf16 on GPU), built on ``dev``, the phase's mask applied."""
    from ovis_train.model import ModelConfig, build_model, model_components
    from ovis_train.train.freeze import resolve_freeze

    rules, lr = phase_recipe(phase)
    cfg = ModelConfig(preset=preset, pretrained=tiny, dtype="float32" if tiny else "bfloat16",
                      visual_chunk_size=visual_chunk_size)
    torch.manual_seed(0)
    with torch.device(dev):  # build the weights where they train
        bundle = build_model(cfg)
    plan = resolve_freeze(bundle.model, rules, model_components(bundle.model), lr, 0.0)
    plan.apply()
    bundle.model.train()
    optimizer = torch.optim.AdamW(plan.optimizer_groups())
    return bundle, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def run_phase(preset: str, phase: str, tiny: bool, steps: int, warmup: int, batch_size: int, caption_tokens: int,
              peak: float, visual_chunk_size: int | None, grad_checkpointing: bool) -> dict:
    from ovis_train.train.flops import FlopCounter, batch_shape

    dev = device()
    if tiny:
        set_threads(1)
    bundle, optimizer, scheduler = build_for_phase(preset, phase, tiny, visual_chunk_size, dev)
    model = bundle.model
    if grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = synthetic_batch(bundle, batch_size, caption_tokens, dev)
    flops = FlopCounter(model).count(batch_shape(batch))
    times = []
    with PeakMemory() as memory:
        for _ in range(steps + warmup):
            start = time.perf_counter()
            bare_step(model, batch, optimizer, scheduler, clip=1.0)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    step = statistics.median(times[warmup:])
    total = sum(flops.values())
    result = {
        "shape": preset, "phase": phase, "path": f"chunked VET {visual_chunk_size}" if visual_chunk_size else "plain",
        "batch": batch_size, "seq": batch["input_ids"].shape[1], "step_s": step,
        "tokens_per_s": batch["input_ids"].numel() / step, "images_per_s": batch_size / step,
        "tflops_per_s": total / step / 1e12, "mfu": total / step / 1e12 / peak, "peak_mib": memory.mib,
        "weights_mib": sum(p.numel() * p.element_size() for p in model.parameters()) / MiB,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "absent_on_gpu_image_but_imported": sorted({m.split(".")[0] for m in sys.modules} & set(ABSENT_ON_GPU_IMAGE)),
    }
    result.update({f"share_{k}": v / total for k, v in flops.items()})
    result.update({f"mfu_{k}": v / step / 1e12 / peak for k, v in flops.items()})
    if dev.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        result["peak_gib"] = peak_rss_mib() / 1024  # the whole process (CPU: no allocator peak)
    return result


COLUMNS = {  # table heading -> result key
    "shape": "shape", "phase": "phase", "VET path": "path", "batch": "batch", "seq": "seq", "step s": "step_s",
    "tokens/s": "tokens_per_s", "TFLOP/s": "tflops_per_s", "MFU": "mfu", "peak GiB": "peak_gib",
}
COMPONENT_COLUMNS = {"MFU ViT": "mfu_vit", "MFU head+VET": "mfu_head+vet", "MFU LLM": "mfu_llm",
                     "MFU lm_head": "mfu_lm_head", "trainable": "trainable"}


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="the prepared check's rows (gpu_check.sh)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on CPU (smoke test)")
    parser.add_argument("--preset", default="ovis2_5_2b", help="model shapes (not with --check)")
    parser.add_argument("--phases", nargs="+", default=["p1", "p2"])
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10 GPU, 2 tiny)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 3 GPU, 1 tiny)")
    parser.add_argument("--batch-size", type=int, default=None, help="images (= samples) per step (default 16 GPU, 2 tiny)")
    parser.add_argument("--caption-tokens", type=int, default=64)
    parser.add_argument("--peak-tflops", type=float, default=None, help="hardware peak for MFU (default: by device)")
    parser.add_argument("--visual-chunk-size", type=int, default=None, help="memory-efficient visual path (tokens per chunk)")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--row-timeout", type=float, default=600, help="seconds per row before it is reported as failed")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("no GPU here: run with --tiny for the CPU smoke test")
    if args.tiny:
        set_threads(1)  # as the row processes run
    if args.peak_tflops:
        peak, source = args.peak_tflops, "given"
    else:
        peak, source = measured_peak_tflops(torch.float32 if args.tiny else torch.bfloat16)
    settings = dict(tiny=args.tiny, steps=args.steps or (2 if args.tiny else 10),
                    warmup=args.warmup if args.warmup is not None else (1 if args.tiny else 3),
                    batch_size=args.batch_size or (2 if args.tiny else 16), caption_tokens=args.caption_tokens,
                    peak=peak, grad_checkpointing=args.grad_checkpointing)
    if args.check:  # at tiny shapes the rows collapse to tiny x phase x path
        rows = [("tiny" if args.tiny else shape, phase, (8 if args.tiny else chunk) if chunk else None)
                for shape, phase, chunk in CHECK_ROWS]
        rows = list(dict.fromkeys(rows))
    else:
        rows = [("tiny" if args.tiny else args.preset, phase, args.visual_chunk_size) for phase in args.phases]
    columns = {**COLUMNS, **({} if args.check else COMPONENT_COLUMNS)}

    print(machine_line())
    print(f"# random weights ({'fp32, CPU smoke run' if args.tiny else 'bf16'}), one image + 64-token caption per "
          f"sample, peak {peak:.3g} TFLOP/s ({source}); {settings}")
    print()
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|", flush=True)
    failed = []
    for shape, phase, chunk in rows:  # each row printed as it finishes: a time-boxed run keeps what it did
        try:
            r = run_isolated("benchmarks.gpu_mfu", "run_phase",
                             {**settings, "preset": shape, "phase": phase, "visual_chunk_size": chunk}, timeout=args.row_timeout)
        except Exception as e:  # out of memory, a timeout: the row says so and the others still run
            failed.append(f"{shape} {phase}: {str(e).strip().splitlines()[-1][:200]}")
            print(f"| {shape} | {phase} | {'chunked VET ' + str(chunk) if chunk else 'plain'} | failed: see below |", flush=True)
            continue
        if r["absent_on_gpu_image_but_imported"]:
            failed.append(f"{shape} {phase} imported {r['absent_on_gpu_image_but_imported']} (absent on the GPU image)")
        print("| " + " | ".join(_cell(r[key]) for key in columns.values()) + " |", flush=True)
    print()
    for line in failed:
        print(f"FAILED {line}")
    print(machine_line())
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
