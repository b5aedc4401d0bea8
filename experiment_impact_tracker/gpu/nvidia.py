"""What the NVIDIA GPUs are, from NVML, and a check that an experiment runs on the GPUs it expects.

::

    assert_gpus_by_attributes({"name": "NVIDIA A100-SXM4-40GB", "driver_version": "535.104.05"})

Every visible GPU must match. Visible means what CUDA would use: all GPUs NVML reports, narrowed by
``CUDA_VISIBLE_DEVICES`` (indices or ``GPU-<uuid prefix>`` entries, read the way CUDA reads them: up to the
first entry that names no GPU). Attributes, one dict per GPU:

==================  =====  ==========================================================
``index``           int    NVML index (the ``nvidia-smi`` number)
``name``            str    product name, e.g. ``"NVIDIA H100 80GB HBM3"``
``uuid``            str    ``"GPU-..."``
``pci_bus_id``      str    e.g. ``"00000000:3B:00.0"``
``memory_total_bytes``  int  framebuffer memory
``driver_version``  str    e.g. ``"535.104.05"``
``cuda_version``    str    highest CUDA version the driver supports, e.g. ``"12.2"``
``compute_capability``  str  e.g. ``"8.0"``
``power_limit_watts``   float  power management limit
==================  =====  ==========================================================

``total_memory``, the original experiment-impact-tracker's attribute, is an alias: ``memory_total_bytes`` as
nvidia-smi printed it, ``"<MiB> MiB"`` (e.g. ``"40960 MiB"``).

An attribute the GPU does not support (NVML_ERROR_NOT_SUPPORTED and the like) is ``None``. ``pynvml`` is imported
lazily through experiment_impact_tracker/gpu/nvml.py (shared with the exporter); every function takes ``nvml=`` so
tests can pass a fake module with the same functions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from experiment_impact_tracker.errors import ImpactTrackerError
from experiment_impact_tracker.gpu.nvml import cuda_version_text, cuda_visible_indices, import_pynvml, nvml_text

MIB = 1 << 20
ALIASES = {"total_memory": "memory_total_bytes"}
"""The original experiment-impact-tracker's attribute names (nvidia-smi's) mapped to the attributes they read."""
GPU_ATTRIBUTES = (
    "index",
    "name",
    "uuid",
    "pci_bus_id",
    "memory_total_bytes",
    "driver_version",
    "cuda_version",
    "compute_capability",
    "power_limit_watts",
)


class NoNvidiaGPU(ImpactTrackerError):
    """NVML cannot be loaded or initialised, or it sees no GPU."""


class GPUAttributeAssertionError(ImpactTrackerError, AssertionError):
    """A visible GPU is not what the experiment asked for, no GPU is visible, or an attribute is unknown."""


def list_gpus(nvml: Any = None, environ: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The visible GPUs' attributes (see the module docstring); raises NoNvidiaGPU when NVML cannot be used."""
    environ = os.environ if environ is None else environ
    try:
        nvml = import_pynvml() if nvml is None else nvml
    except ImportError as error:
        raise NoNvidiaGPU(f"no NVIDIA GPU is visible: pynvml cannot be imported ({error})") from error
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as error:
        raise NoNvidiaGPU(f"no NVIDIA GPU is visible: NVML cannot start ({_text(error)})") from error
    try:
        driver = _optional(nvml, nvml.nvmlSystemGetDriverVersion)
        cuda = _optional(nvml, nvml.nvmlSystemGetCudaDriverVersion)
        gpus = [
            _describe(nvml, index, nvml.nvmlDeviceGetHandleByIndex(index), driver, cuda)
            for index in range(nvml.nvmlDeviceGetCount())
        ]
    except nvml.NVMLError as error:
        raise NoNvidiaGPU(f"NVML cannot list the GPUs: {_text(error)}") from error
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass
    return visible(gpus, environ.get("CUDA_VISIBLE_DEVICES"))


def gpus_or_none(nvml: Any = None, environ: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """``list_gpus()``, or ``[]`` on a machine without NVIDIA GPUs, for records that describe any machine."""
    try:
        return list_gpus(nvml, environ)
    except NoNvidiaGPU:
        return []


def visible(gpus: list[dict[str, Any]], cuda_visible_devices: str | None) -> list[dict[str, Any]]:
    """The GPUs CUDA would use under ``CUDA_VISIBLE_DEVICES``, in its order (unset: all of them).

    Entries are NVML indices or UUID prefixes (``GPU-8c3a``); like CUDA, reading stops at the first entry that
    names no GPU, so ``"0,x,1"`` is GPU 0 only and ``""`` is none.
    """
    by_index = {gpu["index"]: gpu for gpu in gpus}
    indices = cuda_visible_indices(((gpu["index"], str(gpu["uuid"] or "")) for gpu in gpus), cuda_visible_devices)
    return [by_index[index] for index in indices]


def assert_gpus_by_attributes(
    attributes: Mapping[str, Any], nvml: Any = None, environ: Mapping[str, str] | None = None
) -> None:
    """Raise GPUAttributeAssertionError unless every visible GPU has exactly these attribute values.

    Also raised when no NVIDIA GPU is visible (an experiment that asserts GPUs must not run without them) and
    for a key that is not one of GPU_ATTRIBUTES.
    """
    unknown = [key for key in attributes if key not in GPU_ATTRIBUTES and key not in ALIASES]
    if unknown:
        raise GPUAttributeAssertionError(
            f"unknown GPU attribute(s) {', '.join(map(repr, unknown))}; known: {', '.join(GPU_ATTRIBUTES)} "
            f"(aliases: {', '.join(f'{alias} for {target}' for alias, target in ALIASES.items())})"
        )
    try:
        gpus = list_gpus(nvml, environ)
    except NoNvidiaGPU as error:
        raise GPUAttributeAssertionError(str(error)) from error
    if not gpus:
        raise GPUAttributeAssertionError(
            "no NVIDIA GPU is visible (NVML sees none, or CUDA_VISIBLE_DEVICES hides them all)"
        )
    problems = [
        f"GPU {gpu['index']} ({gpu['name']}): {key} expected {expected!r}, found {attribute(gpu, key)!r}"
        for gpu in gpus
        for key, expected in attributes.items()
        if attribute(gpu, key) != expected
    ]
    if problems:
        raise GPUAttributeAssertionError("GPU does not match: " + "; ".join(problems))


def attribute(gpu: Mapping[str, Any], key: str) -> Any:
    """A GPU's attribute by its name or its alias: ``total_memory`` is ``memory_total_bytes`` as ``"<MiB> MiB"``."""
    if key == "total_memory":
        total = gpu.get("memory_total_bytes")
        return None if total is None else f"{total // MIB} MiB"
    return gpu[key]


def _describe(nvml: Any, index: int, handle: Any, driver: Any, cuda: Any) -> dict[str, Any]:
    memory = _optional(nvml, nvml.nvmlDeviceGetMemoryInfo, handle)
    capability = _optional(nvml, nvml.nvmlDeviceGetCudaComputeCapability, handle)
    pci = _optional(nvml, nvml.nvmlDeviceGetPciInfo, handle)
    limit_mw = _optional(nvml, nvml.nvmlDeviceGetPowerManagementLimit, handle)
    return {
        "index": index,
        "name": _text(_optional(nvml, nvml.nvmlDeviceGetName, handle)),
        "uuid": _text(_optional(nvml, nvml.nvmlDeviceGetUUID, handle)),
        "pci_bus_id": _text(pci.busId) if pci is not None else None,
        "memory_total_bytes": int(memory.total) if memory is not None else None,
        "driver_version": _text(driver),
        "cuda_version": cuda_version_text(cuda) if isinstance(cuda, int) else None,
        "compute_capability": f"{capability[0]}.{capability[1]}" if capability is not None else None,
        "power_limit_watts": limit_mw / 1000 if limit_mw is not None else None,
    }


def _optional(nvml: Any, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)``, or None when NVML says this GPU or driver cannot tell."""
    try:
        return function(*args)
    except nvml.NVMLError:
        return None


def _text(value: Any) -> Any:
    """NVML strings as str (see ``nvml_text``); an exception as its message, or its class name when it has none."""
    if isinstance(value, Exception):
        return str(value) or type(value).__name__
    return nvml_text(value)
