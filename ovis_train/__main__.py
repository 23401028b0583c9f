"""``python -m ovis_train [hydra overrides]`` / ``accelerate launch -m ovis_train [...]``: train one phase.

Configuration mistakes (unknown key, wrong type, bad freeze rule, impossible model settings) end
with one line on stderr, ``ovis-train: error: ...``, and exit status 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys

from ovis_train.train.errors import one_line_error


@contextlib.contextmanager
def config_errors_as_one_line():
    try:
        yield
    except Exception as e:  # noqa: BLE001 - sorted into config errors (one line) and bugs (re-raised)
        message = one_line_error(e)
        if message is None:
            raise
        print(f"ovis-train: error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)


def main() -> None:
    import hydra

    from ovis_train.sweep import multirun
    from ovis_train.sweep.naming import register_resolver
    from ovis_train.train.config import CONF_DIR, register

    multirun.refuse_inside_launch(sys.argv[1:])  # before Hydra: once, not once per member and rank
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # let errors reach us instead of Hydra's multi-line report
    register()
    register_resolver()  # ${ovis_sweep_member:}: sweep member folder names

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
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
