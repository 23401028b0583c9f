"""Peak memory of building a model: every part is allocated once (the Ovis2 skeleton is built on the
meta device; the pretrained LLM and vision backbone take their places; only the rest is allocated).

    python -m benchmarks.build_memory [--preset demo]

Bound (checked by tests/test_benchmarks.py for the demo preset): the build's peak RSS is at most 1.3x
the built model's parameter bytes plus what reading the LLM file itself needs, i.e. the peak of
loading the LLM alone (GGUF dequantisation, tokenizer, embedding resize) minus the LLM's parameter
bytes. Each measurement runs in its own process (peak RSS as in BENCHMARKS.md).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import MiB, PeakMemory, machine_line, print_table, run_isolated

BOUND_FACTOR = 1.3


def parameter_mib(module: torch.nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / MiB  # tied tensors once


def build(preset: str) -> dict:
    """Peak RSS of build_model (fresh process)."""
    from ovis_train.model import ModelConfig, build_model

    with PeakMemory() as memory:
        bundle = build_model(ModelConfig(preset=preset))
    return {"peak_mib": memory.mib, "param_mib": parameter_mib(bundle.model)}


def llm_alone(preset: str) -> dict:
    """Peak RSS of loading the preset's LLM alone, as build_model loads it (fresh process)."""
    from ovis_train.model import ModelConfig
    from ovis_train.model.language import load_language_model
    from ovis_train.model.presets import get_preset, resolve_config

    cfg = resolve_config(ModelConfig(preset=preset))
    with PeakMemory() as memory:
        lm, _, _ = load_language_model(cfg, get_preset(preset), getattr(torch, cfg.dtype))
    param_mib = parameter_mib(lm) if lm is not None else 0.0
    return {"peak_mib": memory.mib, "param_mib": param_mib}


def measure(preset: str = "demo") -> dict:
    built = run_isolated("benchmarks.build_memory", "build", {"preset": preset})
    alone = run_isolated("benchmarks.build_memory", "llm_alone", {"preset": preset})
    reading = max(0.0, alone["peak_mib"] - alone["param_mib"])
    bound = BOUND_FACTOR * built["param_mib"] + reading
    return {"preset": preset, "build_peak_mib": built["peak_mib"], "model_param_mib": built["param_mib"],
            "llm_alone_peak_mib": alone["peak_mib"], "llm_reading_mib": reading, "bound_mib": bound,
            "peak_over_params": built["peak_mib"] / built["param_mib"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    args = parser.parse_args(argv)
    print(machine_line())
    row = measure(args.preset)
    print_table([row], list(row))


if __name__ == "__main__":
    main()
