"""The original experiment-impact-tracker's API, kept so that existing experiments run unchanged::

    from experiment_impact_tracker.compute_tracker import ImpactTracker

    tracker = ImpactTracker("runs/mobilenet-seed0")
    tracker.launch_impact_monitor()
    ...
    info = tracker.get_latest_info_and_check_for_errors()  # in the training loop, to fail fast

The original forked a monitoring process that polled RAPL and nvidia-smi itself. Now impact-exporter measures
the node, and ``launch_impact_monitor`` only registers this process (and so its descendants) as a run, writes
the run directory, and stops the run at interpreter exit. Where no exporter answers, a standalone monitor
process measures the run with the exporter's own sources (experiment_impact_tracker/standalone.py) and writes
its samples into the log directory, as the original did. The experiment is ``$IMPACT_EXPERIMENT``, else the
log directory's name.
"""

from __future__ import annotations

import atexit
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from experiment_impact_tracker.client import ExporterClient
from experiment_impact_tracker.errors import ImpactTrackerError
from experiment_impact_tracker.runs import STALE_AFTER_SECONDS, Run, check_run_health
from experiment_impact_tracker.standalone import StandaloneOptions

EXPERIMENT_ENV = "IMPACT_EXPERIMENT"


class ImpactTracker:
    """Registers the calling process as a run of the experiment whose results go to ``logdir``."""

    def __init__(
        self,
        logdir: str | os.PathLike[str],
        *,
        experiment: str | None = None,
        set: str | None = None,  # noqa: A002 (the API's field name)
        labels: Mapping[str, Any] | None = None,
        client: ExporterClient | None = None,
        stale_after_seconds: float = STALE_AFTER_SECONDS,
        standalone: StandaloneOptions | None = None,
    ) -> None:
        self.logdir = Path(logdir)
        self.experiment = experiment or os.environ.get(EXPERIMENT_ENV) or self.logdir.resolve().name
        self.set = set
        self.labels = dict(labels or {})
        self.stale_after_seconds = stale_after_seconds
        self.run: Run | None = None
        self._client = client
        self._standalone = standalone

    def launch_impact_monitor(self) -> None:
        """Register this process as a run and write ``logdir/run.json``; the run stops at interpreter exit.

        An unreachable exporter is a warning here, and the run is measured by a standalone monitor (configured by
        ``standalone``); a run that cannot be measured at all goes on untracked, and is an error in
        ``get_latest_info_and_check_for_errors``. Calling it again does nothing.
        """
        if self.run is not None:
            return
        self.run = Run.start(
            self.experiment,
            set=self.set,
            labels=self.labels,
            logdir=self.logdir,
            client=self._client,
            standalone=self._standalone,
        )
        atexit.register(self.stop)

    def get_latest_info_and_check_for_errors(self) -> dict[str, Any]:
        """The run's latest figures from the exporter or the standalone monitor; raises an ImpactTrackerError when
        they cannot be had or trusted: the run is untracked (RunNotTracked), the exporter is unreachable
        (ExporterUnavailable), does not know the run (UnknownRun), the standalone monitor stopped
        (MeasurementFailed), or its samples are stale, a source is down or the run is over (RunUnhealthy)."""
        if self.run is None:
            raise ImpactTrackerError("the run is not started: call launch_impact_monitor() first")
        info = self.run.info()
        check_run_health(info, now=time.time(), stale_after=self.stale_after_seconds)
        return info

    def stop(self) -> dict[str, Any] | None:
        """End the run now (rather than at exit) and return its final figures; None when untracked."""
        if self.run is None:
            return None
        final = self.run.stop(raise_errors=False)
        atexit.unregister(self.stop)
        return final

    def __enter__(self) -> ImpactTracker:
        self.launch_impact_monitor()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
