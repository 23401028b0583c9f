#!/usr/bin/env bash
# Build webdataset shards of the real datasets that ship offline on this machine, into data/shards/
# (git-ignored). Each gets train-*.tar (data.sources[].urls) and heldout-*.tar (data.eval_urls).
#   bash data/build_offline_shards.sh [fashion-mnist] [mnist-5k] [digits]   (default: all three)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py="${OVIS_VENV:-$here/.venv}/bin/python"
names=("$@"); [[ ${#names[@]} -gt 0 ]] || names=(fashion-mnist mnist-5k digits)
for name in "${names[@]}"; do
  case "$name" in
    fashion-mnist) per_shard=1000 ;;  # 60 train shards (enough for up to 60 ranks x workers), 10 held-out
    *) per_shard=250 ;;
  esac
  out="$here/data/shards/${name//-/_}"
  rm -rf "$out"
  "$py" -m ovis_train.data.make_shards "$name" --out "$out" --samples-per-shard "$per_shard"
done
