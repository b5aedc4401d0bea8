"""The CPU and DRAM energy interface: what every CPU energy source returns, whatever measures or models it.

RAPL counters (rapl.py) measure; the estimate (estimate.py) models. Each domain's reading carries its method label
and whether it was measured, so the sampler, the collector and the reports need not know which source made it. A
new source (another vendor's counters) is one more module that implements ``CpuEnergySource``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class EnergyDomain:
    """One energy domain of a source, and the labels its figures get."""

    name: str  # the source's own name for it, e.g. "intel-rapl:0:1" or "estimate:package"
    domain: str  # "package" | "dram" | "core" | "uncore" | "psys"
    package: str  # label value, e.g. "0"


@dataclass(frozen=True)
class DomainEnergy:
    """One domain's energy at one sample, and how it was obtained."""

    name: str  # the domain's name in its source (EnergyDomain.name)
    domain: str  # "package" | "dram" | "core" | "uncore" | "psys"
    package: str  # label value, e.g. "0"
    joules_total: float  # cumulative, never decreases
    joules_delta: float  # since the previous successful sample (0.0 on the first)
    method: str  # how it was obtained, the label of impact_energy_source_info{method}: "rapl", "estimate"
    measured: bool  # False: modelled, not measured

    @classmethod
    def of(cls, domain: EnergyDomain, total: float, delta: float, method: str, measured: bool) -> DomainEnergy:
        """The reading of ``domain``: its labels with these figures."""
        return cls(domain.name, domain.domain, domain.package, total, delta, method, measured)


@dataclass(frozen=True)
class EnergyReading:
    """Every domain of a source read at (nearly) the same moment; produced only when all could be read."""

    timestamp: float  # the source's clock when read
    elapsed_seconds: float  # since the previous successful reading (0.0 on the first)
    domains: tuple[DomainEnergy, ...]


class CpuEnergySource(Protocol):
    """A source of CPU package (and DRAM) energy.

    ``name`` labels the source in ``impact_source_up{source}``. ``sample`` is all-or-nothing: it raises a
    ``SourceError`` and leaves its state as it was, so the next reading covers the outage.
    """

    name: str

    def check_readable(self) -> None: ...

    def sample(self) -> EnergyReading: ...
