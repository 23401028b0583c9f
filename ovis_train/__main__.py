"""``python -m ovis_train [hydra overrides]`` / ``accelerate launch -m ovis_train [...]``: train one phase.

Configuration mistakes (unknown key, wrong type, bad freeze rule, impossible model settings) end
with one line on stderr, ``ovis-train: error: ...``, and exit status 2; anything else is a bug and
keeps its traceback. ``--cfg job`` checks the config as a run would before Hydra prints it;
``--help`` prints ovis-train's own help (``--hydra-help``: Hydra's flags). Two planned stops also end
with one line: a stop signal (SIGTERM, SIGINT, SIGUSR1) after its checkpoint is saved,
``ovis-train: stopped at step N; resume with resume=auto ...``, exit status 3; a run that keeps
producing NaN/inf (``trainer.max_nonfinite_steps``) or would save them, ``ovis-train: error: ...``,
exit status 4.
"""

from __future__ import annotations

import contextlib
import os
import sys

from ovis_train.train.errors import EXIT_CONFIG, Diverged, Stopped, one_line_error


def _exit(code: int) -> None:
    from ovis_train.train.distributed import exit_launched_process

    exit_launched_process(code)
    sys.exit(code)


@contextlib.contextmanager
def config_errors_as_one_line():
    try:
        yield
    except Stopped as e:  # the message comes from the main process only
        if str(e):
            print(f"ovis-train: {e}", file=sys.stderr, flush=True)
        _exit(e.exit_code)
    except Diverged as e:
        print(f"ovis-train: error: {e}", file=sys.stderr, flush=True)
        _exit(e.exit_code)
    except Exception as e:  # noqa: BLE001 - sorted into config errors (one line) and bugs (re-raised)
        message = one_line_error(e)
        if message is None:
            raise
        print(f"ovis-train: error: {message}", file=sys.stderr, flush=True)
        sys.exit(EXIT_CONFIG)


# the overrides --help lists, with what they mean (their defaults are read from the composed config)
MAIN_OVERRIDES = {
    "run_dir": "the run's folder (config.yaml, metrics.jsonl, checkpoints/, export/)",
    "resume": "auto (latest complete checkpoint) | a checkpoint folder | null",
    "init_from": "a previous phase's export folder or an Ovis2 checkpoint",
    "model.visual_vocab_size": "K, the VET's rows (null: the preset's)",
    "model.connector": "vet | mlp",
    "trainer.max_steps": "optimizer steps of the phase",
    "trainer.lr": "learning rate of rules that set none",
    "trainer.bf16": "bf16 autocast",
    "trainer.save_every": "steps between checkpoints (0: at the end only)",
    "trainer.eval_every": "steps between held-out evaluations (0: off)",
    "trainer.seed": "seed of the initial weights and the optimizer",
    "data.batch_size": "micro-batch per process",
}
GROUPS = ("phase", "model", "data", "distributed", "logger")


def usage() -> str:
    """ovis-train's --help: the config groups and their options, the main overrides and their defaults."""
    import yaml
    from omegaconf import OmegaConf

    from ovis_train.train.config import CONF_DIR, PRIMARY_CONFIG, compose_tree

    tree = compose_tree([])
    chosen = {k: v for entry in yaml.safe_load((CONF_DIR / f"{PRIMARY_CONFIG}.yaml").read_text())["defaults"]
              if isinstance(entry, dict) for k, v in entry.items()}
    lines = [
        "usage: python -m ovis_train [group=option ...] [key=value ...]   train one phase",
        "       accelerate launch [...] -m ovis_train [...]                the same on several processes",
        "       python -m ovis_train --cfg job [...]                       print the checked config",
        "       python -m ovis_train -m key=a,b [...] run_dir=DIR           a sweep, one run directory per member",
        "",
        "Config groups (conf/<group>/<option>.yaml; * = default):",
    ]
    for group in GROUPS:
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        lines.append(f"  {group:<12} " + ", ".join(o + "*" * (o == chosen.get(group)) for o in options))
    lines += ["", "Phases:"]
    for path in sorted((CONF_DIR / "phase").glob("*.yaml")):
        title = next(line[1:].strip() for line in path.read_text().splitlines()
                     if line.startswith("#") and "@package" not in line)
        lines.append(f"  {path.stem:<12} {title.split(':')[0][:90]}")
    lines += ["", "Main overrides (default with the default groups; python -m ovis_train --cfg job lists every key):"]
    raw = OmegaConf.to_container(tree, resolve=False)  # interpolations shown as written
    for key, meaning in MAIN_OVERRIDES.items():
        default = raw
        for part in key.split("."):
            default = default[part]
        lines.append(f"  {key}={'null' if default is None else str(default).lower() if isinstance(default, bool) else default}"
                     .ljust(34) + f" {meaning}")
    lines += ["", "README.md (Configuration reference) explains every key; --hydra-help shows Hydra's own flags."]
    return "\n".join(lines)


def check_printed_config(argv: list[str]) -> None:
    """``--cfg`` prints the config without running: check it as a run would, so both refuse the same."""
    from hydra._internal.utils import get_args_parser

    from ovis_train.train.config import compose

    args = get_args_parser().parse_args(argv)
    if args.cfg and not args.multirun:
        with config_errors_as_one_line():
            compose(args.overrides, args.config_dir, args.config_name)


def main() -> None:
    import hydra

    from ovis_train.sweep import multirun
    from ovis_train.sweep.naming import register_resolver
    from ovis_train.train.config import CONF_DIR, PRIMARY_CONFIG, register

    if any(a in ("--help", "-h") for a in sys.argv[1:]):
        print(usage())
        return
    multirun.refuse_inside_launch(sys.argv[1:])  # before Hydra: once, not once per member and rank
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # let errors reach us instead of Hydra's multi-line report
    check_printed_config(sys.argv[1:])
    register()
    register_resolver()  # ${ovis_sweep_member:}: sweep member folder names

    @hydra.main(config_path=str(CONF_DIR), config_name=PRIMARY_CONFIG, version_base="1.3")
    def run(cfg) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from ovis_train.train.config import to_config
        from ovis_train.train.loop import train

        if HydraConfig.get().mode != RunMode.MULTIRUN:
            with config_errors_as_one_line():  # here too: Hydra would add its own line otherwise
                train(to_config(cfg))
            return
        # a sweep member's error reaches Hydra, which records it and runs the other members
        config = to_config(cfg)
        config.run_dir = HydraConfig.get().runtime.output_dir  # one run directory per member
        multirun.apply_heldout_defaults(config, list(HydraConfig.get().overrides.task))
        train(config)

    with config_errors_as_one_line():
        run()
    if multirun.is_multirun(sys.argv[1:]) and multirun.exit_status():
        sys.exit(1)
    from ovis_train.train.distributed import exit_launched_process

    exit_launched_process()


if __name__ == "__main__":
    main()
