"""The ledger: every running total of every tracked run, keyed by its RunKey (user and run id).

The registry (exporter/runs.py) tells the ledger which runs are tracked, with the root PIDs to measure and the
totals a resumed run starts from, and reads their totals back. The sampler (exporter/sampler.py) reads which
processes to measure from it and adds each interval's figures. Neither calls the other. The store persists the
totals through the runs the registry builds from them.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from impact_exporter.cgroups import Cgroup
from impact_exporter.groups import GroupUsage
from impact_exporter.run import RunKey


@dataclass(frozen=True)
class RunTotals:
    """A tracked run's totals (its starting totals plus every interval added since) and what it holds now."""

    energy_joules: Mapping[str, float]  # by energy domain: package, dram, gpu
    cpu_seconds: float
    gpu_seconds: float
    memory_bytes: int = 0
    processes: int = 0
    root_alive: bool = False
    sampled: bool = False  # whether a sample has measured the run since it was tracked


@dataclass
class _Entry:
    roots: tuple[int, ...]
    energy_joules: dict[str, float] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    gpu_seconds: float = 0.0
    usage: GroupUsage | None = None
    cgroup: Cgroup | None = None


class Ledger:
    """RunKey -> running totals, for the runs the registry tracks. Safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[RunKey, _Entry] = {}
        self._roots: Mapping[RunKey, tuple[int, ...]] = MappingProxyType({})
        self._cgroups: Mapping[RunKey, Cgroup] = MappingProxyType({})
        self._measured: frozenset[str] = frozenset()

    def track(
        self,
        run_id: RunKey,
        roots: Collection[int],
        energy_joules: Mapping[str, float] | None = None,
        cpu_seconds: float = 0.0,
        gpu_seconds: float = 0.0,
        cgroup: Cgroup | None = None,
    ) -> None:
        """Measure ``roots`` and their descendants for ``run_id``, starting from the given totals (by energy
        domain); a run tracked already keeps its totals and only gets these roots. A cgroup run has ``cgroup`` and
        no roots: the sampler finds them in the cgroup at each sample (exporter/cgroups.py)."""
        with self._lock:
            entry = self._entries.get(run_id)
            if entry is None:
                entry = self._entries[run_id] = _Entry(
                    tuple(roots), dict(energy_joules or {}), cpu_seconds, gpu_seconds
                )
            else:
                entry.roots = tuple(roots)
            entry.cgroup = cgroup
            self._publish_roots()

    def untrack(self, run_id: RunKey) -> None:
        """Stop measuring ``run_id`` and forget its totals (the registry keeps a finished run's)."""
        with self._lock:
            if self._entries.pop(run_id, None) is not None:
                self._publish_roots()

    def roots(self) -> Mapping[RunKey, tuple[int, ...]]:
        """Root PIDs of every tracked run: made when runs are tracked or untracked, not at each sample."""
        return self._roots

    def cgroups(self) -> Mapping[RunKey, Cgroup]:
        """The cgroup of every tracked cgroup run."""
        return self._cgroups

    def add_usage(self, usage: Mapping[RunKey, GroupUsage]) -> None:
        """Add an interval's CPU time per run, and take what each run holds now; runs not tracked are ignored."""
        with self._lock:
            for run_id, run_usage in usage.items():
                entry = self._entries.get(run_id)
                if entry is not None:
                    entry.cpu_seconds += run_usage.cpu_seconds
                    entry.usage = run_usage

    def add_energy(self, joules: Mapping[RunKey, Mapping[str, float]]) -> None:
        """Add an interval's attributed joules: run key -> energy domain -> joules."""
        with self._lock:
            for run_id, by_domain in joules.items():
                entry = self._entries.get(run_id)
                if entry is not None:
                    for domain, value in by_domain.items():
                        entry.energy_joules[domain] = entry.energy_joules.get(domain, 0.0) + value

    def add_gpu_seconds(self, seconds: Mapping[RunKey, float]) -> None:
        """Add an interval's GPU time per run."""
        with self._lock:
            for run_id, value in seconds.items():
                entry = self._entries.get(run_id)
                if entry is not None:
                    entry.gpu_seconds += value

    def measure(self, domains: Iterable[str]) -> None:
        """Note energy domains this node measures: every run reports them, at 0 until energy is attributed."""
        with self._lock:
            self._measured = self._measured | frozenset(domains)

    def measured(self) -> frozenset[str]:
        """The energy domains measured since start."""
        return self._measured

    def totals(self) -> Mapping[RunKey, RunTotals]:
        """Every tracked run's totals as of now."""
        with self._lock:
            return MappingProxyType({run_id: self._totals(entry) for run_id, entry in self._entries.items()})

    @staticmethod
    def _totals(entry: _Entry) -> RunTotals:
        usage = entry.usage
        return RunTotals(
            energy_joules=MappingProxyType(dict(entry.energy_joules)),
            cpu_seconds=entry.cpu_seconds,
            gpu_seconds=entry.gpu_seconds,
            memory_bytes=usage.memory_bytes if usage is not None else 0,
            processes=usage.processes if usage is not None else 0,
            root_alive=usage.root_alive if usage is not None else False,
            sampled=usage is not None,
        )

    def _publish_roots(self) -> None:
        self._roots = MappingProxyType({run_id: entry.roots for run_id, entry in self._entries.items()})
        self._cgroups = MappingProxyType(
            {run_id: entry.cgroup for run_id, entry in self._entries.items() if entry.cgroup is not None}
        )
