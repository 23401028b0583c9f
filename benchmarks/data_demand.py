"""What one GPU consumes in P2, from the FLOP count (no GPU needed): samples/s = MFU x peak / FLOPs per
sample, at the preset's real shapes with random weights (P2's freeze rules from conf/phase/p2.yaml), one
caption sample of ``--caption-tokens`` with 1 crop and with a full multi-crop grid. Divide by a data
worker's images/s (``python -m benchmarks.data_pipeline``) for the workers a GPU needs.

    python -m benchmarks.data_demand                        # Ovis2-1B and Ovis2.5-2B, H100 SXM, MFU 0.45
    python -m benchmarks.data_demand --mfu 0.35 --peak-tflops 756 --per-worker 200

Builds each model on the CPU in bf16 (~3 and ~5 GB; 1-3 min each on a loaded 2-core machine).
"""

from __future__ import annotations

import argparse
import math

import torch

from benchmarks.gpu_mfu import phase_recipe, synthetic_batch


def per_sample_flops(preset: str, crops_list: list[int], caption_tokens: int) -> dict[int, float]:
    from ovis_train.model import ModelConfig, build_model, model_components
    from ovis_train.train.flops import FlopCounter, StepShape, batch_shape
    from ovis_train.train.freeze import resolve_freeze

    rules, lr = phase_recipe("p2")
    bundle = build_model(ModelConfig(preset=preset, pretrained=False, dtype="bfloat16"))
    resolve_freeze(bundle.model, rules, model_components(bundle.model), lr, 0.0).apply()
    counter = FlopCounter(bundle.model)
    one = batch_shape(synthetic_batch(bundle, 1, caption_tokens, torch.device("cpu")))
    out = {}
    for crops in crops_list:  # each extra crop adds its visual tokens and a separator to the sequence
        length = one.lengths[0] + (crops - 1) * (counter.visual_tokens + 1)
        out[crops] = sum(counter.count(StepShape(crops, (length,), one.logit_positions)).values())
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["ovis2_1b", "ovis2_5_2b"])
    parser.add_argument("--mfu", type=float, default=0.45, help="assumed model FLOPs utilisation")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--caption-tokens", type=int, default=32)
    parser.add_argument("--per-worker", type=float, default=None,
                        help="images/s one data worker delivers (data_pipeline's per CPU-s figure)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print("| preset | crops/image | TFLOP per sample (P2, fwd+bwd) | samples/s per GPU | crops/s per GPU |"
          + (" workers for data wait < 5% |" if args.per_worker else ""))
    print("|---|---|---|---|---|" + ("---|" if args.per_worker else ""))
    for preset in args.presets:
        from ovis_train.model import PRESETS

        max_crops = PRESETS[preset].defaults.get("max_crops", 1)
        crops_list = [1] + ([max_crops + 1] if max_crops > 1 else [])  # a grid comes with a thumbnail
        for crops, flops in per_sample_flops(preset, crops_list, args.caption_tokens).items():
            samples = args.mfu * args.peak_tflops * 1e12 / flops
            # capacity above demand leaves the loader's queue full: workers = demand / per-worker rate, rounded up
            workers = f" {math.ceil(samples / args.per_worker)} |" if args.per_worker else ""
            print(f"| {preset} | {crops} | {flops / 1e12:.2f} | {samples:.0f} | {samples * crops:.0f} |{workers}",
                  flush=True)


if __name__ == "__main__":
    main()
