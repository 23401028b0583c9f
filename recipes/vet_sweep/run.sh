#!/usr/bin/env bash
# VET-size sweep + VET-vs-MLP ablation + VET analysis: P1 of the offline demo model (SmolLM2-135M +
# EfficientNet-Lite0) on Fashion-MNIST. Settings: conf/vet_sweep.yaml; see README.md.
#   bash recipes/vet_sweep/run.sh [hydra overrides for every member]     e.g. trainer.max_steps=300
# Environment: OUT (runs/vet_sweep), KS (256,1024,4096), PYTHON (.venv/bin/python)
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
py="${PYTHON:-$root/.venv/bin/python}"
out="${OUT:-runs/vet_sweep}" ks="${KS:-256,1024,4096}"
export WANDB_MODE="${WANDB_MODE:-offline}"

[[ -f "${OVIS_DATA_DIR:-data/shards}/fashion_mnist/heldout.manifest.json" ]] || bash data/build_offline_shards.sh fashion-mnist

# Every member: the recipe config (same data, steps and seed) plus what the sweep varies.
recipe=(--config-dir recipes/vet_sweep/conf --config-name vet_sweep)
status=0

# 1. K sweep: one run directory per K under $out/k, summary in $out/k/summary.md
"$py" -m ovis_train "${recipe[@]}" -m "model.visual_vocab_size=$ks" "$@" "run_dir=$out/k" || status=1

# 2. Connector ablation at the demo's K (1024): VET vs a 2-layer MLP projector
"$py" -m ovis_train "${recipe[@]}" -m model.connector=vet,mlp "$@" "run_dir=$out/connector" || status=1

# 3. What the VET learned: the vet member of the ablation, on 256 held-out images
vet_member=$(find "$out/connector" -maxdepth 1 -type d -name '*model.connector=vet*' | head -n 1)
if [[ -n "$vet_member" ]]; then
  "$py" -m ovis_train.analyze "$vet_member" data=fashion_mnist --max-images 256 --out "$out/analysis" || status=1
fi

echo "K sweep:    $out/k/summary.md"
echo "ablation:   $out/connector/summary.md"
echo "analysis:   $out/analysis/report.md"
exit $status
