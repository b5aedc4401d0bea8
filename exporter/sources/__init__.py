"""Hardware and kernel sources.

A source reads one kind of hardware (or kernel accounting) and returns plain frozen dataclasses. It keeps only
the state it needs to turn raw counters into monotonic ones; it knows nothing of Prometheus. Each kind of hardware
has one interface, with neutral readings: CPU and DRAM energy in energy.py (rapl.py measures, estimate.py
models), GPUs in gpu.py (nvml.py). procfs.py reads the kernel's process accounting.
"""

from __future__ import annotations


class SourceError(Exception):
    """A source could not be read this time; the sampler marks the source down and counts the error."""


class HardwareNotFound(SourceError):
    """The hardware or kernel interface is absent on this machine (a VM without RAPL, no NVIDIA driver)."""


class HardwareUnreadable(SourceError):
    """The interface exists but this process may not read it (for example root-only ``energy_uj``)."""
