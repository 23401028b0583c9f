#!/usr/bin/env bash
# The VET study (README.md): P1 for six arms x three seeds, then a short P2 for arms (a) K=1024 and (d),
# each member a resumable run. Run it again after an interruption: finished members are skipped, an
# unfinished one continues from its last checkpoint, and the summaries are rebuilt from what finished.
#   bash recipes/vet_study/run.sh [hydra overrides for every member]
# Environment: OUT (runs/vet_study), SEEDS (0,1,2), ARMS (all six), P2_ARMS (text_k1024,mlp),
#              PYTHON (.venv/bin/python)
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
py="${PYTHON:-$root/.venv/bin/python}"
out="${OUT:-runs/vet_study}" seeds="${SEEDS:-0,1,2}"
arms="${ARMS:-text_k256,text_k1024,text_k4096,normal_k1024,gelu_k1024,mlp}" p2_arms="${P2_ARMS:-text_k1024,mlp}"
export WANDB_MODE="${WANDB_MODE:-offline}"
export VET_STUDY_P1="$root/$out/p1"  # where P2 members find their P1 exports (conf/from_p1/)
[[ "$out" = /* ]] && VET_STUDY_P1="$out/p1"

if [[ " $* " != *" data="* && ! -f "${OVIS_DATA_DIR:-data/shards}/fashion_mnist/heldout.manifest.json" ]]; then
  bash data/build_offline_shards.sh fashion-mnist
fi

# choice(...) makes arm and seed swept keys even with one value: member names stay arm=...,trainer.seed=...
sweep=("$py" -m ovis_train.sweep.launch --resume --config-dir recipes/vet_study/conf)
status=0
"${sweep[@]}" --config-name vet_study "arm=choice($arms)" "trainer.seed=choice($seeds)" "$@" "run_dir=$out/p1" || status=1
"${sweep[@]}" --config-name vet_study_p2 "from_p1=choice($p2_arms)" "trainer.seed=choice($seeds)" "$@" "run_dir=$out/p2" || status=1

echo "P1: $out/p1/summary.md (mean ± std over seeds per arm; summary_seeds.csv)"
echo "P2: $out/p2/summary.md"
exit $status
