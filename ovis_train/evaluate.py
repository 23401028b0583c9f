"""``python -m ovis_train.evaluate MODEL --shards PATTERN [--limit 200] [--answers]``: score a model on
held-out shards: exact-match caption accuracy of its greedy captions and its loss per caption token; with
``--answers``, held-out conversations: exact match of its greedy answer to each final assistant turn
(normalised: case, punctuation and a / an / the do not count), overall and per question kind, and its
loss per assistant token.

    from ovis_train.evaluate import score, score_answers
    score(bundle, "shards/heldout-{000000..000009}.tar", limit=200)  # {"caption_accuracy": ..., ...}
    score_answers(bundle, "shards/chat/heldout-000000.tar")     # {"answer_accuracy": ..., "per_kind": ...}

MODEL is an export folder (or hub id), a checkpoint folder, or a run directory (its export, else its
latest complete checkpoint). The numbers come from ``ovis_train.train.evaluation``, the code the
training loop evaluates with, so a phase's ``eval/*`` metrics and this tool agree.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext

import torch

from ovis_train.model.caption import DEFAULT_PROMPT
from ovis_train.train.evaluation import answer_accuracy, caption_accuracy, heldout_loss


def score(bundle, urls, template: str = DEFAULT_PROMPT, limit: int = 200, caption_eos: bool = False,
          bf16: bool = False) -> dict:
    """Held-out caption accuracy and loss over the first ``limit`` decodable samples of ``urls``.
    ``caption_eos`` / ``bf16``: as the model was trained (captions ending with EOS, bf16 autocast)."""
    device = bundle.model.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with autocast:
        acc = caption_accuracy(bundle, urls, limit=limit, prompt=template)
        loss = heldout_loss(bundle, urls, template, limit=limit, caption_eos=caption_eos)
    return {"caption_accuracy": acc.accuracy, "heldout_loss": loss, "n": acc.n, "examples": acc.examples[:5],
            "bad_counts": acc.bad_counts}


def score_answers(bundle, urls, limit: int = 200, bf16: bool = False, batch_size: int = 16) -> dict:
    """Held-out answer accuracy (overall and per kind, with each kind's majority-answer rate) and loss per
    assistant token over the first ``limit`` conversations of ``urls``."""
    device = bundle.model.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with autocast:
        acc = answer_accuracy(bundle, urls, limit=limit, batch_size=batch_size)
        loss = heldout_loss(bundle, urls, limit=acc.n + sum(acc.bad_counts.values()), batch_size=batch_size)
    per_kind = {kind: {"accuracy": k.accuracy, "n": k.n, "majority": k.majority} for kind, k in acc.per_kind.items()}
    return {"answer_accuracy": acc.accuracy, "heldout_loss": loss, "n": acc.n, "per_kind": per_kind,
            "examples": acc.examples[:8], "bad_counts": acc.bad_counts}


def main(argv: list[str] | None = None) -> int:
    from ovis_train.analyze.source import load_bundle

    parser = argparse.ArgumentParser(prog="python -m ovis_train.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="export folder / hub id, checkpoint folder or run directory")
    parser.add_argument("--shards", required=True, help="held-out shards (brace pattern or '::'-joined list)")
    parser.add_argument("--limit", type=int, default=200, help="held-out samples scored (default: %(default)s)")
    parser.add_argument("--template", default=DEFAULT_PROMPT, help="caption prompt (default: %(default)r)")
    parser.add_argument("--caption-eos", action="store_true", help="captions were trained ending with EOS")
    parser.add_argument("--bf16", action="store_true", help="score under bf16 autocast")
    parser.add_argument("--answers", action="store_true",
                        help="the shards hold conversations: score answers to their final assistant turns")
    args = parser.parse_args(argv)
    bundle = load_bundle(args.model)
    if args.answers:
        result = score_answers(bundle, args.shards, args.limit, args.bf16)
    else:
        result = score(bundle, args.shards, args.template, args.limit, args.caption_eos, args.bf16)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
