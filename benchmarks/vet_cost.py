"""VET cost vs K: time and peak memory of the visual path (head Linear + fp32 LayerNorm, fp32 softmax,
indicator padding, probs @ VET), forward + backward, plain vs chunked (recomputed in backward),
side by side. Every (K, path) runs in its own process so that its peak memory is its own.

    python -m benchmarks.vet_cost                                  # CPU defaults, ~1-2 min on 2 cores
    python -m benchmarks.vet_cost --tokens 4096 --feature-dim 4608 --hidden 2048 --dtype bfloat16  # Ovis2.5-2B shapes (GPU)
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from benchmarks.common import CPU_THREADS_HELP, MiB, PeakMemory, machine_line, median_seconds, print_table, run_isolated, set_threads
from ovis_train.model.chunked_visual import visual_embeddings
from ovis_train.model.modeling import Float32LayerNorm

N_INDICATORS = 4  # Ovis2.5
DEFAULT_KS = [1024, 4096, 16384, 65536, 131072]


def one_config(k: int, tokens: int, feature_dim: int, hidden: int, dtype: str, chunk_size: int | None,
               reps: int, threads: int | None) -> dict:
    """Forward + backward of the visual path for one K; runs in a fresh process (run_isolated)."""
    set_threads(threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dt = getattr(torch, dtype)
    torch.manual_seed(0)
    head = nn.Linear(feature_dim, k - N_INDICATORS, bias=False, device=dev, dtype=dt)
    norm = Float32LayerNorm(k - N_INDICATORS, device=dev, dtype=dt)
    table = nn.Parameter(torch.randn(k, hidden, device=dev, dtype=dt) * 0.02)
    params = [head.weight, norm.weight, norm.bias, table]
    # ViT features that require grad, as when the last ViT block is trainable (P1)
    features = torch.randn(tokens, feature_dim, device=dev, dtype=dt, requires_grad=True)
    upstream = torch.randn(tokens, hidden, device=dev, dtype=dt)

    def step():
        for p in (*params, features):
            p.grad = None  # every step allocates its gradients, as after zero_grad(set_to_none=True)
        out = visual_embeddings(features, head, norm, table, N_INDICATORS, chunk_size)
        out.backward(upstream)

    with PeakMemory() as peak:  # the first step: its peak includes the gradients it allocates
        step()
    seconds = median_seconds(step, warmup=0, reps=reps)
    param_mib = sum(p.numel() * p.element_size() for p in params) / MiB
    return {"seconds": seconds, "peak_mib": peak.mib, "param_mib": param_mib}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", type=int, nargs="+", default=DEFAULT_KS, help="visual vocabulary sizes K")
    parser.add_argument("--tokens", type=int, default=1024, help="visual tokens in the batch (Ovis2.5: 256 per 512 px image)")
    parser.add_argument("--feature-dim", type=int, default=128, help="merged ViT feature size (Ovis2.5: 1152 x 2 x 2 = 4608)")
    parser.add_argument("--hidden", type=int, default=128, help="LLM hidden size = VET width (Qwen3-1.7B: 2048)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--chunk-size", type=int, default=128, help="tokens per chunk of the memory-efficient path")
    parser.add_argument("--reps", type=int, default=1, help="timed steps after the first (measured) one")
    parser.add_argument("--threads", type=int, default=1, help=CPU_THREADS_HELP)
    args = parser.parse_args(argv)

    print(machine_line())
    print(f"# visual path fwd+bwd: tokens={args.tokens} feature_dim={args.feature_dim} hidden={args.hidden} "
          f"dtype={args.dtype} chunk={args.chunk_size} threads={args.threads}; peak = memory added by one step (grads included)")
    rows = []
    for k in args.ks:
        common = dict(k=k, tokens=args.tokens, feature_dim=args.feature_dim, hidden=args.hidden, dtype=args.dtype,
                      reps=args.reps, threads=args.threads)
        plain = run_isolated("benchmarks.vet_cost", "one_config", {**common, "chunk_size": None})
        chunked = run_isolated("benchmarks.vet_cost", "one_config", {**common, "chunk_size": args.chunk_size})
        probs_mib = args.tokens * k * 4 / MiB  # one [tokens, K] fp32 tensor
        rows.append({
            "K": k, "head+VET params MiB": plain["param_mib"], "[tokens,K] fp32 MiB": probs_mib,
            "plain s": plain["seconds"], "plain peak MiB": plain["peak_mib"],
            "chunked s": chunked["seconds"], "chunked peak MiB": chunked["peak_mib"],
            "time chunked/plain": chunked["seconds"] / plain["seconds"],
            "peak chunked/plain": chunked["peak_mib"] / plain["peak_mib"],
            "load": machine_line().rsplit("load avg ", 1)[1].split()[0],
        })
        print(f"K={k}: plain {plain['seconds']:.3f}s {plain['peak_mib']:.0f} MiB | "
              f"chunked {chunked['seconds']:.3f}s {chunked['peak_mib']:.0f} MiB", flush=True)
    print()
    print_table(rows, list(rows[0]))
    print(machine_line())


if __name__ == "__main__":
    main()
