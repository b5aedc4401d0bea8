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
from datetime import datetime
from pathlib import Path
from typing import Any

import experiment_impact_tracker
from experiment_impact_tracker.client import ExporterClient
from experiment_impact_tracker.cpu.common import cpu_info
from experiment_impact_tracker.errors import ImpactTrackerError
from experiment_impact_tracker.gpu.nvidia import attribute, gpus_or_none
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
        self._created = time.time()
        self._hardware: dict[str, Any] | None = None
        self._healthy: dict[str, Any] | None = None
        self._healthy_until = 0.0

    @property
    def launched(self) -> bool:
        """Whether ``launch_impact_monitor`` has run, as in the original (``run.tracked`` says whether an exporter
        measures the run)."""
        return self.run is not None

    @property
    def initial_info(self) -> dict[str, Any]:
        """The original's one-time system information, as far as it still means something: ``cpu_info`` (py-cpuinfo,
        with ``usable_cpus``), ``gpu_info`` (one dict per visible GPU, with the original's ``total_memory``; absent
        without GPUs, as in the original), ``experiment_start`` (a naive local datetime: the run's start once
        launched, else when the tracker was made) and ``experiment_impact_tracker_version``. The hardware is read
        on first use (py-cpuinfo takes a second). No region is looked up: the reporter's --region says where."""
        if self._hardware is None:
            gpus = [{**gpu, "total_memory": attribute(gpu, "total_memory")} for gpu in gpus_or_none()]
            self._hardware = {"cpu_info": cpu_info(), **({"gpu_info": gpus} if gpus else {})}
        start = self.run.start_time if self.run is not None else self._created
        return {
            **self._hardware,
            "experiment_start": datetime.fromtimestamp(start),
            "experiment_impact_tracker_version": experiment_impact_tracker.__version__,
        }

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
        now = time.time()
        if info is not self._healthy or now > self._healthy_until:
            check_run_health(info, now=now, stale_after=self.stale_after_seconds)
            # The same figures stay healthy until they are stale: a loop that asks at every step (the standalone
            # monitor hands the same object until its next sample) is not checked again meanwhile.
            self._healthy, self._healthy_until = info, info["last_sample_time"] + self.stale_after_seconds
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
