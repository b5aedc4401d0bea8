"""What the exporter's NVML source and the client's GPU checks both need from NVML: the ``pynvml`` module, which GPUs
a ``CUDA_VISIBLE_DEVICES``-style list names, and NVML's versions and text as records write them.

This is the only module that imports ``pynvml``. Each caller turns the ``ImportError`` of ``import_pynvml`` and the
NVML errors into its own exceptions (``exporter.sources`` for the exporter, ``NoNvidiaGPU`` for the client).

A device list names GPUs by NVML index (``"2"``) or by UUID or a UUID prefix (``"GPU-8c3a"``), comma-separated.
Both callers read entries the same way (``devices_named``); what to do with an entry that names no single GPU is the
caller's: the client reads ``CUDA_VISIBLE_DEVICES`` as CUDA does and stops there (``cuda_visible_indices``), the
exporter's ``--gpu.devices`` flag reports it as an error.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any


def import_pynvml() -> ModuleType:
    """The ``pynvml`` module (nvidia-ml-py), imported only when GPUs are asked about; ImportError without it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the "pynvml" shim package warns on import
        import pynvml
    return pynvml


def nvml_text(value: Any) -> Any:
    """NVML text as str: older nvidia-ml-py releases return bytes, newer ones str. Anything else is returned as is."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def cuda_version_text(version: int) -> str:
    """NVML's CUDA driver version number (12040) as CUDA writes it ("12.4")."""
    return f"{version // 1000}.{version % 1000 // 10}"


def device_entries(devices: str) -> list[str]:
    """The entries of a comma-separated device list, each stripped of spaces; empty entries are kept."""
    return [entry.strip() for entry in devices.split(",")]


def devices_named(entry: str, gpus: Sequence[tuple[int, str]]) -> list[int]:
    """The NVML indices of ``gpus`` (each ``(index, uuid)``) that one device-list entry names.

    An entry of decimal digits is an index; an entry starting ``GPU-`` is a UUID or UUID prefix, and names every GPU
    whose UUID starts with it (more than one: ambiguous). Anything else names none. Digits are whatever ``int``
    reads (``str.isdecimal``): the client accepted any ``str.isdigit`` entry and the exporter only ASCII digits,
    so the more permissive of the two is kept, less the digit-like characters ``int`` cannot read.
    """
    if entry.isdecimal():
        return [index for index, _ in gpus if index == int(entry)]
    if entry.startswith("GPU-"):
        return [index for index, uuid in gpus if uuid.startswith(entry)]
    return []


def cuda_visible_indices(gpus: Iterable[tuple[int, str]], cuda_visible_devices: str | None) -> list[int]:
    """The NVML indices CUDA would use under ``cuda_visible_devices``, in its order (None, unset: all of them).

    Like CUDA, reading stops at the first entry that names no single GPU or names one already chosen, so
    ``"0,x,1"`` is GPU 0 only and ``""`` is none.
    """
    gpus = list(gpus)
    if cuda_visible_devices is None:
        return [index for index, _ in gpus]
    chosen: list[int] = []
    for entry in device_entries(cuda_visible_devices):
        matches = devices_named(entry, gpus)
        if len(matches) != 1 or matches[0] in chosen:
            break
        chosen.append(matches[0])
    return chosen
