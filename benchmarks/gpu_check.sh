#!/usr/bin/env bash
# The prepared GPU check: one markdown table (<= 8 rows) of P1 / P2 tokens/s, model TFLOP/s, MFU and peak
# memory at the Ovis2-1B and Ovis2.5-2B shapes (random weights, bf16), plain and chunked VET path.
# About 5 minutes on one H100 / H200. Needs torch, transformers, PyYAML and Pillow only (no Hydra,
# OmegaConf, webdataset, DeepSpeed, wandb or gguf; no network).
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine, from any folder
#   bash benchmarks/gpu_check.sh --tiny     # the same rows at tiny shapes on CPU (a test runs this)
#
# Extra arguments go to `python -m benchmarks.gpu_mfu --check` (e.g. --batch-size 8, --peak-tflops 756).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
if [[ "${1:-}" == "--tiny" ]]; then
  shift
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  exec "$PYTHON" -m benchmarks.gpu_mfu --check --tiny --steps 1 --warmup 1 "$@"
fi
# rows run one process each; a row that has not finished in 100 s is reported as failed
"$PYTHON" -m benchmarks.gpu_mfu --check --row-timeout 100 "$@"
# sequence packing vs padding, real tokens/s on the issue's length mix (needs the project's environment;
# about a minute on one H100 / H200)
"$PYTHON" -m benchmarks.packing --preset demo --bf16 --samples 96 || echo "benchmarks.packing failed (see above)"
