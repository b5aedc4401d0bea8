"""The sampling thread: reads every source on a fixed interval and publishes an immutable snapshot.

Scrapes read the latest snapshot and never touch hardware, so a slow or failing source can delay a sample
but never a scrape, and every scraper sees the same numbers for the same instant.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from impact_exporter.attribution import GroupShareBasis, attribute_interval
from impact_exporter.cgroups import CgroupFS, with_cgroup_roots
from impact_exporter.gpu_attribution import IDLE_SHARE, IdlePolicy, attribute_gpu_interval, lowest_idle_watts
from impact_exporter.groups import GroupUsage, ProcessGroups
from impact_exporter.ledger import Ledger
from impact_exporter.scheduling import Pause, no_pause
from impact_exporter.sources import SourceError
from impact_exporter.sources.energy import CpuEnergySource, DomainEnergy
from impact_exporter.sources.gpu import GpuInfo, GpuReading, GpuSource
from impact_exporter.sources.procfs import ProcFS

log = logging.getLogger(__name__)

PROCFS = "procfs"
GPU = "gpu"  # the energy domain (and run component) of GPUs


@dataclass(frozen=True)
class SourceStatus:
    """Whether a source's last read succeeded, and how many reads have failed since start."""

    up: bool
    errors_total: int


@dataclass(frozen=True)
class Snapshot:
    """Everything a scrape reports, as of one sample."""

    timestamp: float = 0.0
    samples_total: int = 0
    sample_duration_seconds: float = 0.0
    sources: Mapping[str, SourceStatus] = field(default_factory=dict)
    energy_domains: tuple[DomainEnergy, ...] = ()  # each with its method label, measured or estimated
    unattributed_joules: Mapping[str, float] = field(default_factory=dict)
    gpu_info: tuple[GpuInfo, ...] = ()
    gpus: tuple[GpuReading, ...] = ()
    gpu_energy_method: str | None = None  # the GPU source's label for how its GPUs' energy was obtained
    gpu_process_watts: Mapping[tuple[int, int], float] = field(default_factory=dict)  # (GPU index, pid) -> W
    process_names: Mapping[int, str] = field(default_factory=dict)  # pid -> comm, for GPU processes


@dataclass
class _Pending:
    """Energy and usage measured since the last interval that could be attributed.

    When one source fails for a few samples, its counterpart's figures wait here, so the interval finally
    attributed covers the same span of time on both sides and nothing is dropped.
    """

    energy_joules: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    group_cpu_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    busy_cpu_seconds: float = 0.0


class Sampler:
    """Reads the sources, attributes each interval's energy and adds each run's figures to the ledger."""

    def __init__(
        self,
        procfs: ProcFS,
        energy: CpuEnergySource | None = None,
        ledger: Ledger | None = None,
        groups: ProcessGroups | None = None,
        interval_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
        on_sample: Callable[[Snapshot], None] | None = None,
        gpu: GpuSource | None = None,
        gpu_idle_watts: float | None = None,
        gpu_idle_policy: IdlePolicy = IDLE_SHARE,
        pause: Pause = no_pause,
        cgroupfs: CgroupFS | None = None,
    ) -> None:
        """``ledger`` says which runs to measure and takes their figures (a fresh one tracks none); ``groups`` is
        the process-group accounting shared with the registry, which records a starting run's baseline in it.
        ``pause`` is called between the phases of a sample and between groups (exporter/scheduling.py).
        ``cgroupfs`` is where cgroup runs' members are read (exporter/cgroups.py)."""
        self._procfs = procfs
        self._cgroupfs = cgroupfs
        self._pause = pause
        self._energy = energy
        self._ledger = ledger if ledger is not None else Ledger()
        self._on_sample = on_sample
        self._gpu = gpu
        self._gpu_idle_policy = gpu_idle_policy
        self._gpu_idle_watts: dict[int, float | None] = {}
        self._gpu_idle_fixed = gpu_idle_watts
        self._gpus: tuple[GpuReading, ...] = ()
        self._gpu_energy_method: str | None = None
        self._gpu_process_watts: dict[tuple[int, int], float] = {}
        self._interval = interval_seconds
        self._clock = clock
        self._groups = groups if groups is not None else ProcessGroups(procfs)
        self._errors: dict[str, int] = {name: 0 for name in self.source_names}
        self._up: dict[str, bool] = {name: False for name in self.source_names}
        self._busy_cpu_seconds: float | None = None
        self._total_memory_bytes = 0
        self._usage: dict[str, GroupUsage] = {}
        self._pending = _Pending()
        self._unattributed: dict[str, float] = defaultdict(float)
        self._energy_domains: tuple[DomainEnergy, ...] = ()
        self._samples = 0
        self._snapshot = Snapshot()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._done = threading.Condition()
        self._started = self._finished = 0
        self._thread: threading.Thread | None = None

    @property
    def source_names(self) -> tuple[str, ...]:
        """The sources this sampler reads, as named in ``impact_source_up{source}``."""
        names = [PROCFS]
        if self._energy is not None:
            names.append(self._energy.name)
        if self._gpu is not None:
            names.append(self._gpu.name)
        return tuple(names)

    @property
    def snapshot(self) -> Snapshot:
        """The latest published snapshot (replaced whole, never mutated)."""
        return self._snapshot

    def sample_once(self) -> Snapshot:
        """Read every source once, attribute what can be attributed, publish and return the new snapshot."""
        started = time.perf_counter()
        pause = self._pause
        usage_read = self._read_usage()
        energy_read = self._read_energy()
        if usage_read and (energy_read or self._energy is None):
            self._attribute_pending()
        pause()
        self._read_gpus()
        pause()
        self._samples += 1
        self._snapshot = self._build_snapshot(time.perf_counter() - started)
        pause()
        if self._on_sample is not None:
            self._on_sample(self._snapshot)
        return self._snapshot

    def sample_now(self, timeout: float = 10.0) -> Snapshot:
        """Wake the sampling thread and return the snapshot of a sample that started after this call.

        Callers that finish a run use it so the run's totals include its last moments. Concurrent callers
        share one sample.
        """
        with self._done:
            wanted = self._started + 1
            self._wake.set()
            self._done.wait_for(lambda: self._finished >= wanted, timeout)
            return self._snapshot

    def start(self) -> None:
        """Sample in a daemon thread every interval from now on until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="impact-sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the sampling thread to finish and wait for it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        deadline = time.monotonic()
        while True:
            deadline = max(deadline + self._interval, time.monotonic())
            self._wake.wait(deadline - time.monotonic())
            if self._stop.is_set():
                return
            if self._wake.is_set():
                self._wake.clear()
                deadline = time.monotonic()
            with self._done:
                self._started += 1
                number = self._started
            try:
                self.sample_once()
            except Exception:  # a bug in one sample must not end sampling for good
                log.exception("sample failed")
            with self._done:
                self._finished = number
                self._done.notify_all()

    def _read_usage(self) -> bool:
        """Read group usage and system busy time and queue them for attribution; False on failure."""
        try:
            roots, owners = self._ledger.roots(), {}
            cgroups = self._ledger.cgroups()
            if cgroups and self._cgroupfs is not None:
                roots, owners = with_cgroup_roots(self._procfs, self._cgroupfs, roots, cgroups)
            cpu = self._procfs.cpu_times()
            self._total_memory_bytes = self._procfs.meminfo().total_bytes
            usage = self._groups.sample(roots, self._pause, born_in=cgroups.keys(), owners=owners)
        except SourceError as error:
            self._mark_down(PROCFS, error)
            return False
        if self._busy_cpu_seconds is not None:
            self._pending.busy_cpu_seconds += max(0.0, cpu.busy_seconds - self._busy_cpu_seconds)
        self._busy_cpu_seconds = cpu.busy_seconds
        for group, group_usage in usage.items():
            self._pending.group_cpu_seconds[group] += group_usage.cpu_seconds
        self._ledger.add_usage(usage)
        self._usage = usage
        self._up[PROCFS] = True
        return True

    def _read_energy(self) -> bool:
        """Read this interval's joules per domain and queue them for attribution; False on failure."""
        if self._energy is None:
            return False
        try:
            sample = self._energy.sample()
        except SourceError as error:
            self._mark_down(self._energy.name, error)
            return False
        self._energy_domains = sample.domains
        self._ledger.measure(reading.domain for reading in sample.domains)
        for reading in sample.domains:
            self._pending.energy_joules[reading.domain] += reading.joules_delta
        self._up[self._energy.name] = True
        return True

    def _read_gpus(self) -> None:
        """Read every GPU and attribute each one's interval right away to the groups with processes on it."""
        if self._gpu is None:
            return
        try:
            sample = self._gpu.sample()
        except SourceError as error:
            self._mark_down(self._gpu.name, error)
            return
        self._up[self._gpu.name] = True
        self._gpus = sample.gpus
        if sample.gpus:
            self._ledger.measure((GPU,))
        self._gpu_energy_method = sample.energy_method
        group_of = {pid: group for group, usage in self._usage.items() for pid in usage.pids}
        self._gpu_process_watts = {}
        for gpu in sample.gpus:
            if not gpu.up or gpu.elapsed_seconds <= 0:
                continue
            idle = self._gpu_idle_baseline(gpu)
            result = attribute_gpu_interval(
                gpu.energy_joules_delta, gpu.elapsed_seconds, idle, gpu.processes, group_of, self._gpu_idle_policy
            )
            self._ledger.add_energy({group: {GPU: joules} for group, joules in result.by_group.items()})
            self._ledger.add_gpu_seconds(result.gpu_seconds)
            self._unattributed[GPU] += result.unattributed
            for pid, joules in result.by_process.items():
                self._gpu_process_watts[(gpu.index, pid)] = joules / gpu.elapsed_seconds

    def _gpu_idle_baseline(self, gpu: GpuReading) -> float | None:
        """``--gpu.idle-watts``, else the lowest power this GPU has shown with no process on it."""
        if self._gpu_idle_fixed is not None:
            return self._gpu_idle_fixed
        learnt = lowest_idle_watts(
            self._gpu_idle_watts.get(gpu.index), gpu.energy_joules_delta / gpu.elapsed_seconds, len(gpu.processes)
        )
        self._gpu_idle_watts[gpu.index] = learnt
        return learnt

    def _attribute_pending(self) -> None:
        """Attribute the queued energy by the queued usage and add the result to the running totals."""
        pending = self._pending
        self._pending = _Pending()
        if not pending.energy_joules:
            return
        bases = {
            group: GroupShareBasis(
                cpu_seconds=cpu, memory_bytes=float(self._usage[group].memory_bytes), owner=str(group.uid)
            )
            for group, cpu in pending.group_cpu_seconds.items()
            if group in self._usage
        }
        attribution = attribute_interval(
            pending.energy_joules,
            bases,
            system_busy_cpu_seconds=pending.busy_cpu_seconds,
            total_memory_bytes=float(self._total_memory_bytes),
        )
        self._ledger.add_energy(attribution.by_group)
        for domain, joules in attribution.unattributed.items():
            self._unattributed[domain] += joules

    def _mark_down(self, source: str, error: SourceError) -> None:
        if self._up[source]:
            log.warning("source %s is down: %s", source, error)
        else:
            log.debug("source %s still down: %s", source, error)
        self._up[source] = False
        self._errors[source] += 1

    def _build_snapshot(self, duration: float) -> Snapshot:
        return Snapshot(
            timestamp=self._clock(),
            samples_total=self._samples,
            sample_duration_seconds=duration,
            sources=MappingProxyType(
                {name: SourceStatus(self._up[name], self._errors[name]) for name in self.source_names}
            ),
            energy_domains=self._energy_domains,
            unattributed_joules=MappingProxyType(dict(self._unattributed)),
            gpu_info=self._gpu.gpus if self._gpu is not None else (),
            gpus=self._gpus,
            gpu_energy_method=self._gpu_energy_method,
            gpu_process_watts=MappingProxyType(dict(self._gpu_process_watts)),
            process_names=MappingProxyType(self._process_names()),
        )

    def _process_names(self) -> dict[int, str]:
        """The comm of each process on a GPU (only those: they label per-process GPU series)."""
        names = {}
        for pid in {pid for _, pid in self._gpu_process_watts}:
            try:
                stat = self._procfs.process(pid)
            except SourceError:
                stat = None
            names[pid] = stat.comm if stat is not None else ""
        return names
