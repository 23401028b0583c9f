"""Write webdataset shards (+ manifest) from local data.

    python -m ovis_train.data.make_shards ovis     META.json        --out data/shards/mine --heldout 200
    python -m ovis_train.data.make_shards messages DATA.json        --out data/shards/mine --heldout 0.05
    python -m ovis_train.data.make_shards folder   IMAGES_DIR       --out data/shards/mine
    python -m ovis_train.data.make_shards table    captions.jsonl|csv --out data/shards/mine
    python -m ovis_train.data.make_shards hf       SAVED_DATASET_DIR --split train --out data/shards/mine
    python -m ovis_train.data.make_shards fashion-mnist|mnist-5k|digits
    python -m ovis_train.data.make_shards fashion-mnist-chat|mnist-5k-chat   (the demo's P3 conversations)

Formats and the written layout: see ``inputs.py``. With ``--heldout N`` (a count, or a fraction below 1)
the samples are split (seeded, ``--seed``) into ``<prefix>-*.tar`` and ``heldout-*.tar`` (use the latter
as ``data.eval_urls``); samples sharing an image file stay on one side. The real-dataset builders always
write ``train-*.tar`` and ``heldout-*.tar`` (``--heldout`` sets the held-out size), by default where
``conf/data/<name>.yaml`` reads them and cut as its patterns count (``offline_datasets.shards_dir`` /
``SAMPLES_PER_SHARD``). Samples whose images are missing or unreadable are skipped and counted. Every
run prints the brace patterns to put in ``data.sources[].urls``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .inputs import (Skipped, folder_records, hf_records, marker_mismatches, materialise, messages_records,
                     ovis_records, parse_heldout, split_heldout, table_records)
from .instructions import BUILDERS as INSTRUCTION_BUILDERS
from .instructions import SAMPLES_PER_SHARD as INSTRUCTION_SHARDS
from .offline_datasets import BUILDERS as DATASET_BUILDERS
from .offline_datasets import SAMPLES_PER_SHARD as DATASET_SHARDS
from .offline_datasets import shards_dir
from .writer import write_shards

FORMATS = ("ovis", "messages", "folder", "table", "hf")
BUILDERS = {**DATASET_BUILDERS, **INSTRUCTION_BUILDERS}
SAMPLES_PER_SHARD = {**DATASET_SHARDS, **INSTRUCTION_SHARDS}
HELDOUT_PREFIX = "heldout"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m ovis_train.data.make_shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=[*FORMATS, *BUILDERS])
    parser.add_argument("input", nargs="?", help="JSON file / folder / table file / saved dataset (not for the builders)")
    parser.add_argument("--out", help="output folder (keep generated shards out of git: data/shards/); "
                                      "builders: default where conf/data/<name>.yaml reads them")
    parser.add_argument("--samples-per-shard", type=int, default=None,
                        help="default: 1000; builders: as conf/data/<name>.yaml counts them")
    parser.add_argument("--prefix", default="shard", help="shard file prefix of the (train) split (not for the builders)")
    parser.add_argument("--heldout", default=None, help="held-out samples: a count (500) or a fraction (0.05)")
    parser.add_argument("--image-root", default=None, help="folder image paths are relative to (default: the input file's)")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--caption-column", default="caption")
    parser.add_argument("--split", default=None, help="split of a saved DatasetDict (hf)")
    parser.add_argument("--seed", type=int, default=0, help="sample order (builders) and the held-out draw")
    parser.add_argument("--limit", type=int, default=None, help="at most this many samples per split (builders)")
    args = parser.parse_args(argv)
    if args.kind in FORMATS and not args.input:
        parser.error(f"{args.kind} needs an input path")
    if args.kind in FORMATS and args.prefix == HELDOUT_PREFIX:
        parser.error(f"--prefix {HELDOUT_PREFIX} is the held-out split's name")
    if args.kind in BUILDERS:
        args.out = args.out or shards_dir(args.kind)
        args.samples_per_shard = args.samples_per_shard or SAMPLES_PER_SHARD[args.kind]
    elif not args.out:
        parser.error(f"{args.kind} needs --out")
    args.samples_per_shard = args.samples_per_shard or 1000
    return args


def read_records(args) -> list:
    columns = (args.image_column, args.caption_column)
    return list({
        "ovis": lambda: ovis_records(args.input, args.image_root),
        "messages": lambda: messages_records(args.input, args.image_root),
        "folder": lambda: folder_records(args.input),
        "table": lambda: table_records(args.input, *columns, image_root=args.image_root),
        "hf": lambda: hf_records(args.input, args.split, *columns),
    }[args.kind]())


def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    skipped = Skipped()
    if args.kind in BUILDERS:
        splits = BUILDERS[args.kind](seed=args.seed, limit=args.limit, heldout=args.heldout)
        jobs = [(samples, split, f"{args.kind} {split} (seed {args.seed})") for split, samples in splits.items()]
    else:
        records = read_records(args)
        source = f"{args.kind}:{os.path.abspath(args.input)}"
        try:
            n_heldout = parse_heldout(args.heldout, len(records))
        except ValueError as e:
            raise SystemExit(f"make_shards: {e}") from None
        train, heldout = split_heldout(records, n_heldout, args.seed)
        jobs = [(materialise(train, skipped), args.prefix, source)]
        if args.heldout is not None:
            jobs.append((materialise(heldout, skipped), HELDOUT_PREFIX, f"{source} (held out, seed {args.seed})"))
            if len(heldout) < n_heldout:
                print(f"heldout: {len(heldout)} of the {n_heldout} asked for (samples sharing an image stay together)")
        mismatched = marker_mismatches(records)
        if mismatched:
            print(f"warning: {len(mismatched)} samples have a different number of <image> markers than images "
                  f"(first: {mismatched[0]}); training skips them as image_marker_mismatch", file=sys.stderr)
    patterns = {}
    for samples, prefix, source in jobs:
        write_shards(samples, args.out, args.samples_per_shard, prefix=prefix, source=source)
        with open(os.path.join(args.out, f"{prefix}.manifest.json")) as f:
            manifest = json.load(f)
        if manifest["samples"] == 0:
            raise SystemExit(f"make_shards: no {prefix} sample was written" +
                             (f" ({'; '.join(skipped.lines())})" if skipped.counts else ""))
        patterns[prefix] = manifest["pattern"]
        print(f"{prefix}: {manifest['samples']} samples in {len(manifest['shards'])} shards -> {manifest['pattern']}")
    for line in skipped.lines():
        print(f"warning: {line}", file=sys.stderr)
    return patterns


if __name__ == "__main__":
    main()
