"""What the CPU is, from py-cpuinfo, and a check that an experiment runs on the CPU it expects.

Reproducing a paper's energy figures only makes sense on the same hardware, so an experiment can assert it::

    assert_cpus_by_attributes({"brand": "Intel(R) Xeon(R) CPU E5-2640 v3 @ 2.60GHz"})

Keys are those of ``cpuinfo.get_cpu_info()`` (``brand_raw``, ``count``, ``arch``, ``vendor_id_raw``,
``family``, ``model``, ``l3_cache_size``, ...), plus ``usable_cpus`` (the logical CPUs this process may run on, as
the original experiment-impact-tracker added it); ``brand``, the key the original documented, is an alias of
``brand_raw``. py-cpuinfo takes about a second, so its answer is read once per process.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import psutil

from experiment_impact_tracker.errors import ImpactTrackerError

ALIASES = {"brand": "brand_raw"}
"""Keys of older py-cpuinfo versions (and of the seed's README) mapped to today's names."""


class CPUAttributeAssertionError(ImpactTrackerError, AssertionError):
    """The CPU is not the one the experiment asked for, or it asked for an attribute py-cpuinfo lacks."""


@functools.cache
def _cached_cpu_info() -> Mapping[str, Any]:
    import cpuinfo

    return cpuinfo.get_cpu_info()


def cpu_info() -> dict[str, Any]:
    """py-cpuinfo's description of this machine's CPU (read once per process; a copy each call), with
    ``usable_cpus``."""
    return {**_cached_cpu_info(), "usable_cpus": usable_cpus()}


def usable_cpus() -> int:
    """How many logical CPUs this process may run on: its affinity mask (a Slurm or taskset limit), where the
    platform has one, else every CPU."""
    try:
        return len(psutil.Process().cpu_affinity() or ())
    except (AttributeError, psutil.Error):  # macOS has no affinity
        return psutil.cpu_count() or 1


def cpu_summary(info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The CPU as run records describe it: ``brand_raw``, ``count`` (logical CPUs) and ``arch``."""
    info = cpu_info() if info is None else info
    return {key: info.get(key) for key in ("brand_raw", "count", "arch")}


def assert_cpus_by_attributes(attributes: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> None:
    """Raise CPUAttributeAssertionError unless every attribute equals py-cpuinfo's value exactly.

    ``info`` replaces py-cpuinfo's answer (for tests). All mismatches are reported at once, as
    ``brand_raw: expected '...', found '...'``; an unknown key lists the keys there are.
    """
    info = cpu_info() if info is None else info
    problems = []
    for asked, expected in attributes.items():
        key = ALIASES.get(asked, asked)
        name = key if key == asked else f"{key} (asked as {asked!r})"
        if key not in info:
            available = ", ".join(sorted(info))
            aliases = ", ".join(f"{alias} for {target}" for alias, target in ALIASES.items())
            problems.append(f"unknown CPU attribute {asked!r}; py-cpuinfo reports: {available} (aliases: {aliases})")
        elif info[key] != expected:
            problems.append(f"{name}: expected {expected!r}, found {info[key]!r}")
    if problems:
        raise CPUAttributeAssertionError("CPU does not match: " + "; ".join(problems))
