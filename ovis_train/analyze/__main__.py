"""``python -m ovis_train.analyze MODEL [data=...] [--shards PATTERN] [--out DIR]``: the VET analysis report.

MODEL is an export folder, a checkpoint folder or a run directory (its export, else its latest
checkpoint). Images come from ``--shards`` or from a run-config data group given as Hydra overrides
(``data=fashion_mnist``; held-out shards unless ``--split train``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv):
    from .report import ReportSettings

    defaults = ReportSettings()
    parser = argparse.ArgumentParser(prog="python -m ovis_train.analyze", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="export folder, checkpoint folder or run directory")
    parser.add_argument("overrides", nargs="*", help="run-config overrides choosing the data, e.g. data=fashion_mnist")
    parser.add_argument("--shards", help="shard pattern to read instead of the data config's")
    parser.add_argument("--split", choices=("eval", "train"), default="eval", help="which shards of the data config")
    parser.add_argument("--max-images", type=int, default=256, help="images read from the shards (default: 256)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="crops per forward pass; memory grows with batch x tokens x K (default: 32)")
    parser.add_argument("--out", help="report folder (default: <model>/vet_analysis)")
    parser.add_argument("--top-rows", type=int, default=defaults.top_rows, help="most used VET rows listed and drawn")
    parser.add_argument("--images-per-row", type=int, default=defaults.images_per_row, help="images shown per top row")
    parser.add_argument("--dead-threshold", type=float, default=defaults.dead_threshold,
                        help="a row no token ever gives more probability than this is dead (default: %(default)s)")
    args = parser.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"expected overrides like data=fashion_mnist, got {bad}")
    if not args.shards and not args.overrides:
        parser.error("say which images to analyse: --shards PATTERN or data=<group>")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    from .images import read_samples
    from .probe import probe
    from .report import ReportSettings, write_report
    from .source import data_urls, load_bundle, resolve_model_path

    model_path = resolve_model_path(args.model)
    urls = args.shards or data_urls(args.overrides, args.split)
    bundle = load_bundle(model_path)
    with torch.no_grad():  # scoped: main() is also called in-process (tests, notebooks)
        reduced, crops = probe(bundle, read_samples(urls, args.max_images), args.batch_size)
    settings = ReportSettings(top_rows=args.top_rows, images_per_row=args.images_per_row,
                              dead_threshold=args.dead_threshold)
    out = Path(args.out) if args.out else model_path / "vet_analysis"
    report = write_report(reduced, crops, out, {"model": str(model_path), "shards": str(urls)}, settings)
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
