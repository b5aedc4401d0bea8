"""A stand-in for the ``pynvml`` module: the same function names and error classes, GPUs from a list.

Only the functions experiment_impact_tracker.gpu.nvidia calls are here; ``test_gpu.py`` checks that each of
them exists, under that name, in the real pynvml.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace


class NVMLError(Exception):
    """pynvml's base error."""


class NVMLError_NotSupported(NVMLError):  # noqa: N801 (pynvml's name)
    def __str__(self) -> str:
        return "Not Supported"


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801
    def __str__(self) -> str:
        return "NVML Shared Library Not Found"


@dataclass
class FakeGPU:
    name: str = "NVIDIA A100-SXM4-40GB"
    uuid: str = "GPU-8c3a0f6e-0000-0000-0000-000000000000"
    bus_id: str = "00000000:07:00.0"
    memory_total_bytes: int = 42_949_672_960
    compute_capability: tuple[int, int] = (8, 0)
    power_limit_mw: int = 400_000
    unsupported: set[str] = field(default_factory=set)


class FakeNVML:
    """Module-like: ``FakeNVML([FakeGPU(), ...])`` answers as pynvml would on that machine."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported

    def __init__(
        self,
        gpus: list[FakeGPU],
        driver_version: str | bytes = "535.104.05",
        cuda_driver_version: int = 12020,
        init_error: NVMLError | None = None,
    ) -> None:
        self.gpus = gpus
        self.driver_version = driver_version
        self.cuda_driver_version = cuda_driver_version
        self.init_error = init_error
        self.initialised = 0

    def nvmlInit(self) -> None:  # noqa: N802 (pynvml's names)
        if self.init_error is not None:
            raise self.init_error
        self.initialised += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str | bytes:  # noqa: N802
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:  # noqa: N802
        return self.cuda_driver_version

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGPU:  # noqa: N802
        return self.gpus[index]

    def _get(self, gpu: FakeGPU, attribute: str, value: object) -> object:
        if attribute in gpu.unsupported:
            raise NVMLError_NotSupported()
        return value

    def nvmlDeviceGetName(self, gpu: FakeGPU) -> str:  # noqa: N802
        return self._get(gpu, "name", gpu.name)

    def nvmlDeviceGetUUID(self, gpu: FakeGPU) -> str:  # noqa: N802
        return self._get(gpu, "uuid", gpu.uuid)

    def nvmlDeviceGetPciInfo(self, gpu: FakeGPU) -> SimpleNamespace:  # noqa: N802
        return self._get(gpu, "pci", SimpleNamespace(busId=gpu.bus_id.encode()))  # a char array in pynvml

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGPU) -> SimpleNamespace:  # noqa: N802
        return self._get(gpu, "memory", SimpleNamespace(total=gpu.memory_total_bytes, free=0, used=0))

    def nvmlDeviceGetCudaComputeCapability(self, gpu: FakeGPU) -> tuple[int, int]:  # noqa: N802
        return self._get(gpu, "compute_capability", gpu.compute_capability)

    def nvmlDeviceGetPowerManagementLimit(self, gpu: FakeGPU) -> int:  # noqa: N802
        return self._get(gpu, "power_limit", gpu.power_limit_mw)


NVML_FUNCTIONS = [name for name in vars(FakeNVML) if name.startswith("nvml")]
