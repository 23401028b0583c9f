"""The benchmarks run end to end at toy sizes and print their baseline and ratio (BENCHMARKS.md has the
real figures). Each benchmark starts subprocesses, so the slower ones are marked slow."""

import os
import re
import subprocess
import sys

import pytest

from benchmarks import data_pipeline, gpu_mfu, p1_vs_p2, packing, trainer_overhead, vet_cost
from benchmarks.common import REPO_ROOT, PeakMemory, run_isolated


def test_peak_memory_sees_a_large_allocation():
    result = run_isolated("tests.test_benchmarks", "allocate_and_measure", {"mib": 64})
    assert 60 <= result["peak_mib"] <= 120, result


def allocate_and_measure(mib: int) -> dict:
    import torch

    with PeakMemory() as peak:
        block = torch.ones(mib * 2**20 // 4)
        del block
    return {"peak_mib": peak.mib}


@pytest.mark.slow
def test_gpu_check_tiny_prints_one_table_with_tflops_on_cpu():
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--tiny"], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| shape"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| tiny")]
    assert [(r[1], r[2]) for r in rows] == [("p1", "plain"), ("p2", "plain"), ("p1", "chunked VET 8"),
                                            ("p2", "chunked VET 8")]
    for row in rows:
        assert float(row[columns.index("TFLOP/s")]) > 0 and 0 < float(row[columns.index("MFU")])


def test_gpu_mfu_row_reports_modules_the_gpu_image_lacks():
    import hydra  # noqa: F401  (the training stack imports it; the GPU check must not)

    r = gpu_mfu.run_phase(preset="tiny", phase="p1", tiny=True, steps=1, warmup=0, batch_size=1, caption_tokens=4,
                          peak=1.0, visual_chunk_size=None, grad_checkpointing=False)
    assert "hydra" in r["absent_on_gpu_image_but_imported"]
    assert r["tflops_per_s"] > 0 and abs(sum(r[f"share_{k}"] for k in ("vit", "head+vet", "llm", "lm_head")) - 1) < 1e-9


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
    out = capsys.readouterr().out
    assert "P1/P2 step time" in out and "LoRA/P2 step time" in out


@pytest.mark.slow
def test_trainer_e2e_small(capsys):
    from benchmarks import trainer_e2e

    trainer_e2e.main(["--steps", "2", "--warmup", "1", "--batch-size", "4", "--workers", "1"])
    out = capsys.readouterr().out
    assert "| ovis-train (its stream) |" in out and "| transformers Trainer (map-style dataset" in out
    assert "end to end: ovis-train" in out and "attention sdpa, weights float32" in out


@pytest.mark.slow
def test_trainer_e2e_variable_length_packs_for_ovis_train_only(capsys):
    from benchmarks import trainer_e2e

    trainer_e2e.main(["--variable-length", "--steps", "2", "--warmup", "1", "--batch-size", "2", "--workers", "1"])
    out = capsys.readouterr().out
    assert "variable-length caption shards" in out and "loop only" not in out
    per_row = float(re.search(r"; ([0-9.]+) samples per packed row", out).group(1))
    assert per_row > 1.5  # ovis-train's rows really hold several of the mixed-length samples


@pytest.mark.slow
def test_building_the_demo_preset_allocates_each_part_once():
    """Peak RSS of the demo build <= 1.3x its parameter bytes + what loading the GGUF LLM alone needs
    beyond its own parameters (a second random LLM, as the build once allocated, would not fit)."""
    from benchmarks.build_memory import measure

    row = measure("demo")
    assert row["model_param_mib"] > 400  # SmolLM2-135M + EfficientNet-Lite0 in fp32: the real parts were built
    assert row["build_peak_mib"] <= row["bound_mib"], row


@pytest.mark.slow
def test_packing_small(capsys):
    packing.main(["--samples", "12", "--max-length", "512", "--repeat", "1"])
    out = capsys.readouterr().out
    assert "| packed |" in out and "| padded |" in out and "packed / padded" in out
