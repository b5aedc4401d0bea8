"""Hardware and kernel sources.

A source reads one kind of hardware (or kernel accounting) and returns plain frozen dataclasses. It keeps only
the state it needs to turn raw counters into monotonic ones; it knows nothing of Prometheus.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from exporter.sources.rapl import RaplSample


class SourceError(Exception):
    """A source could not be read this time; the sampler marks the source down and counts the error."""


class HardwareNotFound(SourceError):
    """The hardware or kernel interface is absent on this machine (a VM without RAPL, no NVIDIA driver)."""


class HardwareUnreadable(SourceError):
    """The interface exists but this process may not read it (for example root-only ``energy_uj``)."""


class EnergySource(Protocol):
    """A source of CPU package (and DRAM) energy: RAPL counters, or an estimate where they are missing.

    ``method`` names it in ``impact_source_up{source}`` and ``impact_energy_source_info{method}``.
    """

    method: str

    def sample(self) -> RaplSample: ...
