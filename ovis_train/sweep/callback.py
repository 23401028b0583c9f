"""Hydra callback: after each multirun member, record how it ended in its run directory and rewrite
the sweep summary; once more when the sweep ends. Registered in ``conf/config.yaml``::

    hydra:
      callbacks:
        sweep_summary:
          _target_: ovis_train.sweep.callback.SweepSummary

Members that raise are recorded with their error and the sweep goes on (Hydra's basic launcher runs
every member of a batch, then re-raises the first failure). Rewriting after every member keeps a
summary even when a sweep is killed, and when Hydra never calls ``on_multirun_end`` (it does not
after a failure). The callback never raises: a summary problem is logged, the sweep goes on.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode

from .record import MemberRecord, one_line, write_record

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    def on_job_end(self, config, job_return, **kwargs) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        try:
            failed = job_return.status == JobStatus.FAILED
            error = job_return._return_value if failed else None  # .return_value would re-raise it
            record = MemberRecord(overrides=list(job_return.overrides or []), job_num=int(config.hydra.job.num),
                                  status="failed" if failed else "completed",
                                  error=one_line(error) if error is not None else None)
            write_record(config.hydra.runtime.output_dir, record)
            if failed:
                log.error("sweep member %s failed: %s", " ".join(record.overrides), record.error)
            self._summarize(config.hydra.sweep.dir)
        except Exception:  # noqa: BLE001 - never take the sweep down with the summary
            log.exception("could not record the sweep member or write the summary")

    def on_multirun_end(self, config, **kwargs) -> None:
        try:
            path = self._summarize(config.hydra.sweep.dir)
            print(f"sweep summary: {path}", flush=True)
        except Exception:  # noqa: BLE001
            log.exception("could not write the sweep summary")

    @staticmethod
    def _summarize(sweep_dir) -> Path:
        from .summarize import summarize  # matplotlib and friends only once there is something to plot

        return summarize(Path(str(sweep_dir)))
