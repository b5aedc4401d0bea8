"""NVIDIA GPUs through NVML (``pynvml``, from nvidia-ml-py): energy, power, utilisation and GPU processes.

``pynvml`` is imported lazily, through experiment_impact_tracker/gpu/nvml.py (what the exporter and the client
share), when no ``nvml`` module is passed in; tests pass tests/fakes/nvml.py instead. Every NVML error is
translated here into the exceptions of ``exporter.sources``, so nothing above this module knows NVML's error codes.

**Energy.** Volta and later GPUs count the millijoules used since the driver loaded
(``nvmlDeviceGetTotalEnergyConsumption``); a GPU's total starts at that counter's value, as RAPL totals do.
Older GPUs only report power (``nvmlDeviceGetPowerUsage``, milliwatts): their total starts at 0 and adds the
trapezoid of successive power readings over the source's clock.

**Per-process SM utilisation.** ``nvmlDeviceGetProcessUtilization(handle, lastSeenTimeStamp)`` returns the
driver's samples newer than a timestamp (microseconds), one per process per driver sampling period in which
the process ran. A process's ratio for the interval is the sum of its ``smUtil`` over the number of distinct
sample timestamps, over 100: two processes time-sliced on one GPU, each seen at 80% in alternate periods, get
0.4 each, not 0.8. Running processes with no sample get 0.0; where the call is not supported, ``None``.

**Failures.** A figure NVML does not support (``NVML_ERROR_NOT_SUPPORTED``, or not permitted) is ``None``; a GPU
that fails any other way (``NVML_ERROR_GPU_IS_LOST``, a timeout) is reported ``up=False`` for that sample, its
energy total kept, while the other GPUs carry on. On a GPU in MIG mode NVML cannot say which process used
what, so no processes are reported for it and ``mig_enabled`` tells the collector to say so.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

from experiment_impact_tracker.gpu.nvml import cuda_version_text, devices_named, nvml_text
from experiment_impact_tracker.gpu.nvml import import_pynvml as _import_pynvml
from impact_exporter.sources import HardwareNotFound, HardwareUnreadable, SourceError
from impact_exporter.sources.gpu import (
    COUNTER,
    NO_ENERGY,
    POWER_INTEGRATION,
    EnergyMethod,
    GpuInfo,
    GpuProcess,
    GpuReading,
    GpuSample,
)

logger = logging.getLogger(__name__)

MJ_PER_JOULE = 1000
MW_PER_WATT = 1000
PERCENT = 100

COUNTER_LABEL = "nvml-counter"
POWER_LABEL = "nvml-power"


class GpuLost(SourceError):
    """NVML says the GPU fell off the bus (``NVML_ERROR_GPU_IS_LOST``); only a reset brings it back."""


class _Unsupported(SourceError):
    """Internal: this GPU or driver cannot give this figure (NOT_SUPPORTED, FUNCTION_NOT_FOUND)."""


class _NoNewSamples(SourceError):
    """Internal: ``nvmlDeviceGetProcessUtilization`` has no sample newer than the timestamp (NOT_FOUND)."""


@dataclass(frozen=True)
class _GpuState:
    """What one GPU's readings leave behind for the next."""

    up: bool = True
    energy_at: float | None = None  # when the energy (counter or power) was last read
    counter_mj: int | None = None  # counter method: the raw counter at energy_at
    total_mj: int = 0  # counter method: the monotonic total, in integers so it stays exact
    integrated_joules: float = 0.0  # power-integration method: the running trapezoid sum
    power_watts: float | None = None  # power-integration method: the power read at energy_at
    utilization_seen_us: int = 0  # the newest process utilisation sample already counted
    last_sm_by_pid: Mapping[int, float] = field(default_factory=dict)  # the shares the newest samples gave

    def energy_joules_total(self, method: EnergyMethod) -> float | None:
        """The GPU's cumulative joules under ``method`` (None when it can measure none)."""
        if method == COUNTER:
            return self.total_mj / MJ_PER_JOULE
        if method == POWER_INTEGRATION:
            return self.integrated_joules
        return None


@dataclass(frozen=True)
class _Gpu:
    """A selected GPU: its static description, its NVML handle and how its energy is measured."""

    info: GpuInfo
    handle: Any
    energy_method: EnergyMethod


def import_pynvml() -> ModuleType:
    """Return the ``pynvml`` module; HardwareNotFound if it is not installed."""
    try:
        return _import_pynvml()
    except ImportError as error:
        raise HardwareNotFound(f"no NVIDIA GPU: pynvml (nvidia-ml-py) cannot be imported: {error}") from error


def translate_error(nvml: Any, error: BaseException, what: str) -> SourceError:
    """Return the ``exporter.sources`` exception for an NVML error raised by ``what``.

    GPU_IS_LOST becomes GpuLost and NO_PERMISSION HardwareUnreadable; NOT_SUPPORTED and FUNCTION_NOT_FOUND (an
    older driver) mean the figure is unavailable here; anything else is a plain SourceError naming the call.
    """
    value = getattr(error, "value", None)
    message = f"{what}: {error}"
    if value == nvml.NVML_ERROR_GPU_IS_LOST:
        return GpuLost(message)
    if value in (nvml.NVML_ERROR_NOT_SUPPORTED, nvml.NVML_ERROR_FUNCTION_NOT_FOUND):
        return _Unsupported(message)
    if value == nvml.NVML_ERROR_NO_PERMISSION:
        return HardwareUnreadable(message)
    if value == nvml.NVML_ERROR_NOT_FOUND:
        return _NoNewSamples(message)
    library_mismatch = getattr(nvml, "NVMLLibraryMismatchError", None)
    if library_mismatch is not None and isinstance(error, library_mismatch):
        return _Unsupported(message)  # pynvml's unversioned call needs a newer driver
    return SourceError(message)


def energy_method_label(readings: Iterable[GpuReading]) -> str | None:
    """The label of how these GPUs' energy was obtained: ``nvml-counter`` when every GPU with energy has the
    counter, ``nvml-power`` when any integrates power, None when none has energy."""
    methods = {reading.energy_method for reading in readings if reading.energy_method != NO_ENERGY}
    if not methods:
        return None
    return COUNTER_LABEL if methods == {COUNTER} else POWER_LABEL


def sm_utilization_by_pid(samples: Iterable[Any]) -> dict[int, float]:
    """Return each pid's SM utilisation ratio over the driver sampling periods in ``samples``.

    ``samples`` are ``nvmlDeviceGetProcessUtilization`` samples (``pid``, ``timeStamp``, ``smUtil``). A pid's
    ratio is the sum of its ``smUtil`` (each clamped to 0..100) over the number of distinct timestamps, over 100,
    so time-sliced processes share the periods they alternate in rather than each claiming its peak.
    """
    samples = list(samples)
    periods = len({int(sample.timeStamp) for sample in samples})
    if periods == 0:
        return {}
    percent_sum: dict[int, int] = defaultdict(int)
    for sample in samples:
        percent_sum[int(sample.pid)] += min(PERCENT, max(0, int(sample.smUtil)))
    return {pid: total / periods / PERCENT for pid, total in percent_sum.items()}


def select_devices(uuids: Sequence[tuple[int, str]], devices: Sequence[str] | None) -> list[int]:
    """Return the NVML indices ``devices`` names, in its order, as CUDA_VISIBLE_DEVICES would.

    ``uuids`` lists every GPU as (NVML index, UUID). An entry is an index ("2") or a UUID or unique UUID prefix
    ("GPU-8c3a"), read by ``devices_named``; ``None`` selects every GPU. Unlike CUDA, which silently stops at the
    first entry that names no GPU, an unknown or ambiguous entry raises HardwareNotFound: a typo in a flag should
    not go unnoticed. An entry repeated is selected once.
    """
    if devices is None:
        return [index for index, _ in uuids]
    known = ", ".join(f"{index}: {uuid}" for index, uuid in uuids)
    chosen: list[int] = []
    for entry in (device.strip() for device in devices):
        matches = devices_named(entry, uuids)
        if len(matches) != 1:
            reason = "is ambiguous" if matches else "names no GPU"
            raise HardwareNotFound(f"GPU selection {entry!r} {reason} (this machine's NVIDIA GPUs: {known})")
        if matches[0] not in chosen:
            chosen.append(matches[0])
    if not chosen:
        raise HardwareNotFound(f"no NVIDIA GPU selected (this machine's NVIDIA GPUs: {known})")
    return chosen


class NvmlSource:
    """Reads the selected NVIDIA GPUs through NVML and keeps their energy totals monotonic.

    NVML is initialised and the GPUs are found at construction; ``close()`` shuts NVML down. ``sample()``
    never raises for one GPU's failure: that GPU is reported down and the others are read as usual.
    """

    name = "nvml"

    def __init__(
        self,
        nvml: ModuleType | None = None,
        devices: Sequence[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Start NVML and find the GPUs; raise HardwareNotFound when there is no NVML, driver or GPU.

        ``nvml`` is the pynvml module (the default) or a stand-in with the same functions; ``devices``
        selects GPUs by index or UUID like CUDA_VISIBLE_DEVICES (see ``select_devices``).
        """
        self._nvml: Any = import_pynvml() if nvml is None else nvml
        self._clock = clock
        self._started = False
        self._unavailable_logged: set[tuple[str, str]] = set()
        self._start()
        try:
            self._gpus = tuple(self._discover(devices))
        except BaseException:
            self.close()
            raise
        self._states = [_GpuState() for _ in self._gpus]
        self._timestamp: float | None = None

    @property
    def gpus(self) -> tuple[GpuInfo, ...]:
        """The selected GPUs, in the order ``sample()`` reports them."""
        return tuple(gpu.info for gpu in self._gpus)

    def close(self) -> None:
        """Shut NVML down (once; later calls do nothing). Errors are logged, not raised: this runs at exit."""
        if not self._started:
            return
        self._started = False
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as error:
            logger.debug("nvmlShutdown failed: %s", error)

    def sample(self) -> GpuSample:
        """Read every selected GPU; a GPU that cannot be read is reported down, keeping its energy total."""
        now = self._clock()
        elapsed = 0.0 if self._timestamp is None else now - self._timestamp
        readings: list[GpuReading] = []
        for position, gpu in enumerate(self._gpus):
            state = self._states[position]
            try:
                reading, new_state = self._read(gpu, state, now)
            except SourceError as error:
                reading, new_state = self._down(gpu, state, error)
            else:
                if not state.up:
                    logger.info("GPU %d (%s) can be read again", gpu.info.index, gpu.info.uuid)
            self._states[position] = new_state
            readings.append(reading)
        self._timestamp = now
        return GpuSample(now, elapsed, tuple(readings), energy_method_label(readings))

    def _start(self) -> None:
        """``nvmlInit``, with each way it fails on a machine without NVIDIA GPUs said in one line."""
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as error:
            value = getattr(error, "value", None)
            if value == nvml.NVML_ERROR_LIBRARY_NOT_FOUND:
                reason = "the NVML library (libnvidia-ml.so.1) is not installed; is the NVIDIA driver?"
            elif value == nvml.NVML_ERROR_DRIVER_NOT_LOADED:
                reason = "the NVIDIA kernel driver is not loaded"
            else:
                reason = f"NVML cannot start ({error})"
            raise HardwareNotFound(f"no NVIDIA GPU: {reason}") from error
        self._started = True

    def _discover(self, devices: Sequence[str] | None) -> list[_Gpu]:
        """Describe every GPU NVML sees and return those ``devices`` selects; HardwareNotFound if none."""
        count = self._call("nvmlDeviceGetCount")
        if count == 0:
            raise HardwareNotFound("no NVIDIA GPU: NVML finds no GPU on this machine")
        driver_version = _text(self._optional("nvmlSystemGetDriverVersion"))
        cuda = self._optional("nvmlSystemGetCudaDriverVersion")
        cuda_version = None if cuda is None else cuda_version_text(int(cuda))
        handles: dict[int, Any] = {}
        uuids: list[tuple[int, str]] = []
        for index in range(count):
            try:
                handle = self._call("nvmlDeviceGetHandleByIndex", index)
                uuids.append((index, _text(self._call("nvmlDeviceGetUUID", handle)) or ""))
            except SourceError as error:
                logger.warning("skipping GPU %d: %s", index, error)
                continue
            handles[index] = handle
        uuid_by_index = dict(uuids)
        return [
            self._describe(index, handles[index], uuid_by_index[index], driver_version, cuda_version)
            for index in select_devices(uuids, devices)
        ]

    def _describe(
        self, index: int, handle: Any, uuid: str, driver_version: str | None, cuda_version: str | None
    ) -> _Gpu:
        """Read one GPU's static description and decide how its energy is measured."""
        where = f"GPU {index}"
        name = _text(self._optional("nvmlDeviceGetName", handle, where=where)) or "unknown"
        memory = self._optional("nvmlDeviceGetMemoryInfo", handle, where=where)
        mig_mode = self._optional("nvmlDeviceGetMigMode", handle, where=where)
        mig_enabled = mig_mode is not None and int(mig_mode[0]) == self._nvml.NVML_DEVICE_MIG_ENABLE
        energy_counter = self._optional("nvmlDeviceGetTotalEnergyConsumption", handle, where=where) is not None
        if energy_counter:
            method = COUNTER
        elif self._optional("nvmlDeviceGetPowerUsage", handle, where=where) is not None:
            method = POWER_INTEGRATION
        else:
            method = NO_ENERGY
            logger.warning("GPU %d (%s) reports neither an energy counter nor power: no energy for it", index, uuid)
        info = GpuInfo(
            index=index,
            uuid=uuid,
            name=name,
            driver_version=driver_version,
            cuda_version=cuda_version,
            memory_total_bytes=None if memory is None else int(memory.total),
            mig_enabled=mig_enabled,
            energy_counter=energy_counter,
        )
        logger.info("GPU %d: %s %s, energy by %s%s", index, name, uuid, method, ", MIG mode" if mig_enabled else "")
        return _Gpu(info, handle, method)

    def _read(self, gpu: _Gpu, state: _GpuState, now: float) -> tuple[GpuReading, _GpuState]:
        """Read one GPU; raise SourceError (GpuLost among them) when it cannot be read at all."""
        info, handle = gpu.info, gpu.handle
        where = f"GPU {info.index}"
        power_mw = self._optional("nvmlDeviceGetPowerUsage", handle, where=where)
        power_watts = None if power_mw is None else power_mw / MW_PER_WATT
        new_state = replace(state, up=True)
        if gpu.energy_method == COUNTER:
            counter_mj = self._optional("nvmlDeviceGetTotalEnergyConsumption", handle, where=where)
            new_state = _count(new_state, None if counter_mj is None else int(counter_mj), now)
        elif gpu.energy_method == POWER_INTEGRATION:
            new_state = _integrate(new_state, power_watts, now)
        utilization = self._optional("nvmlDeviceGetUtilizationRates", handle, where=where)
        memory = self._optional("nvmlDeviceGetMemoryInfo", handle, where=where)
        processes: tuple[GpuProcess, ...] = ()
        if not info.mig_enabled:
            processes, seen_us, sm_by_pid = self._processes(
                handle,
                where,
                state.utilization_seen_us,
                state.last_sm_by_pid,
                idle=utilization is not None and int(utilization.gpu) == 0,
            )
            new_state = replace(new_state, utilization_seen_us=seen_us, last_sm_by_pid=sm_by_pid)
        delta, elapsed = _energy_since(state, new_state, gpu.energy_method)
        reading = GpuReading(
            index=info.index,
            uuid=info.uuid,
            up=True,
            energy_method=gpu.energy_method,
            energy_joules_total=new_state.energy_joules_total(gpu.energy_method),
            energy_joules_delta=delta,
            elapsed_seconds=elapsed,
            power_watts=power_watts,
            utilization_ratio=None if utilization is None else int(utilization.gpu) / PERCENT,
            memory_used_bytes=None if memory is None else int(memory.used),
            processes=processes,
            mig_enabled=info.mig_enabled,
        )
        return reading, new_state

    def _processes(
        self, handle: Any, where: str, seen_us: int, last_sm_by_pid: Mapping[int, float], idle: bool
    ) -> tuple[tuple[GpuProcess, ...], int, Mapping[int, float]]:
        """Return the GPU's processes with their memory and SM utilisation, the newest sample timestamp, and the
        SM shares to carry into the next interval.

        An interval in which the driver took no new utilisation sample (its period can be longer than the
        exporter's) keeps the shares of the newest samples for the processes still running, rather than
        counting the GPU idle. A GPU that is ``idle`` (no kernel ran in the driver's last utilisation period),
        runs no compute process and ran none in the previous interval is not asked for process utilisation: that
        query keeps the driver busy for milliseconds at every sample (docs/performance.md, "Real NVIDIA GPU").
        """
        running = self._optional("nvmlDeviceGetComputeRunningProcesses", handle, where=where)
        if idle and running is not None and not running and not last_sm_by_pid:
            return (), seen_us, {}
        memory_by_pid: dict[int, int | None] = {}
        for process in running or ():
            used = process.usedGpuMemory
            memory_by_pid[int(process.pid)] = None if used is None else int(used)
        try:
            samples = self._optional("nvmlDeviceGetProcessUtilization", handle, seen_us, where=where)
            sm_by_pid = None if samples is None else sm_utilization_by_pid(samples)
        except _NoNewSamples:
            samples = []
            sm_by_pid = {pid: share for pid, share in last_sm_by_pid.items() if pid in memory_by_pid}
        if samples:
            seen_us = max(seen_us, *(int(sample.timeStamp) for sample in samples))
        pids = sorted(memory_by_pid.keys() | (sm_by_pid or {}).keys())
        processes = tuple(
            GpuProcess(
                pid=pid,
                used_memory_bytes=memory_by_pid.get(pid),
                sm_utilization_ratio=None if sm_by_pid is None else sm_by_pid.get(pid, 0.0),
            )
            for pid in pids
        )
        return processes, seen_us, sm_by_pid or {}

    def _down(self, gpu: _Gpu, state: _GpuState, error: SourceError) -> tuple[GpuReading, _GpuState]:
        """The reading of a GPU that could not be read: down, energy total kept, nothing else known."""
        if state.up:
            logger.warning("GPU %d (%s) is down: %s", gpu.info.index, gpu.info.uuid, error)
        else:
            logger.debug("GPU %d (%s) is still down: %s", gpu.info.index, gpu.info.uuid, error)
        # Power integration restarts after an outage (what the GPU drew meanwhile is unknown); the counter
        # method keeps its last reading, so the first reading after the outage covers the outage.
        if gpu.energy_method == POWER_INTEGRATION:
            new_state = replace(state, up=False, power_watts=None, energy_at=None)
        else:
            new_state = replace(state, up=False)
        reading = GpuReading(
            index=gpu.info.index,
            uuid=gpu.info.uuid,
            up=False,
            energy_method=gpu.energy_method,
            energy_joules_total=state.energy_joules_total(gpu.energy_method),
            energy_joules_delta=0.0,
            elapsed_seconds=0.0,
            power_watts=None,
            utilization_ratio=None,
            memory_used_bytes=None,
            processes=(),
            mig_enabled=gpu.info.mig_enabled,
        )
        return reading, new_state

    def _call(self, function: str, *args: Any, where: str = "NVML") -> Any:
        """Return ``nvml.<function>(*args)``, its NVML errors translated by ``translate_error``."""
        nvml = self._nvml
        library_mismatch = getattr(nvml, "NVMLLibraryMismatchError", nvml.NVMLError)
        try:
            return getattr(nvml, function)(*args)
        except (nvml.NVMLError, library_mismatch) as error:
            raise translate_error(nvml, error, f"{function} on {where}") from error

    def _optional(self, function: str, *args: Any, where: str = "NVML") -> Any | None:
        """Like ``_call``, but None where the figure is unavailable here (logged once per GPU and function)."""
        try:
            return self._call(function, *args, where=where)
        except (_Unsupported, HardwareUnreadable) as error:
            if (where, function) not in self._unavailable_logged:
                self._unavailable_logged.add((where, function))
                logger.debug("not available: %s", error)
            return None


def _count(state: _GpuState, counter_mj: int | None, now: float) -> _GpuState:
    """Add a new energy counter reading to the monotonic total (the first one starts it).

    The counter counts since the driver loaded, so a smaller reading means the driver was reloaded and the
    counter restarted at 0: all of the new reading is new energy. No reading (unsupported this time): unchanged.
    """
    if counter_mj is None:
        return state
    if state.counter_mj is None:
        return replace(state, counter_mj=counter_mj, total_mj=counter_mj, energy_at=now)
    delta_mj = counter_mj - state.counter_mj if counter_mj >= state.counter_mj else counter_mj
    return replace(state, counter_mj=counter_mj, total_mj=state.total_mj + delta_mj, energy_at=now)


def _integrate(state: _GpuState, power_watts: float | None, now: float) -> _GpuState:
    """Add the trapezoid between the previous power reading and this one (the first one only starts it).

    A missing reading leaves the previous one in place, so the next good one bridges the gap.
    """
    if power_watts is None:
        return state
    joules = state.integrated_joules
    if state.power_watts is not None and state.energy_at is not None:
        joules += (state.power_watts + power_watts) / 2 * max(0.0, now - state.energy_at)
    return replace(state, integrated_joules=joules, power_watts=power_watts, energy_at=now)


def _energy_since(before: _GpuState, after: _GpuState, method: EnergyMethod) -> tuple[float, float]:
    """Return (joules, seconds) between two states' energy readings; (0.0, 0.0) unless both have one."""
    if before.energy_at is None or after.energy_at is None or after.energy_at == before.energy_at:
        return 0.0, 0.0
    elapsed = after.energy_at - before.energy_at
    if method == COUNTER:
        return (after.total_mj - before.total_mj) / MJ_PER_JOULE, elapsed
    return max(0.0, after.integrated_joules - before.integrated_joules), elapsed


def _text(value: str | bytes | None) -> str | None:
    """Return NVML text as str: older pynvml bindings return bytes."""
    return nvml_text(value)
