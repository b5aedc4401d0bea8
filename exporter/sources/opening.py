"""Which CPU energy and GPU sources to read on this machine, as ``--cpu.source`` and ``--gpu.source`` ask.

The exporter (exporter/cli.py) and the standalone monitor (exporter/standalone.py) choose their sources the same
way: RAPL where it is readable, else the estimate with a warning; NVML where a driver and a GPU are there. Nothing
here needs the exporter's extra, so an experiment that measures itself without an exporter uses it too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from impact_exporter.sources import HardwareNotFound, SourceError
from impact_exporter.sources.energy import CpuEnergySource
from impact_exporter.sources.estimate import EstimateSource
from impact_exporter.sources.nvml import NvmlSource
from impact_exporter.sources.procfs import ProcFS
from impact_exporter.sources.rapl import RaplSource

log = logging.getLogger("impact_exporter")

CPU_SOURCES = ("auto", "rapl", "estimate", "none")
GPU_SOURCES = ("auto", "nvml", "none")


def open_cpu_energy(
    source: str,
    sysfs: Path,
    procfs: ProcFS,
    tdp_watts: float | None = None,
    idle_fraction: float = 0.1,
    dram_watts_per_gib: float | None = None,
) -> CpuEnergySource | None:
    """The CPU energy source ``source`` (one of CPU_SOURCES) asks for; SourceError when it cannot work here.

    ``auto`` logs why RAPL cannot be used and that the estimate replaces it (both warnings)."""
    if source == "none":
        return None
    if source in ("auto", "rapl"):
        rapl = RaplSource(sysfs)
        try:
            rapl.check_readable()
            return rapl
        except SourceError as error:
            if source == "rapl":
                raise
            log.warning("RAPL cannot be used: %s", error)
    estimate = EstimateSource(procfs, tdp_watts, idle_fraction, dram_watts_per_gib)
    estimate.check_readable()
    log.warning(
        "CPU energy is ESTIMATED from utilisation and a TDP of %.0f W (%s), not measured: expect errors of "
        "30%% or more; reports mark it as estimated",
        estimate.tdp_watts,
        estimate.tdp_source,
    )
    return estimate


def open_gpus(source: str, devices: Sequence[str] | None = None, nvml: ModuleType | None = None) -> NvmlSource | None:
    """The NVML source ``source`` (one of GPU_SOURCES) asks for; ``nvml`` replaces the pynvml module (tests inject
    a fake). HardwareNotFound without a driver or GPU when ``source`` is ``nvml``; with ``auto``, None."""
    if source == "none":
        return None
    try:
        gpus = NvmlSource(nvml=nvml, devices=devices)
    except HardwareNotFound as error:
        if source == "nvml":
            raise
        log.info("%s; no GPU metrics (--gpu.source=none silences this)", error)
        return None
    for gpu in gpus.gpus:
        if gpu.mig_enabled:
            log.warning(
                "GPU %s (%s) is in MIG mode: NVML reports no per-process figures for it, so its energy is measured "
                "but not attributed to runs",
                gpu.index,
                gpu.uuid,
            )
    return gpus
