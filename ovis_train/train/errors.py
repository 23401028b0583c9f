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
