"""A stand-in for the ``pynvml`` module, for tests of exporter/sources/nvml.py and of the client's GPU checks
(experiment_impact_tracker/gpu/nvidia.py) on machines without a GPU.

It has the functions the NVML source calls, under pynvml's names and with pynvml's parameter names; it returns
pynvml's own result types (``c_nvmlMemory_t``, ``c_nvmlUtilization_t``, ``c_nvmlProcessUtilizationSample_t``,
``nvmlFriendlyObject``) and raises real ``pynvml.NVMLError(pynvml.NVML_ERROR_...)`` instances, so the source's
``except`` clauses meet exactly what the real library raises. tests/exporter/sources/test_nvml.py checks every
function here against the real pynvml's signature, so the fake cannot drift from it.

Tests drive a scenario: GPUs whose power the test sets and whose energy counters the fake's clock advances,
processes with per-tick SM utilisation (a list of slices the driver's sampling ticks cycle through, which is how
time slicing looks to NVML), and switches for what a GPU does not support::

    nvml = FakeNvml([FakeGpu("GPU-aaaa..."), FakeGpu("GPU-bbbb...", energy_counter=False)])
    nvml.gpus[0].power_watts = 250.0
    nvml.gpus[0].processes = {101: 4 * GIB}
    nvml.gpus[0].slices = [{101: 80}]
    source = NvmlSource(nvml=nvml, clock=nvml.clock)
    source.sample()
    nvml.advance(1.0)
    source.sample()
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # the "pynvml" shim package warns on import
    import pynvml

GIB = 1 << 30
US_PER_SECOND = 1_000_000
MJ_PER_JOULE = 1000
MW_PER_WATT = 1000
DRIVER_SAMPLE_BUFFER = 1024
"""Process utilisation samples a fake GPU keeps, newest last: like the driver's buffer, it is bounded, so a long
run does not make each query slower."""


class FakeClock:
    """A clock in seconds that stands still until the scenario moves it; the source is built with it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeGpu:
    """One GPU of the scenario. Tests change its fields between samples; ``FakeNvml.advance`` moves its counters."""

    uuid: str
    name: str | bytes = "NVIDIA A100-SXM4-40GB"  # bytes: as older nvidia-ml-py releases return it
    memory_total_bytes: int = 40 * GIB
    bus_id: str = "00000000:07:00.0"
    compute_capability: tuple[int, int] = (8, 0)
    power_limit_mw: int = 400_000
    memory_used_bytes: int = 0
    power_watts: float = 60.0  # what the GPU draws now: the power reading, and the rate the counter advances at
    energy_joules: float = 0.0  # the counter since "driver load"; read as whole millijoules
    utilization_percent: int = 0
    processes: dict[int, int | None] = field(default_factory=dict)  # pid -> usedGpuMemory (None: not available)
    slices: list[dict[int, int]] = field(default_factory=list)  # pid -> smUtil per driver tick, cycled
    energy_counter: bool = True  # False: nvmlDeviceGetTotalEnergyConsumption is NOT_SUPPORTED (pre-Volta)
    power_supported: bool = True
    utilization_supported: bool = True
    process_utilization_supported: bool = True
    mig_mode: int | None = pynvml.NVML_DEVICE_MIG_DISABLE  # current mode; None: NOT_SUPPORTED
    lost: bool = False  # every call on the GPU fails with GPU_IS_LOST
    errors: dict[str, int] = field(default_factory=dict)  # function name -> NVML_ERROR_* it raises
    samples: deque[Any] = field(default_factory=lambda: deque(maxlen=DRIVER_SAMPLE_BUFFER))  # oldest drop out
    _next_slice: int = 0


class FakeNvml:
    """Module-like: answers as pynvml would on a machine with ``gpus``, and records every call in ``calls``."""

    NVMLError = pynvml.NVMLError
    NVMLLibraryMismatchError = pynvml.NVMLLibraryMismatchError
    NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_NO_PERMISSION = pynvml.NVML_ERROR_NO_PERMISSION
    NVML_ERROR_NOT_FOUND = pynvml.NVML_ERROR_NOT_FOUND
    NVML_ERROR_GPU_IS_LOST = pynvml.NVML_ERROR_GPU_IS_LOST
    NVML_ERROR_FUNCTION_NOT_FOUND = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND
    NVML_ERROR_LIBRARY_NOT_FOUND = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    NVML_ERROR_DRIVER_NOT_LOADED = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    NVML_DEVICE_MIG_ENABLE = pynvml.NVML_DEVICE_MIG_ENABLE
    NVML_DEVICE_MIG_DISABLE = pynvml.NVML_DEVICE_MIG_DISABLE

    def __init__(
        self,
        gpus: list[FakeGpu],
        driver_version: str | bytes = "550.54.15",
        cuda_driver_version: int = 12040,
        init_error: int | None = None,
        clock: FakeClock | None = None,
        tick_seconds: float = 0.25,
    ) -> None:
        self.gpus = gpus
        self.driver_version = driver_version
        self.cuda_driver_version = cuda_driver_version
        self.init_error = init_error  # an NVML_ERROR_* that nvmlInit raises (LIBRARY_NOT_FOUND: no driver)
        self.clock = clock if clock is not None else FakeClock()
        self.tick_seconds = tick_seconds  # the driver's process utilisation sampling period
        self.initialised = 0
        self.calls: list[str] = []
        self._last_tick = self.clock.now

    def advance(self, seconds: float) -> None:
        """Move the clock: each GPU's counter adds its power times ``seconds``, each driver tick records samples."""
        self.clock.now += seconds
        for gpu in self.gpus:
            if not gpu.lost:
                gpu.energy_joules += gpu.power_watts * seconds
        tick = self._last_tick + self.tick_seconds
        while tick <= self.clock.now:
            for gpu in self.gpus:
                self._record_tick(gpu, tick)
            self._last_tick = tick
            tick += self.tick_seconds

    def _record_tick(self, gpu: FakeGpu, at: float) -> None:
        """Buffer one driver sample per process that ran in this tick, from the GPU's next slice."""
        if gpu.lost or not gpu.slices:
            return
        current = gpu.slices[gpu._next_slice % len(gpu.slices)]
        gpu._next_slice += 1
        for pid, sm in current.items():
            gpu.samples.append(
                pynvml.c_nvmlProcessUtilizationSample_t(
                    pid=pid, timeStamp=round(at * US_PER_SECOND), smUtil=sm, memUtil=0, encUtil=0, decUtil=0
                )
            )

    # --- the pynvml functions -------------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.calls.append("nvmlShutdown")
        if self.initialised == 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        self._check("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._check("nvmlSystemGetCudaDriverVersion")
        return self.cuda_driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._check("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        self._check("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self.gpus[index]

    def nvmlDeviceGetUUID(self, handle: FakeGpu) -> str:
        self._check("nvmlDeviceGetUUID", handle)
        return handle.uuid

    def nvmlDeviceGetName(self, handle: FakeGpu) -> str | bytes:
        self._check("nvmlDeviceGetName", handle)
        return handle.name

    def nvmlDeviceGetPciInfo(self, handle: FakeGpu) -> Any:
        self._check("nvmlDeviceGetPciInfo", handle)
        return pynvml.nvmlPciInfo_t(busId=handle.bus_id.encode())

    def nvmlDeviceGetCudaComputeCapability(self, handle: FakeGpu) -> tuple[int, int]:
        self._check("nvmlDeviceGetCudaComputeCapability", handle)
        return handle.compute_capability

    def nvmlDeviceGetPowerManagementLimit(self, handle: FakeGpu) -> int:
        self._check("nvmlDeviceGetPowerManagementLimit", handle)
        return handle.power_limit_mw

    def nvmlDeviceGetMemoryInfo(self, handle: FakeGpu, version: int | None = None) -> Any:
        self._check("nvmlDeviceGetMemoryInfo", handle)
        if version:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)  # the v2 struct is not faked
        used = handle.memory_used_bytes
        return pynvml.c_nvmlMemory_t(total=handle.memory_total_bytes, free=handle.memory_total_bytes - used, used=used)

    def nvmlDeviceGetMigMode(self, device: FakeGpu) -> list[int]:
        self._check("nvmlDeviceGetMigMode", device, supported=device.mig_mode is not None)
        assert device.mig_mode is not None
        return [device.mig_mode, device.mig_mode]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: FakeGpu) -> int:
        self._check("nvmlDeviceGetTotalEnergyConsumption", handle, supported=handle.energy_counter)
        return int(handle.energy_joules * MJ_PER_JOULE)

    def nvmlDeviceGetPowerUsage(self, handle: FakeGpu) -> int:
        self._check("nvmlDeviceGetPowerUsage", handle, supported=handle.power_supported)
        return round(handle.power_watts * MW_PER_WATT)

    def nvmlDeviceGetUtilizationRates(self, handle: FakeGpu) -> Any:
        self._check("nvmlDeviceGetUtilizationRates", handle, supported=handle.utilization_supported)
        return pynvml.c_nvmlUtilization_t(gpu=handle.utilization_percent, memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeGpu) -> list[Any]:
        self._check("nvmlDeviceGetComputeRunningProcesses", handle)
        return [
            pynvml.nvmlFriendlyObject(
                {"pid": pid, "usedGpuMemory": used, "gpuInstanceId": 0xFFFFFFFF, "computeInstanceId": 0xFFFFFFFF}
            )
            for pid, used in handle.processes.items()
        ]

    def nvmlDeviceGetProcessUtilization(self, handle: FakeGpu, timeStamp: int) -> list[Any]:
        self._check("nvmlDeviceGetProcessUtilization", handle, supported=handle.process_utilization_supported)
        newer = [sample for sample in handle.samples if sample.timeStamp > timeStamp]
        if not newer:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return newer

    def _check(self, function: str, handle: FakeGpu | None = None, supported: bool = True) -> None:
        """Record the call and raise what the real library would: uninitialised, lost, unsupported, scripted."""
        self.calls.append(function)
        if self.initialised == 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        if handle is None:
            return
        if handle.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        if function in handle.errors:
            raise pynvml.NVMLError(handle.errors[function])
        if not supported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)


def nvml_functions(module: object) -> Mapping[str, Any]:
    """The ``nvml*`` functions ``module`` (pynvml or a FakeNvml) offers, by name."""
    return {
        name: getattr(module, name)
        for name in dir(module)
        if name.startswith("nvml") and callable(getattr(module, name))
    }
