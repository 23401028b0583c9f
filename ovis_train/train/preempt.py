"""Stop requests from outside (SLURM, Kubernetes, Ctrl-C, a launcher) become one clean checkpoint.

Contract. Inside ``StopSignals`` the signals SIGTERM, SIGINT and SIGUSR1 only record a request.
The train loop asks ``requested(accelerator)`` at every step boundary (an all-reduce, so every rank
stops after the same step), saves one complete checkpoint and raises ``Stopped`` (exit code 3);
``resume=auto`` then continues exactly where it stopped.

The same request often arrives twice within moments: SLURM signals every process of the step and
the launcher forwards its own copy; a launcher passes Ctrl-C on to ranks that may have had it
already. Signals within ``GRACE_S`` seconds of the first are therefore ignored. A signal later than
that, while the step or the save still runs, ends the process at once with 128 + the signal number;
the checkpoint being written then stays an invisible ``.tmp-`` folder and ``resume=auto`` uses the
previous complete one. DataLoader workers ignore these signals (``ovis_train.data.stream``).
"""

from __future__ import annotations

import os
import signal
import threading
import time

from ovis_train.train.distributed import all_reduce_sum

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
GRACE_S = 5.0


class StopSignals:
    """Context manager: installs the handlers (main thread only) and restores the previous ones."""

    def __init__(self):
        self.signum: int | None = None
        self._first_at = 0.0
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal.signal works nowhere else
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        rank = os.environ.get("RANK", "0")
        if self.signum is None:
            self.signum, self._first_at = signum, now
            _say(f"ovis-train: rank {rank} got {self.name}: finishing this step, then saving a checkpoint "
                 f"(the same signal again after {GRACE_S:.0f} s exits at once, without saving)")
        elif now - self._first_at > GRACE_S:
            _say(f"ovis-train: rank {rank} got {signal.Signals(signum).name} again: exiting now; "
                 "resume=auto uses the latest complete checkpoint")
            os._exit(128 + signum)

    def requested(self, accelerator) -> bool:
        """Whether any rank got a stop signal; collective (every rank calls it at the same step)."""
        return all_reduce_sum(accelerator, [self.signum is not None])[0] > 0


def _say(line: str) -> None:
    # os.write, not print: a handler that interrupts a print to the same stream would make print raise
    os.write(2, (line + "\n").encode())
