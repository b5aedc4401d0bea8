"""experiment-impact-tracker 0.1.9's log directories, written here field for field as its writer wrote them.

Its writer (``compute_tracker.gather_initial_info``, ``_sample_and_log_power`` and ``data_utils.log_final_info``):

- ``<logdir>/impacttracker/info.pkl``: ``pickle.dump`` of a dict in ``INITIAL_INFO``'s order (python_package_info: a
  list of pkg_resources distributions; cpu_info: py-cpuinfo 5's dict plus usable_cpus; experiment_start:
  ``datetime.now()``; gpu_info only with nvidia-smi; experiment_impact_tracker_version; region: the zone, whose
  ``geometry`` is a shapely geometry; region_carbon_intensity_estimate), rewritten at exit with experiment_end.
- ``<logdir>/impacttracker/data.json``: ``ujson.dumps(sample) + "\\n"`` per sample, the fields of ``DATA_HEADERS``
  that the machine supports, in their order (get_intel_power's and get_nvidia_gpu_power's dicts whole), then
  process_ids.
- ``<logdir>/impacttracker/impact_tracker_log.log``: its error log, empty.

shapely and pkg_resources are stood in for by classes of the same module and name, pickled as they pickle
themselves (shapely 1.7: ``(cls, (), wkb)``; distributions: their ``__dict__``), so the test needs neither.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import struct
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REGION_SOURCE = "Hydro-Quebec (2019)"


@dataclass(frozen=True)
class OldRun:
    """One old run as the test lays it out: power per sample, at these seconds after the start."""

    offsets: Sequence[float]  # seconds after experiment_start of each sample's timestamp
    rapl_watts: Sequence[float | None]  # attributable RAPL power per sample (None: the field is missing)
    gpu_watts: Sequence[float] | None = None
    gpu_utilisation: Sequence[float] | None = None
    realtime_intensity: Sequence[Any] | None = None
    duration: float | None = 30.0  # experiment_end - experiment_start; None: killed, no experiment_end
    start: float = 1_700_000_000.0
    geometry: bool = True  # the region carries a shapely geometry
    info: bool = True  # info.pkl written at all
    gpus: int = 1
    g_per_kwh: float = 30.0
    cpu_seconds: Sequence[dict[str, float]] = field(default_factory=tuple)  # per sample: pid -> user + system


def wkb_square() -> bytes:
    """The WKB of a one-square MultiPolygon, as shapely 1.7's ``to_wkb`` gives it (little endian)."""
    ring = [(-80.0, 45.0), (-70.0, 45.0), (-70.0, 50.0), (-80.0, 50.0), (-80.0, 45.0)]
    polygon = (
        struct.pack("<BII", 1, 3, 1) + struct.pack("<I", len(ring)) + b"".join(struct.pack("<dd", *p) for p in ring)
    )
    return struct.pack("<BII", 1, 6, 1) + polygon


@contextlib.contextmanager
def stand_in_modules() -> Iterator[tuple[type, type]]:
    """shapely.geometry.multipolygon.MultiPolygon and pkg_resources.DistInfoDistribution stand-ins, importable by
    pickle while the block runs (the real modules, if loaded, come back after)."""

    class MultiPolygon:
        def __init__(self, wkb: bytes = b"") -> None:
            self.wkb = wkb

        def __reduce__(self) -> tuple[Any, ...]:
            return (type(self), (), self.wkb)

        def __setstate__(self, state: bytes) -> None:
            self.wkb = state

    class DistInfoDistribution:
        def __init__(self, name: str, version: str) -> None:
            self.project_name, self._version, self.location = name, version, "/usr/lib/python3/dist-packages"

    names = ["shapely", "shapely.geometry", "shapely.geometry.multipolygon", "pkg_resources"]
    saved = {name: sys.modules.get(name) for name in names}
    modules = {name: types.ModuleType(name) for name in names}
    MultiPolygon.__module__, MultiPolygon.__qualname__ = "shapely.geometry.multipolygon", "MultiPolygon"
    DistInfoDistribution.__module__, DistInfoDistribution.__qualname__ = "pkg_resources", "DistInfoDistribution"
    modules["shapely.geometry.multipolygon"].MultiPolygon = MultiPolygon  # type: ignore[attr-defined]
    modules["pkg_resources"].DistInfoDistribution = DistInfoDistribution  # type: ignore[attr-defined]
    sys.modules.update(modules)
    try:
        yield MultiPolygon, DistInfoDistribution
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def initial_info(run: OldRun, geometry_class: type, distribution: type) -> dict[str, Any]:
    """``gather_initial_info``'s dict for this run, in INITIAL_INFO's order."""
    info: dict[str, Any] = {
        "python_package_info": [distribution("numpy", "1.18.1"), distribution("torch", "1.4.0")],
        "cpu_info": {
            "python_version": "3.7.6.final.0 (64 bit)",
            "cpuinfo_version": [5, 0, 0],
            "arch": "X86_64",
            "bits": 64,
            "count": 8,
            "raw_arch_string": "x86_64",
            "vendor_id": "GenuineIntel",
            "brand": "Intel(R) Xeon(R) CPU E5-2640 v3 @ 2.60GHz",
            "hz_advertised": "2.6000 GHz",
            "l2_cache_size": "256 KB",
            "flags": ["avx", "avx2", "rapl"],
            "usable_cpus": 8,
        },
        "experiment_start": datetime.fromtimestamp(run.start),
    }
    if run.gpu_watts is not None:
        info["gpu_info"] = [
            {
                "name": "Tesla V100-SXM2-16GB",
                "total_memory": "16160 MiB",
                "driver_version": "440.33.01",
                "cuda_version": "10.2",
            }
        ] * run.gpus
    region: dict[str, Any] = {"countryKey": "CA", "id": "CA-QC"}
    if run.geometry:
        region["geometry"] = geometry_class(wkb_square())
    info |= {
        "experiment_impact_tracker_version": "0.1.9",
        "region": region,
        "region_carbon_intensity_estimate": {"_source": REGION_SOURCE, "carbonIntensity": run.g_per_kwh},
    }
    return info


def sample(run: OldRun, index: int) -> dict[str, Any]:
    """One line of data.json: the DATA_HEADERS fields this run's machine had, in their order."""
    line: dict[str, Any] = {"timestamp": run.start + run.offsets[index]}
    cpu = run.cpu_seconds[index] if run.cpu_seconds else {}
    intel = {
        "rapl_power_draw_absolute": (run.rapl_watts[index] or 0.0) * 2.5,
        "rapl_estimated_attributable_power_draw": run.rapl_watts[index],
        "cpu_time_seconds": {
            pid: {"user": seconds * 0.75, "system": seconds * 0.25, "children_user": 0.0, "children_system": 0.0}
            for pid, seconds in cpu.items()
        },
        "average_relative_cpu_utilization": 0.4,
        "absolute_cpu_utilization": 0.98,
        "relative_mem_usage": 0.2,
        "absolute_mem_usage": 1.2e9,
        "absolute_mem_percent_usage": 0.05,
        "mem_info_per_process": {pid: {"rss": 6e8, "vms": 9e9, "uss": 5e8, "pss": 5.5e8} for pid in cpu},
    }
    if run.rapl_watts[index] is None:
        del intel["rapl_estimated_attributable_power_draw"]
    line |= intel
    if run.gpu_watts is not None:
        utilisation = run.gpu_utilisation[index] if run.gpu_utilisation else 0.0
        line |= {
            "nvidia_draw_absolute": run.gpu_watts[index] * 1.25,
            "nvidia_estimated_attributable_power_draw": run.gpu_watts[index],
            "average_gpu_estimated_utilization_absolute": utilisation,
            "per_gpu_average_estimated_utilization_absolute": {"(0, 4242)": {"sm": utilisation * 100, "mem": 10}},
            "average_gpu_estimated_utilization_relative": 1.0,
            "per_gpu_performance_state": {"0": "P0"},
            "per_gpu_power_draw": {"0": run.gpu_watts[index] * 1.25},
        }
    line |= {
        "cpu_count_adjusted_average_load": [0.5, 0.4, 0.3],
        "cpu_freq": [{"current": 2600.0, "min": 1200.0, "max": 3400.0}],
    }
    if run.realtime_intensity is not None:
        line["realtime_carbon_intensity"] = run.realtime_intensity[index]
    line |= {"disk_write_speed": 312.5, "process_ids": [4242, 4243]}
    return line


def write_old_log(logdir: Path, run: OldRun) -> Path:
    """Write ``run`` into ``logdir/impacttracker/`` as experiment-impact-tracker 0.1.9 did; return ``logdir``."""
    folder = logdir / "impacttracker"
    folder.mkdir(parents=True)
    (folder / "impact_tracker_log.log").touch()
    if run.info:
        with stand_in_modules() as (geometry_class, distribution):
            info = initial_info(run, geometry_class, distribution)
            (folder / "info.pkl").write_bytes(pickle.dumps(info))
            if run.duration is not None:  # log_final_info at exit: load, add the end, dump again
                info = pickle.loads((folder / "info.pkl").read_bytes())
                info["experiment_end"] = datetime.fromtimestamp(run.start + run.duration)
                (folder / "info.pkl").write_bytes(pickle.dumps(info))
    with open(folder / "data.json", "a") as data:
        for index in range(len(run.offsets)):
            data.write(json.dumps(sample(run, index), separators=(",", ":")).replace("/", "\\/") + "\n")
    return logdir
