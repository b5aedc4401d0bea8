"""The run model: what a run is, the request that starts one, the errors a run request can meet, and a run settled
from the ledger and shown as the API shows it (shared by the exporter and the standalone monitor, which imports only
this light module, not the registry or the API).

A run is a process group (one or more root PIDs and their descendants, see ProcessGroups in exporter/groups.py)
with descriptive labels. Runs are immutable: the registry (exporter/runs.py) replaces a run whenever its figures
change, so a scrape that holds a run holds one consistent set of figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from impact_exporter.ledger import RunTotals
    from impact_exporter.sampler import Snapshot

COMPONENT_DOMAINS: Mapping[str, str] = MappingProxyType({"cpu": "package", "dram": "dram", "gpu": "gpu"})
"""Per-run energy components and the RAPL domain each one is the attributed share of."""


class RunError(Exception):
    """A run request that cannot be served. The API module (exporter/api.py) maps each kind to an HTTP status."""


class InvalidRequest(RunError):
    """The request is malformed or names no running process."""


class Forbidden(RunError):
    """The caller may not act on this process or run."""


class UnknownRun(RunError):
    """No run the caller may see has this id on this exporter."""


class Conflict(RunError):
    """The request contradicts the run as it is (finished, or other labels)."""


class StoreUnavailable(RunError):
    """Runs cannot be stored now, so none may start."""


class TooManyRequests(RunError):
    """The caller (or all callers together) reached a limit on runs or registrations (exporter/limits.py)."""


@dataclass(frozen=True)
class ProcessRef:
    """A root process of a run, with its start time so that a reused PID is never mistaken for it."""

    pid: int
    start_ticks: int


class RunKey(NamedTuple):
    """A run's identity on a node: run ids are scoped by user, so two users may each hold the same id and neither
    can take an id the other's launcher will use. The registry, ledger and store key runs by it; the per-run
    series carry ``user`` next to ``run_id`` for the same reason."""

    uid: int
    run_id: str


@dataclass(frozen=True)
class Run:
    """One experiment run on this node: what it is, whose it is, and what it used so far."""

    run_id: str
    experiment: str
    set: str
    labels: Mapping[str, str]
    uid: int
    user: str
    processes: tuple[ProcessRef, ...]
    start_time: float
    end_time: float | None = None
    energy_joules: Mapping[str, float] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    last_seen: float | None = None
    gpu_seconds: float = 0.0
    placement: Mapping[str, str] = field(default_factory=dict)  # pod_uid, container_id (exporter/kubernetes.py)

    @property
    def key(self) -> RunKey:
        return RunKey(self.uid, self.run_id)

    @property
    def active(self) -> bool:
        return self.end_time is None

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(process.pid for process in self.processes)


@dataclass(frozen=True)
class StartRequest:
    """A validated ``POST /api/v1/runs`` body."""

    experiment: str
    set: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    pid: int | None = None
    run_id: str | None = None


def settled_run(run: Run, totals: RunTotals | None, measured: frozenset[str], timestamp: float) -> Run:
    """The run with the ledger's totals as of the sample at ``timestamp``, ended when its processes are all gone;
    ``measured``: the energy domains the node measures. The registry and the standalone monitor
    (exporter/standalone.py) both settle their runs with it."""
    if totals is None or not totals.sampled:
        return run
    energy = {
        component: totals.energy_joules.get(domain, 0.0)
        for component, domain in COMPONENT_DOMAINS.items()
        if domain in measured or domain in totals.energy_joules
    }
    ended = totals.processes == 0
    return replace(
        run,
        energy_joules=energy,
        cpu_seconds=totals.cpu_seconds,
        gpu_seconds=totals.gpu_seconds,
        last_seen=run.last_seen if ended else timestamp,
        end_time=(run.last_seen or timestamp) if ended else None,
    )


def run_object(run: Run, snapshot: Snapshot) -> dict[str, Any]:
    """A run as the API shows it (docs/api.md), with the freshness and health of the figures as of ``snapshot``: the
    API renders runs with it, and the standalone monitor (exporter/standalone.py) hands its run to the experiment in
    the same shape."""
    return {
        "run_id": run.run_id,
        "experiment": run.experiment,
        "set": run.set,
        "labels": dict(run.labels),
        "user": run.user,
        "pids": list(run.pids),
        "status": "active" if run.active else "finished",
        "start_time": run.start_time,
        "end_time": run.end_time,
        "energy_joules": dict(run.energy_joules),
        "cpu_seconds": run.cpu_seconds,
        "gpu_seconds": run.gpu_seconds,
        "last_sample_time": snapshot.timestamp,
        "sources_up": {name: status.up for name, status in snapshot.sources.items()},
        "source_errors": {name: status.errors_total for name, status in snapshot.sources.items()},
    }
