"""What the CPU is, from py-cpuinfo, and a check that an experiment runs on the CPU it expects.

Reproducing a paper's energy figures only makes sense on the same hardware, so an experiment can assert it::

    assert_cpus_by_attributes({"brand": "Intel(R) Xeon(R) CPU E5-2640 v3 @ 2.60GHz"})

Keys are those of ``cpuinfo.get_cpu_info()`` (``brand_raw``, ``count``, ``arch``, ``vendor_id_raw``,
``family``, ``model``, ``l3_cache_size``, ...), plus ``usable_cpus`` (the logical CPUs this process may run on, as
the original experiment-impact-tracker added it); ``brand``, the key the original documented, is an alias of
``brand_raw``. py-cpuinfo takes about a second (it starts a process), which every run would wait for before it
starts; so its answer is kept per boot in a user cache file (``cpu_info_cache_file``) and read once per process.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from experiment_impact_tracker.errors import ImpactTrackerError

CACHE_DIR_NAME = "experiment-impact-tracker"
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
CACHE_MAX_AGE_SECONDS = 30 * 86400.0
"""Cache files of other boots (other nodes sharing a home directory, past boots) older than this are removed."""
ALIASES = {"brand": "brand_raw"}
"""Keys of older py-cpuinfo versions (and of the seed's README) mapped to today's names."""


class CPUAttributeAssertionError(ImpactTrackerError, AssertionError):
    """The CPU is not the one the experiment asked for, or it asked for an attribute py-cpuinfo lacks."""


@functools.cache
def _cached_cpu_info() -> Mapping[str, Any]:
    return cached_cpu_info(cpu_info_cache_file())


def cpu_info_cache_file(environ: Mapping[str, str] | None = None, boot_id_file: Path = BOOT_ID_FILE) -> Path | None:
    """``$XDG_CACHE_HOME/experiment-impact-tracker/cpuinfo-<boot id>.json`` (``~/.cache`` without it): the CPU
    cannot change within one boot, and a home directory shared by a cluster's nodes holds one file per node. None
    where the kernel gives no boot id (not Linux)."""
    environ = os.environ if environ is None else environ
    try:
        boot_id = boot_id_file.read_text().strip()
    except OSError:
        return None
    if not boot_id or "/" in boot_id:
        return None
    cache_home = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_home / CACHE_DIR_NAME / f"cpuinfo-{boot_id}.json"


def cached_cpu_info(path: Path | None) -> Mapping[str, Any]:
    """py-cpuinfo's answer from the cache file ``path`` when it holds one from this py-cpuinfo version, else computed
    and written there (best effort: an unwritable cache only costs the second again next time)."""
    import cpuinfo

    try:
        cached = json.loads(path.read_text()) if path is not None else None
    except (OSError, ValueError):
        cached = None
    if isinstance(cached, dict) and cached.get("cpuinfo_version_string") == cpuinfo.CPUINFO_VERSION_STRING:
        return cached
    info = cpuinfo.get_cpu_info()
    if path is not None:
        _write_cache(path, info)
    return info


def _write_cache(path: Path, info: Mapping[str, Any]) -> None:
    """Write ``info`` to ``path`` atomically, and remove the directory's cache files of boots long past."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".cpuinfo-", suffix=".tmp")
        with os.fdopen(fd, "w") as file:
            json.dump(info, file)
        os.replace(temp, path)
        for old in path.parent.glob("cpuinfo-*.json"):
            if time.time() - old.stat().st_mtime > CACHE_MAX_AGE_SECONDS:
                old.unlink()
    except OSError:
        pass


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
