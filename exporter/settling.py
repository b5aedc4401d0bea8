"""Settling runs: after each sample the registry takes the ledger's totals into its runs, and a run's stop (and,
with GPUs, its start) first takes a fresh sample, so no second of a run is lost.

serve() (exporter/cli.py) owns the one RunSettler: it is the only piece that knows both the sampler and the
registry, so neither calls the other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from impact_exporter.run import Run, StartRequest
from impact_exporter.runs import RunRegistry
from impact_exporter.sampler import Snapshot


class RunSettler:
    """The registry as the API uses it, with the fresh samples its starts and stops need."""

    def __init__(self, runs: RunRegistry, fresh_sample: Callable[[], object], sample_at_start: bool = False) -> None:
        """``fresh_sample`` returns once a sample that began after the call is settled (``Sampler.sample_now``);
        ``sample_at_start`` is for GPUs: a GPU interval's energy goes to the runs on the GPU during it, so a run's
        first interval must begin when it starts."""
        self._runs = runs
        self._fresh_sample = fresh_sample
        self._sample_at_start = sample_at_start

    def after_sample(self, snapshot: Snapshot) -> None:
        """The sampler's ``on_sample``: settle the runs as of this sample."""
        self._runs.settle(snapshot.timestamp)

    def start(self, request: StartRequest, caller_uid: int, caller_pid: int | None) -> tuple[Run, bool]:
        """Register a run (RunRegistry.start), then with GPUs take a sample so its first interval begins now."""
        started = self._runs.start(request, caller_uid, caller_pid)
        if self._sample_at_start:
            self._fresh_sample()
        return started

    def stop(self, run_id: str, caller_uid: int, user: str | None = None, operator: bool = False) -> Run:
        """Take a fresh sample so the run's totals include its last moments, then end it (RunRegistry.stop)."""
        if self._runs.get(run_id, caller_uid, user, operator).active:
            self._fresh_sample()
        return self._runs.stop(run_id, caller_uid, user, operator)

    def get(self, run_id: str, caller_uid: int, user: str | None = None, operator: bool = False) -> Run:
        return self._runs.get(run_id, caller_uid, user, operator)

    def add_work(self, run_id: str, units: Mapping[str, int], caller_uid: int, user: str | None = None) -> Run:
        return self._runs.add_work(run_id, units, caller_uid, user)

    def list(self, caller_uid: int, operator: bool = False) -> list[Run]:
        return self._runs.list(caller_uid, operator)
