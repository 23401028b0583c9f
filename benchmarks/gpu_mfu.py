"""GPU throughput: an Ovis2.5-2B-shaped model with random weights (Qwen3-1.7B-shaped LLM, SigLIP2-so400m
ViT at 512 px, K = 65536, bf16 weights) trained for a few steps in P1 and in P2 (the trainer's freeze
rules and optimizer, the trainer's loss maths): tokens/s, images/s, MFU with model FLOPs counted for
the ViT, the visual head + VET and the LLM separately, and peak memory. One process per phase.
Finishes in a few minutes on one H100/H200 (8-minute budget); `--tiny` runs tiny shapes on CPU (CI).

    python -m benchmarks.gpu_mfu                    # on a GPU machine
    python -m benchmarks.gpu_mfu --tiny             # CPU smoke run, ~1 min

Model FLOPs (forward: 2 x weights x tokens, plus 4 x seq x width per token and layer for attention;
backward: 1x forward for input gradients where anything upstream trains, 1x for weight gradients
where the weights train). Hardware peak: bf16 dense (H100/H200 SXM 989 TFLOPS, H100 PCIe 756); on
CPU the measured rate of a large matmul stands in.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from benchmarks.common import (
    MiB,
    PeakMemory,
    bare_step,
    build_phase,
    compose_config,
    device,
    machine_line,
    peak_rss_mib,
    print_table,
    run_isolated,
    set_threads,
)

PROMPT = "<image>\nDescription:\n"


def peak_tflops(dtype: torch.dtype) -> tuple[float, str]:
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        if "H100" in name and "PCIe" in name:
            return 756.0, f"{name}: bf16 dense spec"
        if "H100" in name or "H200" in name:
            return 989.0, f"{name}: bf16 dense spec"
        raise SystemExit(f"unknown GPU {name}: pass --peak-tflops")
    n = 1024  # CPU: what a large matmul reaches here, as the 100% mark
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


def _trainable(module: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def model_flops(model, batch: dict) -> dict[str, float]:
    """Model FLOPs of one training step, per component (see the module docstring)."""
    cfg, vision = model.config, model.config.vision_config
    text = cfg.text_config
    tower = model.model.vision_tower
    n_images, seq = batch["pixel_values"].shape[0], batch["input_ids"].shape[1]
    n_visual = int((batch["input_ids"] == cfg.image_token_id).sum())
    flops = {}

    # ViT blocks: a block runs backward if it, or a block before it, trains
    blocks = tower.transformer.blocks() if hasattr(tower.transformer, "blocks") else list(tower.transformer.encoder.layers)
    patches = n_visual * vision.hidden_stride**2  # ViT tokens (before the hidden-stride merge)
    vit, upstream_trains = 0.0, False
    for block in blocks:
        weights = sum(p.numel() for p in block.parameters() if p.dim() > 1)
        width = next(p for p in block.parameters() if p.dim() > 1).shape[-1]
        forward = 2 * patches * weights + 4 * patches * (patches // n_images) * width
        trains = _trainable(block)
        vit += forward * (1 + (upstream_trains and 1) + (trains and 1)) if (trains or upstream_trains) else forward
        upstream_trains = upstream_trains or trains
    flops["vit"] = vit

    # visual head + VET (always trained in P1/P2): input gradients when the ViT trains
    head_in, vocab, hidden = tower.head_linear.in_features, vision.vocab_size, cfg.hidden_size
    forward = 2 * n_visual * head_in * (vocab - vision.num_visual_indicator_tokens) + 2 * n_visual * vocab * hidden
    flops["head+vet"] = forward * (2 + (upstream_trains and 1))

    # LLM: every layer runs backward (the visual tokens sit at its input); weight grads only if it trains
    tokens = batch["input_ids"].numel()
    layers = model.model.language_model.layers
    llm_trains = _trainable(layers)
    weights = sum(p.numel() for p in layers.parameters() if p.dim() > 1)
    attention_width = text.num_attention_heads * getattr(text, "head_dim", text.hidden_size // text.num_attention_heads)
    matmuls, attention = 2 * tokens * weights, 4 * tokens * seq * attention_width * text.num_hidden_layers
    flops["llm"] = matmuls * (2 + llm_trains) + attention * 3
    # lm_head on the positions that carry loss only (the trainer's logits_to_keep)
    kept = int((batch["labels"][:, 1:] != -100).any(0).sum()) * n_images
    forward = 2 * kept * cfg.hidden_size * text.vocab_size
    flops["lm_head"] = forward * (2 + _trainable(model.lm_head))
    return flops


def run_phase(phase: str, tiny: bool, steps: int, warmup: int, batch_size: int, caption_tokens: int,
              peak: float, visual_chunk_size: int | None, grad_checkpointing: bool) -> dict:
    dev = device()
    if tiny:
        set_threads(1)
    overrides = [] if tiny else ["model.pretrained=false", "model.dtype=bfloat16"]
    if visual_chunk_size:
        overrides.append(f"model.visual_chunk_size={visual_chunk_size}")
    cfg = compose_config("tiny" if tiny else "ovis2_5_2b", phase, steps + warmup, "unused", overrides)
    with torch.device(dev):  # build the weights where they train
        bundle, optimizer, scheduler = build_phase(cfg)
    model = bundle.model
    if grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = synthetic_batch(bundle, batch_size, caption_tokens, dev)
    flops = model_flops(model, batch)
    times = []
    with PeakMemory() as memory:
        for _ in range(steps + warmup):
            start = time.perf_counter()
            bare_step(model, batch, optimizer, scheduler, cfg.trainer.clip)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    step = statistics.median(times[warmup:])
    total = sum(flops.values())
    result = {
        "phase": phase, "step_s": step, "tokens_per_s": batch["input_ids"].numel() / step,
        "images_per_s": batch_size / step, "tflops_per_s": total / step / 1e12, "mfu": total / step / 1e12 / peak,
        "peak_mib": memory.mib, "weights_mib": sum(p.numel() * p.element_size() for p in model.parameters()) / MiB,
        "seq": batch["input_ids"].shape[1], "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    result.update({f"share_{k}": v / total for k, v in flops.items()})
    result.update({f"mfu_{k}": v / step / 1e12 / peak for k, v in flops.items()})
    if dev.type == "cuda":
        result["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated() / MiB
    else:
        result["process_peak_rss_mib"] = peak_rss_mib()
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on CPU (smoke test)")
    parser.add_argument("--phases", nargs="+", default=["p1", "p2"])
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10 GPU, 2 tiny)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 3 GPU, 1 tiny)")
    parser.add_argument("--batch-size", type=int, default=None, help="images (= samples) per step (default 8 GPU, 2 tiny)")
    parser.add_argument("--caption-tokens", type=int, default=64)
    parser.add_argument("--peak-tflops", type=float, default=None, help="hardware peak for MFU (default: by device)")
    parser.add_argument("--visual-chunk-size", type=int, default=None, help="memory-efficient visual path (tokens per chunk)")
    parser.add_argument("--grad-checkpointing", action="store_true")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("no GPU here: run with --tiny for the CPU smoke test")
    if args.tiny:
        set_threads(1)  # as the phase processes run
    if args.peak_tflops:
        peak, source = args.peak_tflops, "given"
    else:
        peak, source = peak_tflops(torch.float32 if args.tiny else torch.bfloat16)
    settings = dict(tiny=args.tiny, steps=args.steps or (2 if args.tiny else 10),
                    warmup=args.warmup if args.warmup is not None else (1 if args.tiny else 3),
                    batch_size=args.batch_size or (2 if args.tiny else 8), caption_tokens=args.caption_tokens,
                    peak=peak, visual_chunk_size=args.visual_chunk_size, grad_checkpointing=args.grad_checkpointing)

    print(machine_line())
    print(f"# {'tiny preset (CPU smoke)' if args.tiny else 'ovis2_5_2b shapes, random bf16 weights'}; peak {peak:.3g} "
          f"TFLOPS ({source}); {settings}")
    rows = [run_isolated("benchmarks.gpu_mfu", "run_phase", {**settings, "phase": phase}, timeout=600)
            for phase in args.phases]
    print()
    columns = ["phase", "trainable", "seq", "step_s", "tokens_per_s", "images_per_s", "tflops_per_s", "mfu",
               "mfu_vit", "mfu_head+vet", "mfu_llm", "mfu_lm_head", "share_vit", "share_head+vet", "share_llm",
               "peak_mib", "weights_mib", "max_memory_allocated_mib", "process_peak_rss_mib"]
    print_table(rows, columns)
    if len(rows) == 2 and math.isfinite(rows[1]["step_s"]):
        a, b = rows
        print(f"{a['phase']}/{b['phase']}: step time {a['step_s'] / b['step_s']:.2f}, peak memory {a['peak_mib'] / b['peak_mib']:.2f}")
    print(machine_line())


if __name__ == "__main__":
    main()
