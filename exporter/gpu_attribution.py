"""Split one sampling interval's energy of one GPU among the processes on it and their groups (runs).

Pure functions, no I/O: the sampler hands in what the NVML source measured, this module says who gets which
joules. For one GPU and an interval of ``dt`` seconds in which ``E`` joules were measured:

    idle      = min(E, P_idle * dt)        P_idle: --gpu.idle-watts, else the lowest power seen with no process
    active    = E - idle
    s[p]      = SM utilisation ratio of process p over the interval; all scaled down together if they sum > 1
    E[p]      = active * s[p]  +  idle / n  (idle policy "share": the n processes on the GPU share it equally)
    E[p]      = active * s[p]               (idle policy "none": idle energy stays unattributed)
    E[g]      = sum of E[p] over the processes p of group g
    unattributed = E - sum_g E[g]          (clamped at 0 against rounding)

Where NVML cannot report per-process utilisation, ``s[p]`` is p's share of the GPU memory used by the
processes on the GPU instead. Active energy of SM time nobody claims, and all the energy of processes in no
group, stays unattributed.

**Invariant** (tested with hypothesis): ``sum_g E[g] + unattributed == E`` to a relative 1e-9, nothing is
negative, and no group gets more than was measured.

GPU seconds of a group are ``dt * min(1, sum of s[p] of its processes)`` when SM utilisation is known: one GPU
fully busy for a second is one GPU second, whichever processes shared it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

IdlePolicy = Literal["share", "none"]
IDLE_SHARE: IdlePolicy = "share"
IDLE_NONE: IdlePolicy = "none"
IDLE_POLICIES: tuple[IdlePolicy, ...] = (IDLE_SHARE, IDLE_NONE)

ShareBasis = Literal["sm", "memory", "none"]
SM: ShareBasis = "sm"
MEMORY: ShareBasis = "memory"
NONE: ShareBasis = "none"


class ProcessUsage(Protocol):
    """What attribution needs of a process on a GPU; ``exporter.sources.nvml.GpuProcess`` is one."""

    @property
    def pid(self) -> int: ...

    @property
    def sm_utilization_ratio(self) -> float | None: ...

    @property
    def used_memory_bytes(self) -> int | None: ...


@dataclass(frozen=True)
class GpuAttribution:
    """Who gets one GPU's joules of one interval.

    ``by_process`` covers every process given, in a group or not (the per-process power metric needs both);
    ``by_group`` only groups with a process on the GPU. ``gpu_seconds`` is empty when SM utilisation is unknown.
    """

    by_process: Mapping[int, float]
    by_group: Mapping[str, float]
    unattributed: float
    idle_joules: float
    active_joules: float
    basis: ShareBasis  # what the active energy was split by
    gpu_seconds: Mapping[str, float] = field(default_factory=dict)


def active_shares(processes: Sequence[ProcessUsage]) -> tuple[dict[int, float], ShareBasis]:
    """Each process's share of the GPU's active energy, and what the shares are based on.

    SM utilisation when every process has it: shares are the ratios themselves (SM time nobody used is nobody's),
    scaled down together when they sum to more than 1 so energy is never over-attributed. Otherwise used memory,
    as a fraction of the memory all the given processes use (an unknown amount counts as 0). Every share is
    finite, at least 0, and they sum to at most 1.
    """
    if not processes:
        return {}, NONE
    if all(process.sm_utilization_ratio is not None for process in processes):
        sm = {process.pid: _non_negative(process.sm_utilization_ratio) for process in processes}
        return _at_most_one(sm), SM
    memory = {process.pid: _non_negative(process.used_memory_bytes) for process in processes}
    total = sum(memory.values())
    if total <= 0:
        return {pid: 0.0 for pid in memory}, NONE
    return _at_most_one({pid: used / total for pid, used in memory.items()}), MEMORY


def attribute_gpu_interval(
    energy_joules: float,
    interval_seconds: float,
    idle_watts: float | None,
    processes: Sequence[ProcessUsage],
    group_of: Mapping[int, str],
    idle_policy: IdlePolicy = IDLE_SHARE,
) -> GpuAttribution:
    """Attribute one GPU's energy of one interval to its processes and their groups (see the module docstring).

    ``energy_joules`` is what the GPU used in the interval of ``interval_seconds``; ``idle_watts`` its idle
    power (None: unknown, so no energy is counted as idle); ``processes`` those on the GPU in the interval, one
    entry per pid; ``group_of`` maps a pid to its group (run). Raises ValueError for a negative or non-finite
    energy, interval or idle power, or an unknown idle policy: those are the caller's bugs, not measurements.
    """
    _check_measure("energy_joules", energy_joules)
    _check_measure("interval_seconds", interval_seconds)
    if idle_watts is not None:
        _check_measure("idle_watts", idle_watts)
    if idle_policy not in IDLE_POLICIES:
        raise ValueError(f"unknown idle policy {idle_policy!r}; known: {', '.join(IDLE_POLICIES)}")
    idle = min(energy_joules, (idle_watts or 0.0) * interval_seconds)
    active = energy_joules - idle
    shares, basis = active_shares(processes)
    idle_each = idle / len(shares) if shares and idle_policy == IDLE_SHARE else 0.0
    by_process = {pid: active * share + idle_each for pid, share in shares.items()}
    by_group: dict[str, float] = defaultdict(float)
    group_share: dict[str, float] = defaultdict(float)
    for pid, joules in by_process.items():
        group = group_of.get(pid)
        if group is not None:
            by_group[group] += joules
            group_share[group] += shares[pid]
    attributed = sum(by_group.values())
    gpu_seconds = (
        {group: interval_seconds * min(1.0, share) for group, share in group_share.items()} if basis == SM else {}
    )
    return GpuAttribution(
        by_process=by_process,
        by_group=dict(by_group),
        unattributed=max(0.0, energy_joules - attributed),  # a counter must not step down by a rounding error
        idle_joules=idle,
        active_joules=active,
        basis=basis,
        gpu_seconds=gpu_seconds,
    )


def lowest_idle_watts(previous: float | None, interval_watts: float | None, processes: int) -> float | None:
    """The idle baseline learnt so far: the lowest average power of an interval with no process on the GPU.

    ``previous`` is the baseline so far (None: none yet), ``interval_watts`` the interval's joules over its
    seconds (None: unknown), ``processes`` how many processes were on the GPU. Intervals with processes say
    nothing about idle power and leave the baseline as it was.
    """
    if processes > 0 or interval_watts is None or not math.isfinite(interval_watts) or interval_watts < 0:
        return previous
    return interval_watts if previous is None else min(previous, interval_watts)


def _non_negative(value: float | None) -> float:
    """``value`` as a float that is finite and at least 0 (None, NaN and negatives are 0)."""
    if value is None or not math.isfinite(value):
        return 0.0
    return max(0.0, float(value))


def _at_most_one(shares: dict[int, float]) -> dict[int, float]:
    """``shares`` scaled down together when they sum to more than 1 (unchanged otherwise)."""
    total = sum(shares.values())
    if total <= 1.0:
        return shares
    return {pid: share / total for pid, share in shares.items()}


def _check_measure(name: str, value: float) -> None:
    """Raise ValueError unless ``value`` is a finite number at least 0."""
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
