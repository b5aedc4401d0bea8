"""CPU package energy estimated from utilisation (``/proc/stat``) and the CPU's TDP, for machines without RAPL.

Cloud VMs, containers and non-root users often cannot read RAPL. This source stands in for ``RaplSource``
there behind the same interface (exporter/sources/energy.py), its readings marked estimated, so the sampler,
attribution and per-run metrics run unchanged. The model is deliberately simple (docs/attribution.md,
"Estimated CPU energy")::

    idle_watts    = idle_fraction * TDP
    package_watts = idle_watts + (TDP - idle_watts) * utilisation
    utilisation   = d(busy) / (d(busy) + d(idle))         over the interval, from the aggregate cpu line
    dram_watts    = dram_watts_per_gib * used GiB          (MemTotal - MemAvailable; only when a figure is given)

TDP comes from ``--cpu.tdp-watts``, else the bundled table ``exporter/data/cpu_tdp.csv`` (per package, times
the number of packages in ``/proc/cpuinfo``), else a rough 10 W per logical CPU. TDP is a thermal design
figure, not a measurement: expect errors of +-30% or more. The numbers are for comparing runs on one machine.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from impact_exporter.sources import HardwareNotFound, HardwareUnreadable, SourceError
from impact_exporter.sources.energy import DomainEnergy, EnergyDomain, EnergyReading
from impact_exporter.sources.procfs import CpuTimes, MemInfo, ProcFS, parse_cpuinfo

logger = logging.getLogger(__name__)

TDP_FLAG = "--cpu.tdp-watts"
DEFAULT_IDLE_FRACTION = 0.1
DEFAULT_WATTS_PER_LOGICAL_CPU = 10.0  # a rough guess for when the CPU is not in the table
BYTES_PER_GIB = 1024**3

TABLE_RESOURCE = "data/cpu_tdp.csv"
TABLE_COLUMNS = ["pattern", "tdp_watts", "cores", "source"]
_MAX_PLAUSIBLE_TDP_WATTS = 1000.0  # no single CPU package is rated above this


@dataclass(frozen=True)
class TdpRow:
    """One row of the bundled table: CPU models matching ``pattern`` are rated ``tdp_watts`` per package."""

    pattern: re.Pattern[str]  # searched case-insensitively in the cpuinfo model string
    tdp_watts: float
    cores: int  # physical cores per package, for reference
    source: str  # where the figure comes from, e.g. "Intel ARK"


@dataclass(frozen=True)
class Tdp:
    """The TDP the estimate uses for the whole machine (all packages), and where it came from."""

    watts: float
    source: str  # "--cpu.tdp-watts", "table: <model> (<source>)...", "default 10 W per logical CPU x N"


@dataclass(frozen=True)
class _State:
    """What one successful sample leaves behind for the next; ``joules_total`` is in ``domains`` order."""

    timestamp: float
    cpu: CpuTimes
    joules_total: tuple[float, ...]


# --- the TDP table -------------------------------------------------------------------------------------------------


def parse_tdp_table(text: str) -> tuple[TdpRow, ...]:
    """Rows of a ``pattern,tdp_watts,cores,source`` CSV, checked: valid unique patterns, sane numbers, a source."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames != TABLE_COLUMNS:
        raise ValueError(f"CPU TDP table must have columns {TABLE_COLUMNS}, not {reader.fieldnames}")
    rows: list[TdpRow] = []
    seen: set[str] = set()
    for line, row in enumerate(reader, start=2):
        pattern_text = (row["pattern"] or "").strip()
        if not pattern_text or pattern_text.lower() in seen:
            raise ValueError(f"line {line}: pattern {pattern_text!r} is empty or appears twice")
        seen.add(pattern_text.lower())
        try:
            pattern = re.compile(pattern_text, re.IGNORECASE)
            tdp_watts = float(row["tdp_watts"])
            cores = int(row["cores"])
        except (re.error, TypeError, ValueError) as error:
            raise ValueError(f"line {line}: bad pattern, tdp_watts or cores: {error}") from None
        if not (math.isfinite(tdp_watts) and 0 < tdp_watts <= _MAX_PLAUSIBLE_TDP_WATTS):
            raise ValueError(f"line {line}: implausible TDP {tdp_watts} W")
        if cores <= 0:
            raise ValueError(f"line {line}: cores must be positive, not {cores}")
        source = (row["source"] or "").strip()
        if not source:
            raise ValueError(f"line {line}: every row needs a source")
        rows.append(TdpRow(pattern, tdp_watts, cores, source))
    return tuple(rows)


@functools.cache
def tdp_table() -> tuple[TdpRow, ...]:
    """The bundled table ``exporter/data/cpu_tdp.csv``; validated on first use."""
    text = resources.files("impact_exporter").joinpath(TABLE_RESOURCE).read_text(encoding="utf-8")
    return parse_tdp_table(text)


def lookup_tdp(model: str, table: tuple[TdpRow, ...]) -> TdpRow | None:
    """The first row whose pattern occurs in ``model`` (case-insensitive), or None."""
    for row in table:
        if row.pattern.search(model):
            return row
    return None


# --- resolving the machine's TDP -----------------------------------------------------------------------------------


def parse_cpuinfo_packages(text: str) -> int:
    """The number of CPU packages (sockets): distinct ``physical id`` values in ``/proc/cpuinfo``.

    1 when there are none, as on ARM and in some VMs.
    """
    ids: set[str] = set()
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == "physical id":
            ids.add(value.strip())
    return max(1, len(ids))


def resolve_tdp(cpuinfo_text: str, table: tuple[TdpRow, ...]) -> Tdp:
    """The machine's TDP from its ``/proc/cpuinfo``: the table's figure times the packages, else the default.

    The default, 10 W per logical CPU, is a rough guess: it only keeps a machine with more CPUs from looking
    cheaper than one with fewer.
    """
    cpuinfo = parse_cpuinfo(cpuinfo_text)
    row = lookup_tdp(cpuinfo.model, table)
    if row is not None:
        packages = parse_cpuinfo_packages(cpuinfo_text)
        source = f"table: {cpuinfo.model} ({row.source})"
        if packages > 1:
            source += f", {row.tdp_watts:g} W x {packages} packages"
        return Tdp(row.tdp_watts * packages, source)
    cpus = max(1, cpuinfo.logical_cpus)
    source = f"default {DEFAULT_WATTS_PER_LOGICAL_CPU:g} W per logical CPU x {cpus}"
    return Tdp(DEFAULT_WATTS_PER_LOGICAL_CPU * cpus, source)


def _check_positive(value: float, what: str) -> float:
    """``value`` as a float if it is a finite number > 0; ValueError naming ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a finite number > 0, not {value!r}")
    return float(value)


def _read_cpuinfo(root: Path) -> str:
    """``<root>/cpuinfo`` as text, with read errors turned into the matching source errors."""
    path = root / "cpuinfo"
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError as error:
        raise HardwareNotFound(f"{path} does not exist") from error
    except PermissionError as error:
        raise HardwareUnreadable(f"{path}: permission denied") from error
    except OSError as error:
        raise SourceError(f"{path}: {error}") from error


# --- the model -----------------------------------------------------------------------------------------------------


def utilisation(before: CpuTimes, after: CpuTimes) -> float:
    """Busy fraction of all CPU time between two readings, in [0, 1]; 0 when no time passed (or it went back)."""
    busy = max(0.0, after.busy_seconds - before.busy_seconds)
    idle = max(0.0, after.idle_seconds - before.idle_seconds)
    if busy + idle <= 0:
        return 0.0
    return busy / (busy + idle)


def package_watts(tdp_watts: float, idle_fraction: float, busy_fraction: float) -> float:
    """Estimated package power: ``idle + (TDP - idle) * busy_fraction`` with ``idle = idle_fraction * TDP``."""
    idle_watts = idle_fraction * tdp_watts
    return idle_watts + (tdp_watts - idle_watts) * busy_fraction


def used_gib(memory: MemInfo) -> float:
    """Memory in use (MemTotal - MemAvailable) in GiB, never negative."""
    return max(0, memory.total_bytes - memory.available_bytes) / BYTES_PER_GIB


class EstimateSource:
    """CPU package energy estimated from utilisation (/proc/stat) and the CPU's TDP.

    Its readings are marked estimated. Like RAPL it keeps monotonic joule totals, and ``sample()`` is
    all-or-nothing: it leaves the previous reading in place on failure, so the next good sample covers the outage
    (CPU ticks are cumulative, like RAPL counters).
    """

    name = "estimate"  # also the method label of its readings

    def __init__(
        self,
        procfs: ProcFS,
        tdp_watts: float | None = None,
        idle_fraction: float = DEFAULT_IDLE_FRACTION,
        dram_watts_per_gib: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Resolve the TDP now (reading ``/proc/cpuinfo`` unless ``tdp_watts`` is given).

        Raises ValueError for a ``tdp_watts`` or ``dram_watts_per_gib`` that is not a finite number > 0 or an
        ``idle_fraction`` outside [0, 1], and a SourceError when cpuinfo is needed and cannot be read.
        """
        if isinstance(idle_fraction, bool) or not (
            isinstance(idle_fraction, (int, float)) and math.isfinite(idle_fraction) and 0 <= idle_fraction <= 1
        ):
            raise ValueError(f"idle fraction must be a number from 0 to 1, not {idle_fraction!r}")
        self._procfs = procfs
        self._clock = clock
        self._idle_fraction = float(idle_fraction)
        self._dram_watts_per_gib = (
            None if dram_watts_per_gib is None else _check_positive(dram_watts_per_gib, "DRAM watts per GiB")
        )
        if tdp_watts is not None:
            self._tdp = Tdp(_check_positive(tdp_watts, TDP_FLAG), TDP_FLAG)
        else:
            self._tdp = resolve_tdp(_read_cpuinfo(procfs.root), tdp_table())
        domains = [EnergyDomain("estimate:package", "package", "0")]
        if self._dram_watts_per_gib is not None:
            domains.append(EnergyDomain("estimate:dram", "dram", "0"))
        self._domains = tuple(domains)
        self._state: _State | None = None
        logger.info("estimating CPU energy from utilisation: TDP %g W (%s)", self._tdp.watts, self._tdp.source)

    @property
    def domains(self) -> tuple[EnergyDomain, ...]:
        """The estimated domains, in the order ``sample()`` reports them: package, then dram when configured."""
        return self._domains

    @property
    def tdp_watts(self) -> float:
        """The TDP of the whole machine (all packages) the estimate uses."""
        return self._tdp.watts

    @property
    def tdp_source(self) -> str:
        """Where the TDP came from, for logs and reports."""
        return self._tdp.source

    @property
    def idle_fraction(self) -> float:
        """The fraction of TDP drawn with every CPU idle."""
        return self._idle_fraction

    @property
    def dram_watts_per_gib(self) -> float | None:
        """Watts per GiB of used memory, or None when DRAM is not estimated."""
        return self._dram_watts_per_gib

    def check_readable(self) -> None:
        """Raise unless ``/proc/stat`` (and ``/proc/meminfo`` when DRAM is estimated) can be read and parsed.

        Raises HardwareNotFound when the file is absent, HardwareUnreadable on a permission error, SourceError
        otherwise; meant for start-up, to fail early.
        """
        self._procfs.cpu_times()
        if self._dram_watts_per_gib is not None:
            self._procfs.meminfo()

    def sample(self) -> EnergyReading:
        """Read CPU times (and memory) and return each domain's estimated energy; raise (state untouched) on failure.

        The first sample sets the baseline: totals 0, delta 0. Later ones add the interval's estimate.
        """
        cpu = self._procfs.cpu_times()
        memory = self._procfs.meminfo() if self._dram_watts_per_gib is not None else None
        timestamp = self._clock()
        previous = self._state
        if previous is None:
            elapsed = 0.0
            deltas = tuple(0.0 for _ in self._domains)
            totals = deltas
        else:
            elapsed = max(0.0, timestamp - previous.timestamp)
            deltas = self._interval_joules(elapsed, utilisation(previous.cpu, cpu), memory)
            totals = tuple(total + delta for total, delta in zip(previous.joules_total, deltas, strict=True))
        self._state = _State(timestamp, cpu, totals)
        return EnergyReading(
            timestamp=timestamp,
            elapsed_seconds=elapsed,
            domains=tuple(
                DomainEnergy.of(domain, total, delta, self.name, measured=False)
                for domain, total, delta in zip(self._domains, totals, deltas, strict=True)
            ),
        )

    def _interval_joules(self, elapsed: float, busy_fraction: float, memory: MemInfo | None) -> tuple[float, ...]:
        """Estimated joules of each domain over ``elapsed`` seconds, in ``domains`` order."""
        joules = [elapsed * package_watts(self._tdp.watts, self._idle_fraction, busy_fraction)]
        if self._dram_watts_per_gib is not None and memory is not None:
            joules.append(elapsed * self._dram_watts_per_gib * used_gib(memory))
        return tuple(joules)
