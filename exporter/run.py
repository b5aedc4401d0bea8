"""The run model: what a run is, the request that starts one, the errors a run request can meet, and a run settled
from the ledger and shown as the API shows it (shared by the exporter and the standalone monitor, which imports only
this light module, not the registry or the API).

A run is a process group (one or more root PIDs and their descendants, see ProcessGroups in exporter/groups.py), or
a cgroup (every process in it, exporter/cgroups.py), with descriptive labels. Runs are immutable: the registry
(exporter/runs.py) replaces a run whenever its figures change, so a scrape that holds a run holds one consistent set
of figures.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from impact_exporter.ledger import RunTotals
    from impact_exporter.sampler import Snapshot

COMPONENT_DOMAINS: Mapping[str, str] = MappingProxyType({"cpu": "package", "dram": "dram", "gpu": "gpu"})
"""Per-run energy components and the RAPL domain each one is the attributed share of."""

WORK_UNITS = ("samples", "steps", "tokens")
"""The units of work a run may report (``POST /api/v1/runs/<id>/work``): a closed list, so a run has at most three
work series and a report can name each unit's figure (J per sample, Wh per 1,000 tokens)."""
MAX_WORK_UNITS = 2**53
"""The most units of one kind a run may count: the largest integer a float64 (Prometheus' sample value) holds
exactly, so the exported counter is never a rounded figure."""


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


class HeldByCgroupRun(Conflict):
    """The process is in the cgroup of an active cgroup run of the caller's own (their Slurm job): that run
    measures it. The 409 carries the run, so the client can record it instead of running unmeasured."""

    def __init__(self, message: str, run: Run) -> None:
        super().__init__(message)
        self.run = run


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
    cgroup: str | None = None  # a cgroup run's cgroup, as exporter/cgroups.py writes it; None: a process run
    cgroup_populated: bool = False  # whether that cgroup has held processes: once it is gone, the run has ended
    work_units: Mapping[str, int] = field(default_factory=dict)  # unit (WORK_UNITS) -> units of work reported

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
    cgroup: str | None = None  # a cgroup run (operators only), of the user ``uid`` (default: the caller)
    uid: int | None = None


def settled_run(
    run: Run,
    totals: RunTotals | None,
    measured: frozenset[str],
    timestamp: float,
    cgroup_gone: Callable[[Run, bool], bool] | None = None,
) -> Run:
    """The run with the ledger's totals as of the sample at ``timestamp``; ``measured``: the energy domains the node
    measures. A process run ends when its processes are all gone, a cgroup run when ``cgroup_gone(run, populated)``
    says its cgroup, having held processes, is gone. The registry and the standalone monitor
    (exporter/standalone.py, which has no cgroup runs) both settle their runs with it."""
    if totals is None or not totals.sampled:
        return run
    energy = {
        component: totals.energy_joules.get(domain, 0.0)
        for component, domain in COMPONENT_DOMAINS.items()
        if domain in measured or domain in totals.energy_joules
    }
    populated = run.cgroup_populated or (run.cgroup is not None and totals.processes > 0)
    if run.cgroup is None:
        ended = totals.processes == 0
    else:
        ended = cgroup_gone is not None and cgroup_gone(run, populated)
    return replace(
        run,
        energy_joules=energy,
        cpu_seconds=totals.cpu_seconds,
        gpu_seconds=totals.gpu_seconds,
        last_seen=run.last_seen if ended else timestamp,
        end_time=(run.last_seen or timestamp) if ended else None,
        cgroup_populated=populated,
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
        "cgroup": run.cgroup,
        "status": "active" if run.active else "finished",
        "start_time": run.start_time,
        "end_time": run.end_time,
        "energy_joules": dict(run.energy_joules),
        "cpu_seconds": run.cpu_seconds,
        "gpu_seconds": run.gpu_seconds,
        "work_units": dict(run.work_units),
        "last_sample_time": snapshot.timestamp,
        "sources_up": {name: status.up for name, status in snapshot.sources.items()},
        "source_errors": {name: status.errors_total for name, status in snapshot.sources.items()},
    }
