"""Hydra callback: as each multirun member starts, record its overrides in its run directory; as it
ends, record how it ended and rewrite the sweep summary; once more when the sweep ends. Registered
in ``conf/config.yaml``::

    hydra:
      callbacks:
        sweep_summary:
          _target_: ovis_train.sweep.callback.SweepSummary

Members that raise are recorded with their error and the sweep goes on (Hydra's basic launcher runs
every member of a batch, then re-raises the first failure). Rewriting after every member keeps a
summary even when a sweep is killed, and when Hydra never calls ``on_multirun_end`` (it does not
after a failure). The callback never raises: a summary problem is logged, the sweep goes on. A final
summary with fewer rows than the sweep has members is kept in ``incomplete`` (module state: Hydra
swallows callback errors), which ``python -m ovis_train`` turns into exit status 1.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode

from . import naming  # noqa: F401 - registers the ${ovis_sweep_member:} resolver in every process running members
from .record import MemberRecord, one_line, write_record

log = logging.getLogger(__name__)
incomplete: list[str] = []  # problems of the sweeps this process ran (see the module docstring)


class SweepSummary(Callback):
    def on_job_start(self, config, **kwargs) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        try:
            overrides = list(config.hydra.overrides.task)
            write_record(config.hydra.runtime.output_dir,
                         MemberRecord(overrides=overrides, job_num=int(config.hydra.job.num), status="started"))
        except Exception:  # noqa: BLE001 - never take the sweep down with the record
            log.exception("could not record the sweep member's start")

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
            summary = self._summarize(config.hydra.sweep.dir)
            print(f"sweep summary: {summary.path}", flush=True)
            if summary.problem:
                incomplete.append(summary.problem)
        except Exception as e:  # noqa: BLE001
            log.exception("could not write the sweep summary")
            incomplete.append(f"could not write the sweep summary: {one_line(e)}")

    @staticmethod
    def _summarize(sweep_dir):
        from .summarize import summarize  # matplotlib and friends only once there is something to plot

        return summarize(Path(str(sweep_dir)))
