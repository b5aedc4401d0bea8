"""The GPU interface: what every GPU source returns, whatever the vendor.

NVML (nvml.py) implements it for NVIDIA GPUs; another vendor would be one more module returning these readings.
The sampler and the collector know GPUs only through this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

EnergyMethod = Literal["counter", "power-integration", "none"]
COUNTER: EnergyMethod = "counter"  # a hardware energy counter
POWER_INTEGRATION: EnergyMethod = "power-integration"  # power readings integrated over the source's clock
NO_ENERGY: EnergyMethod = "none"


@dataclass(frozen=True)
class GpuInfo:
    """What a GPU is, read once at start-up: the labels of ``impact_gpu_info``."""

    index: int  # the driver's index, the nvidia-smi number for NVML (not the CUDA ordinal under CUDA_VISIBLE_DEVICES)
    uuid: str  # "GPU-..."
    name: str  # e.g. "NVIDIA A100-SXM4-40GB"
    driver_version: str | None  # e.g. "550.54.15"
    cuda_version: str | None  # the highest CUDA version the driver supports, e.g. "12.4"
    memory_total_bytes: int | None
    mig_enabled: bool  # MIG mode on: per-process figures are not reported for this GPU
    energy_counter: bool  # True: energy from the hardware counter; False: integrated from power


@dataclass(frozen=True)
class GpuProcess:
    """One process on a GPU in the last interval: a running compute process, or one seen in utilisation samples."""

    pid: int  # in the host's PID namespace (the driver's view)
    used_memory_bytes: int | None  # None: not reported (not running any more, or a driver that cannot say)
    sm_utilization_ratio: float | None  # 0..1 over the interval; None: process utilisation unsupported


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one sample. When ``up`` is False only the identity and the kept energy total are meaningful."""

    index: int
    uuid: str
    up: bool
    energy_method: EnergyMethod
    energy_joules_total: float | None  # cumulative, never decreases; None when the GPU reports no energy or power
    energy_joules_delta: float  # since the previous energy reading (0.0 on the first and when down)
    elapsed_seconds: float  # the span energy_joules_delta covers (0.0 when it covers none)
    power_watts: float | None
    utilization_ratio: float | None  # fraction of time a kernel ran, 0..1
    memory_used_bytes: int | None
    processes: tuple[GpuProcess, ...]
    mig_enabled: bool  # per-process figures are missing because the GPU is in MIG mode


@dataclass(frozen=True)
class GpuSample:
    """Every GPU of a source read at one sample, in the order of its ``gpus``."""

    timestamp: float  # the source's clock when read
    elapsed_seconds: float  # since the previous sample (0.0 on the first)
    gpus: tuple[GpuReading, ...]
    energy_method: str | None = None  # how the GPUs' energy was obtained, the label of
    # impact_energy_source_info{component="gpu",method}: one label for them all; None when none has energy


class GpuSource(Protocol):
    """A source of GPUs. ``name`` labels it in ``impact_source_up{source}``; ``gpus`` are found at construction.

    ``sample`` never raises for one GPU's failure: that GPU is reported down and the others are read as usual;
    it raises a ``SourceError`` only when no GPU could be read at all. ``close`` releases the driver.
    """

    name: str

    @property
    def gpus(self) -> tuple[GpuInfo, ...]: ...

    def sample(self) -> GpuSample: ...

    def close(self) -> None: ...
