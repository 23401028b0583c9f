"""``python -m ovis_train [hydra overrides]`` / ``accelerate launch -m ovis_train [...]``: train one phase.

Configuration mistakes (unknown key, wrong type, bad freeze rule, impossible model settings) end
with one line on stderr, ``ovis-train: error: ...``, and exit status 2; anything else is a bug and
keeps its traceback. Two planned stops also end with one line: a stop signal (SIGTERM, SIGINT,
SIGUSR1) after its checkpoint is saved, ``ovis-train: stopped at step N; resume with resume=auto ...``,
exit status 3; a run that keeps producing NaN/inf (``trainer.max_nonfinite_steps``) or would save
them, ``ovis-train: error: ...``, exit status 4.
"""

from __future__ import annotations

import contextlib
import os
import sys

from ovis_train.train.errors import EXIT_CONFIG, ConfigError, Diverged, Stopped, one_line_error


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


def main() -> None:
    import hydra

    from ovis_train.train.config import CONF_DIR, register

    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # let errors reach us instead of Hydra's multi-line report
    register()

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def run(cfg) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from ovis_train.train.config import to_config
        from ovis_train.train.distributed import is_launched
        from ovis_train.train.loop import train

        if HydraConfig.get().mode != RunMode.MULTIRUN:
            with config_errors_as_one_line():  # here too: Hydra would add its own line otherwise
                train(to_config(cfg))
            return
        # a sweep member's error reaches Hydra, which records it and runs the other members
        if is_launched():
            raise ConfigError(
                "a Hydra multirun inside a distributed launch runs every member on every rank; "
                "run the sweep outside the launcher (python -m ovis_train.sweep.launch)"
            )
        config = to_config(cfg)
        config.run_dir = HydraConfig.get().runtime.output_dir  # one run directory per member
        train(config)

    with config_errors_as_one_line():
        run()
    from ovis_train.train.distributed import exit_launched_process

    exit_launched_process()


if __name__ == "__main__":
    main()
