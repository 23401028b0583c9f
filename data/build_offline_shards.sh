#!/usr/bin/env bash
# Build webdataset shards of the real datasets that ship offline on this machine, where the data configs
# read them: ${OVIS_DATA_DIR:-data/shards}/<name> (git-ignored; a relative OVIS_DATA_DIR is relative to the
# repository). Each gets train-*.tar (data.sources[].urls) and heldout-*.tar (data.eval_urls), cut as
# conf/data/<name>.yaml counts them (ovis_train/data/offline_datasets.py defines both).
#   bash data/build_offline_shards.sh [fashion-mnist] [mnist-5k] [digits]   (default: all three)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py="${OVIS_VENV:-$here/.venv}/bin/python"
names=("$@"); [[ ${#names[@]} -gt 0 ]] || names=(fashion-mnist mnist-5k digits)
cd "$here"
for name in "${names[@]}"; do
  "$py" -m ovis_train.data.make_shards "$name"
done
