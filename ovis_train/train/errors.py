"""User-fixable errors as the entry point prints them (``ConfigError`` itself: ``ovis_train.errors``)."""

from ovis_train.errors import ConfigError


def one_line_error(exc: BaseException) -> str | None:
    """The one line to print for a user-fixable error (ours, Hydra's, OmegaConf's); None for a bug."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, ConfigError):
        return " ".join(str(exc).split())
    if not isinstance(exc, (HydraException, OmegaConfBaseException)):
        return None
    lines = []
    for e in (exc, exc.__cause__):
        for line in str(e or "").split("Config search path:")[0].splitlines():
            line = line.strip()
            # Hydra's "+key=value" hint does not apply: the schema is closed on purpose
            if line and line not in lines and not line.startswith(("To append", "object_type", "reference_type")):
                lines.append(line)
    return " ".join(lines) + " (python -m ovis_train --cfg job prints every key and value)"


EXIT_CONFIG = 2  # a ConfigError: fix the command line or the config
EXIT_STOPPED = 3  # stopped by SIGTERM / SIGINT / SIGUSR1 after saving a checkpoint: resume=auto continues
EXIT_DIVERGED = 4  # too many non-finite steps in a row, or a non-finite tensor refused at a save


class Diverged(RuntimeError):
    """Training produced NaN/inf it cannot step over; the entry point prints one line, exits with 4."""

    exit_code = EXIT_DIVERGED


class Stopped(BaseException):
    """The run was asked to stop (a signal) and saved a checkpoint first; exit code 3.

    A BaseException like KeyboardInterrupt: a sweep run in-process stops too instead of recording one
    failed member and starting the next.
    """

    exit_code = EXIT_STOPPED
