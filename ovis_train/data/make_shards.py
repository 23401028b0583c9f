"""Write webdataset shards (+ manifest) from local data.

    python -m ovis_train.data.make_shards folder  IMAGES_DIR   --out data/shards/mine
    python -m ovis_train.data.make_shards table   captions.jsonl|csv --out data/shards/mine
    python -m ovis_train.data.make_shards hf      SAVED_DATASET_DIR --split train --out data/shards/mine
    python -m ovis_train.data.make_shards fashion-mnist|mnist-5k|digits

The real-dataset builders write ``train-*.tar`` and ``heldout-*.tar`` (use the latter as
``data.eval_urls``), by default where ``conf/data/<name>.yaml`` reads them and cut as its patterns
count (``offline_datasets.shards_dir`` / ``SAMPLES_PER_SHARD``). Every run prints the brace patterns
to put in ``data.sources[].urls``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .inputs import folder_samples, hf_samples, table_samples
from .offline_datasets import BUILDERS, SAMPLES_PER_SHARD, shards_dir
from .writer import write_shards


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m ovis_train.data.make_shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["folder", "table", "hf", *BUILDERS])
    parser.add_argument("input", nargs="?", help="folder / table file / saved dataset (not for the builders)")
    parser.add_argument("--out", help="output folder (keep generated shards out of git: data/shards/); "
                                      "builders: default where conf/data/<name>.yaml reads them")
    parser.add_argument("--samples-per-shard", type=int, default=None,
                        help="default: 1000; builders: as conf/data/<name>.yaml counts them")
    parser.add_argument("--prefix", default="shard", help="shard file prefix (folder/table/hf)")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--caption-column", default="caption")
    parser.add_argument("--split", default=None, help="split of a saved DatasetDict (hf)")
    parser.add_argument("--seed", type=int, default=0, help="sample order and held-out split (builders)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many samples per split (builders)")
    args = parser.parse_args(argv)
    if args.kind in ("folder", "table", "hf") and not args.input:
        parser.error(f"{args.kind} needs an input path")
    if args.kind in BUILDERS:
        args.out = args.out or shards_dir(args.kind)
        args.samples_per_shard = args.samples_per_shard or SAMPLES_PER_SHARD[args.kind]
    elif not args.out:
        parser.error(f"{args.kind} needs --out")
    args.samples_per_shard = args.samples_per_shard or 1000
    return args


def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.kind in BUILDERS:
        splits = BUILDERS[args.kind](seed=args.seed, limit=args.limit)
        jobs = [(samples, split, f"{args.kind} {split} (seed {args.seed})") for split, samples in splits.items()]
    else:
        columns = (args.image_column, args.caption_column)
        samples = {"folder": lambda: folder_samples(args.input),
                   "table": lambda: table_samples(args.input, *columns),
                   "hf": lambda: hf_samples(args.input, args.split, *columns)}[args.kind]()
        jobs = [(samples, args.prefix, f"{args.kind}:{os.path.abspath(args.input)}")]
    patterns = {}
    for samples, prefix, source in jobs:
        write_shards(samples, args.out, args.samples_per_shard, prefix=prefix, source=source)
        with open(os.path.join(args.out, f"{prefix}.manifest.json")) as f:
            manifest = json.load(f)
        patterns[prefix] = manifest["pattern"]
        print(f"{prefix}: {manifest['samples']} samples in {len(manifest['shards'])} shards -> {manifest['pattern']}")
    return patterns


if __name__ == "__main__":
    main()
