"""What ``python -m ovis_train`` does differently for a sweep (``-m`` / ``--multirun``):

- inside a distributed launch (``accelerate launch``, torchrun) it refuses before Hydra starts: a
  multirun there would run every member on every rank. One line, from rank 0 only, exit status 2;
  nothing is written (``python -m ovis_train.sweep.launch`` starts one launch per member instead);
- members evaluate on the held-out shards at the end of the phase by default (held-out loss and
  greedy-caption accuracy), so the summary's table and plots are full without extra settings;
- a sweep whose summary found fewer members than it ran exits with status 1 (``callback.incomplete``).
"""

from __future__ import annotations

import os
import sys

MULTIRUN_FLAGS = ("-m", "--multirun", "hydra.mode=MULTIRUN")
HELDOUT_CAPTIONS = 200  # greedy captions scored per member by default (the demo's count: ~1 min there)


def is_multirun(argv: list[str]) -> bool:
    return any(arg in MULTIRUN_FLAGS for arg in argv)


def refuse_inside_launch(argv: list[str]) -> None:
    """Exit (status 2) when asked for a multirun inside a distributed launch; rank 0 says why, once."""
    from ovis_train.train.distributed import is_launched

    if not (is_multirun(argv) and is_launched()):
        return
    if os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0":
        print("ovis-train: error: -m (a Hydra multirun) inside a distributed launch would run every member on "
              "every rank; run the sweep outside the launcher: python -m ovis_train.sweep.launch --launcher "
              "'accelerate launch ... -m ovis_train' <overrides> (or bash launch.sh --sweep ...)",
              file=sys.stderr, flush=True)
    sys.exit(2)


def heldout_defaults(config, given: list[str]) -> dict[str, int]:
    """Trainer settings a sweep member takes unless ``given`` (its command-line overrides) sets them:
    a held-out loss evaluation at the last step (``trainer.eval_every = max_steps``) and
    ``HELDOUT_CAPTIONS`` greedy captions at the end. Only settings now off (0), and only when the data
    has held-out shards. ``config`` is the run's ``Config``; returns {override key: value}."""
    t = config.trainer
    if not config.data.eval_urls or t.max_steps == 0:
        return {}
    keys = {o.split("=", 1)[0].lstrip("+~") for o in given}
    defaults = {}
    if t.eval_every == 0 and "trainer.eval_every" not in keys:
        defaults["trainer.eval_every"] = t.max_steps
    if t.caption_eval_samples == 0 and "trainer.caption_eval_samples" not in keys:
        defaults["trainer.caption_eval_samples"] = HELDOUT_CAPTIONS
    return defaults


def apply_heldout_defaults(config, given: list[str]) -> None:
    for key, value in heldout_defaults(config, given).items():
        setattr(config.trainer, key.split(".", 1)[1], value)


def exit_status() -> int:
    """1 when a sweep this process ran ended with an incomplete summary (it was said on stderr)."""
    from .callback import incomplete

    for problem in incomplete:
        print(f"ovis-train: error: {problem}", file=sys.stderr, flush=True)
    return 1 if incomplete else 0
