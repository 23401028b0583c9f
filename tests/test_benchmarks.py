"""The benchmarks run end to end at toy sizes and print their baseline and ratio (BENCHMARKS.md has the
real figures). Each benchmark starts subprocesses, so the slower ones are marked slow."""

import pytest

from benchmarks import data_pipeline, gpu_mfu, p1_vs_p2, trainer_overhead, vet_cost
from benchmarks.common import PeakMemory, run_isolated


def test_peak_memory_sees_a_large_allocation():
    result = run_isolated("tests.test_benchmarks", "allocate_and_measure", {"mib": 64})
    assert 60 <= result["peak_mib"] <= 120, result


def allocate_and_measure(mib: int) -> dict:
    import torch

    with PeakMemory() as peak:
        block = torch.ones(mib * 2**20 // 4)
        del block
    return {"peak_mib": peak.mib}


def test_gpu_mfu_tiny(capsys):
    gpu_mfu.main(["--tiny", "--steps", "1", "--warmup", "1"])
    out = capsys.readouterr().out
    assert "| p1 |" in out and "| p2 |" in out and "p1/p2: step time" in out


def test_vet_cost_small(capsys):
    vet_cost.main(["--ks", "2048", "--tokens", "96", "--feature-dim", "16", "--hidden", "16",
                   "--chunk-size", "32", "--reps", "1"])
    out = capsys.readouterr().out
    assert "| 2048 |" in out and "peak chunked/plain" in out


@pytest.mark.slow
def test_data_pipeline_small(capsys):
    data_pipeline.main(["--images", "64", "--batch-size", "8", "--workers", "0", "1"])
    out = capsys.readouterr().out
    assert "naive per-sample loop" in out and "ovis-train stream, 1 workers" in out


@pytest.mark.slow
def test_trainer_overhead_small(capsys):
    trainer_overhead.main(["--steps", "2", "--warmup", "1", "--batch-size", "2", "--repeat", "1"])
    out = capsys.readouterr().out
    assert "ovis-train / bare loop" in out and "transformers Trainer" in out


@pytest.mark.slow
def test_p1_vs_p2_small(capsys):
    p1_vs_p2.main(["--steps", "2", "--warmup", "1", "--batch-size", "2"])
    assert "P1/P2 step time" in capsys.readouterr().out


@pytest.mark.slow
def test_building_the_demo_preset_allocates_each_part_once():
    """Peak RSS of the demo build <= 1.3x its parameter bytes + what loading the GGUF LLM alone needs
    beyond its own parameters (a second random LLM, as the build once allocated, would not fit)."""
    from benchmarks.build_memory import measure

    row = measure("demo")
    assert row["model_param_mib"] > 400  # SmolLM2-135M + EfficientNet-Lite0 in fp32: the real parts were built
    assert row["build_peak_mib"] <= row["bound_mib"], row
