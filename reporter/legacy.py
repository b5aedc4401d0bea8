"""experiment-impact-tracker 0.1's log directories, read as runs: ``<logdir>/impacttracker/``.

What 0.1.x (through 0.1.9) wrote there, and what of it is read:

- ``data.json``: one JSON object a line, one per sample. Each sample began with ``timestamp`` (unix seconds), then
  averaged RAPL over the next 2 s: ``rapl_power_draw_absolute`` (W, the packages' power) and
  ``rapl_estimated_attributable_power_draw`` (W, the experiment's share of package *and DRAM* power: cores by its
  CPU share, DRAM by its memory share, the rest of the package by its CPU share; no DRAM figure of its own was
  kept). ``cpu_time_seconds`` maps each pid to its psutil times (``user``, ``system``, ...). With NVIDIA GPUs,
  nvidia-smi's ``power.draw`` summed over GPUs (``nvidia_draw_absolute``), times each process's SM share
  (``nvidia_estimated_attributable_power_draw``), and ``average_gpu_estimated_utilization_absolute``. Other fields
  (memory, load, frequencies, disk speed, realtime carbon intensity) are not needed for energy.
- ``info.pkl``: a pickled dict: ``experiment_start`` and ``experiment_end`` (naive datetimes in the writing
  machine's local time; no end when the process was killed), ``cpu_info`` (py-cpuinfo's dict), ``gpu_info`` (name,
  total_memory, driver_version, cuda_version per GPU), ``region`` (whose ``geometry`` is a shapely object),
  ``region_carbon_intensity_estimate`` (``carbonIntensity`` in gCO2eq/kWh, ``_source``),
  ``experiment_impact_tracker_version`` and ``python_package_info`` (pkg_resources objects).

Energy is integrated as 0.1.x integrated it (``gather_additional_info``), so an old run's figure here is the one its
own tool printed: a sample's power holds from the previous sample (the start, for the first) until it, and the last
sample's power until the end: ``E = sum_i P_i (t_i - t_(i-1)) + P_last (end - t_last)``, a missing value counting 0.
These are power readings taken every few seconds and held in between, not energy counters read over the whole run:
``POWER_SAMPLES_METHOD`` marks them in every report. The run's counters are written as samples at each ``t_i`` and at
the end, so every report computes its figures from them like any other run's.

``info.pkl`` is read by ``SafeUnpickler``, which builds only plain data and datetimes: every other class a pickle
names (shapely's geometry, pkg_resources' distributions, and whatever a hostile file names) becomes an inert
``Placeholder``, so no code from the file runs and shapely need not be installed.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import os
import pickle
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiment_impact_tracker.rundir import RUN_JSON
from impact_reporter.carbon import CarbonIntensity, TimeSeries
from impact_reporter.energy import run_figures
from impact_reporter.runs import SAMPLE_COLUMNS, Host, PrometheusRuns, Run, RunDataError, load_run_dirs

LOG_FOLDER = "impacttracker"
DATA_FILE = "data.json"
INFO_FILE = "info.pkl"
FORMAT = "experiment-impact-tracker 0.1 log directory"
POWER_SAMPLES_METHOD = "experiment-impact-tracker 0.1 power samples"
"""The method of every component read from an old log: RAPL and nvidia-smi power readings its tool sampled every
few seconds and integrated, held constant between samples (docs/reporting.md)."""
MEASURED_BY_LEGACY = "experiment-impact-tracker 0.1"
"""``Run.measured_by`` of a run read from an old log: the original tool measured it, in the experiment's process."""
WHOLE_MACHINE = f"{POWER_SAMPLES_METHOD} (whole machine: no attributable share recorded)"
CLOCK_TOLERANCE_SECONDS = 60.0
"""How far samples may lie outside [experiment_start, experiment_end] before the times are taken to be in another
time zone (info.pkl's datetimes are the writing machine's local time)."""


@dataclass(frozen=True)
class PowerField:
    """Where one component's power is in a sample: its attributable share, else the whole machine's draw."""

    component: str
    attributable: str
    absolute: str
    absolute_component: str


POWER_FIELDS = (
    PowerField("cpu+dram", "rapl_estimated_attributable_power_draw", "rapl_power_draw_absolute", "cpu"),
    PowerField("gpu", "nvidia_estimated_attributable_power_draw", "nvidia_draw_absolute", "gpu"),
)


class LegacyLogError(RunDataError):
    """An old log directory cannot be read: the message names the format and what is missing or wrong."""


def is_power_samples(method: str) -> bool:
    """Whether a component's method says its energy was integrated from an old log's sampled power readings."""
    return method.startswith(POWER_SAMPLES_METHOD)


# -- info.pkl ------------------------------------------------------------------------------------------------


class Placeholder:
    """What an unknown class in a pickle becomes: it keeps the arguments and state it was given, and does nothing.

    Subclasses made by ``SafeUnpickler.find_class`` carry the pickled ``__module__`` and ``__qualname__``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__} placeholder>"


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """What protocols 0-2 call to rebuild bytes (``_codecs.encode(text, "latin1")``), for that encoding only."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"bytes encoded as {encoding!r}, not latin1")
    return text.encode("latin1")


ALLOWED_CLASSES = {
    ("_codecs", "encode"): _latin1_bytes,
    ("datetime", "datetime"): datetime.datetime,
    ("datetime", "date"): datetime.date,
    ("datetime", "time"): datetime.time,
    ("datetime", "timedelta"): datetime.timedelta,
    ("datetime", "timezone"): datetime.timezone,
}
"""The only callables an old info.pkl is given for real: they take plain values and run nothing else."""


class SafeUnpickler(pickle.Unpickler):
    """Unpickles plain data and datetimes; every other class or function the pickle names becomes a Placeholder."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = ALLOWED_CLASSES.get((module, name))
        if allowed is not None:
            return allowed
        return type(name.rpartition(".")[2] or "Unknown", (Placeholder,), {"__module__": module, "__qualname__": name})

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not part of this format")


def read_info(path: Path) -> dict[str, Any]:
    """The dict pickled in ``info.pkl``, through ``SafeUnpickler``; LegacyLogError when it is not one."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise LegacyLogError(f"{path}: cannot read {INFO_FILE} of this {FORMAT}: {error.strerror or error}") from None
    try:
        info = SafeUnpickler(io.BytesIO(data)).load()
    except Exception as error:  # a damaged pickle fails in many ways; none may become a traceback
        raise LegacyLogError(f"{path}: {INFO_FILE} of this {FORMAT} is not a readable pickle ({error})") from None
    if not isinstance(info, dict):
        raise LegacyLogError(f"{path}: {INFO_FILE} of this {FORMAT} holds {type(info).__name__}, not a dict")
    return info


# -- data.json -----------------------------------------------------------------------------------------------


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The samples of ``data.json``, one JSON object a line, ordered by time.

    A last line cut short (the tool was killed while writing it) is left out; any other line that is not a JSON
    object with a numeric ``timestamp`` is a LegacyLogError naming its line number.
    """
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        raise LegacyLogError(f"{path.parent}: this {FORMAT} has no {DATA_FILE} (its power samples)") from None
    except OSError as error:
        raise LegacyLogError(f"{path}: cannot read {DATA_FILE}: {error.strerror or error}") from None
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    samples = []
    for position, (number, line) in enumerate(numbered):
        try:
            sample = json.loads(line)
        except ValueError:
            if position == len(numbered) - 1 and samples:
                break
            raise LegacyLogError(f"{path}:{number}: not a JSON object, as every line of {DATA_FILE} must be") from None
        timestamp = sample.get("timestamp") if isinstance(sample, dict) else None
        if not isinstance(timestamp, int | float) or isinstance(timestamp, bool) or not math.isfinite(timestamp):
            raise LegacyLogError(f"{path}:{number}: a sample without a numeric 'timestamp'")
        samples.append(sample)
    if not samples:
        raise LegacyLogError(f"{path}: {DATA_FILE} of this {FORMAT} holds no sample")
    return sorted(samples, key=lambda sample: float(sample["timestamp"]))


# -- one log -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LegacyLog:
    """One old log directory as read: its samples, its info (empty without info.pkl), and the run's span.

    ``start`` and ``end`` are info.pkl's ``experiment_start`` and ``experiment_end``; without info.pkl the run spans
    its first to its last sample, and without an end (the process was killed) it ends at its last sample.
    ``intervals`` holds, per sample, the seconds its power is held (from the previous sample, or the start, until
    it), then the stretch from the last sample to the end, which takes the last sample's power.
    """

    directory: Path
    samples: tuple[Mapping[str, Any], ...]
    info: Mapping[str, Any]
    start: float
    end: float

    @property
    def timestamps(self) -> np.ndarray:
        return np.clip([float(sample["timestamp"]) for sample in self.samples], self.start, self.end)

    @property
    def intervals(self) -> np.ndarray:
        return np.diff(np.concatenate(([self.start], self.timestamps, [self.end])))

    def series(self, field: str) -> np.ndarray | None:
        """A numeric field per interval (the last sample's value repeated for the last stretch), a missing or
        non-numeric value as 0; None when no sample has it."""
        if not any(field in sample for sample in self.samples):
            return None
        values = [_number(sample.get(field)) for sample in self.samples]
        return np.array([*values, values[-1]], dtype=np.float64)

    def power(self) -> dict[str, tuple[np.ndarray, str]]:
        """Per component, its power per interval (W) and its method: the attributable share where it was recorded."""
        found = {}
        for field in POWER_FIELDS:
            attributable = self.series(field.attributable)
            if attributable is not None:
                found[field.component] = (attributable, POWER_SAMPLES_METHOD)
            elif (absolute := self.series(field.absolute)) is not None:
                found[field.absolute_component] = (absolute, WHOLE_MACHINE)
        return found

    def energy_joules(self) -> dict[str, float]:
        """Per component, 0.1.x's integral of its power over the run."""
        return {component: float(np.sum(watts * self.intervals)) for component, (watts, _) in self.power().items()}

    def cpu_seconds(self) -> np.ndarray:
        """CPU seconds at each sample as 0.1.x counted them: per pid the latest user + system time seen, summed."""
        latest: dict[str, float] = {}
        totals = []
        for sample in self.samples:
            times = sample.get("cpu_time_seconds")
            if isinstance(times, dict):
                for pid, value in times.items():
                    if isinstance(value, dict):
                        latest[str(pid)] = _number(value.get("user")) + _number(value.get("system"))
            totals.append(sum(latest.values()))
        return np.array(totals, dtype=np.float64)

    @property
    def gpu_count(self) -> int:
        gpus = self.info.get("gpu_info")
        return len(gpus) if isinstance(gpus, list | tuple) else 0

    def gpu_seconds(self) -> np.ndarray | None:
        """GPU seconds per interval as 0.1.x counted GPU-hours: time x average absolute utilisation x GPUs; None
        without GPUs in info.pkl or without that field."""
        utilisation = self.series("average_gpu_estimated_utilization_absolute")
        if utilisation is None or not self.gpu_count:
            return None
        return utilisation * self.intervals * self.gpu_count

    def recorded_g_per_kwh(self) -> float | None:
        """The region's average intensity info.pkl recorded (gCO2eq/kWh), None when it has none."""
        estimate = self.info.get("region_carbon_intensity_estimate")
        value = estimate.get("carbonIntensity") if isinstance(estimate, dict) else None
        return _number(value) if isinstance(value, int | float) and math.isfinite(value) else None

    def recorded_kg_co2eq(self, pue: float) -> float | None:
        """0.1.x's carbon figure: PUE x kWh per interval times the realtime intensity of that sample where it was
        recorded (gaps filled forward, then backward, then with the region's average), else the region's average;
        None when info.pkl recorded no intensity."""
        average = self.recorded_g_per_kwh()
        if average is None:
            return None
        kwh = sum(watts * self.intervals for watts, _ in self.power().values()) / 3.6e6
        if not any("realtime_carbon_intensity" in sample for sample in self.samples):
            return float(np.sum(kwh)) * pue * average / 1000.0
        realtime = [sample.get("realtime_carbon_intensity") for sample in self.samples]
        intensity = pd.to_numeric(pd.Series([*realtime, realtime[-1]]), errors="coerce").ffill().bfill().fillna(average)
        return float(np.sum(kwh * pue * intensity.to_numpy())) / 1000.0


def _number(value: Any) -> float:
    """A sample's value as a float: 0 for a missing, non-numeric or non-finite one (as pandas' sum skips NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return float(value)


def _timestamp(value: Any, path: Path, key: str) -> float | None:
    """A datetime of info.pkl as unix seconds (a naive one in this machine's local time, as 0.1.x read it)."""
    if value is None:
        return None
    if not isinstance(value, datetime.datetime):
        raise LegacyLogError(f"{path}: {INFO_FILE}'s {key} is {type(value).__name__}, not a datetime")
    return value.timestamp()


def read_log(directory: Path) -> LegacyLog:
    """The old log in ``directory`` (which holds ``impacttracker/``); LegacyLogError saying what is missing."""
    folder = directory / LOG_FOLDER
    samples = read_samples(folder / DATA_FILE)
    info = read_info(folder / INFO_FILE) if (folder / INFO_FILE).exists() else {}
    first, last = float(samples[0]["timestamp"]), float(samples[-1]["timestamp"])
    start = _timestamp(info.get("experiment_start"), folder / INFO_FILE, "experiment_start")
    end = _timestamp(info.get("experiment_end"), folder / INFO_FILE, "experiment_end")
    start = first if start is None else start
    end = max(last, start) if end is None else end
    if first < start - CLOCK_TOLERANCE_SECONDS or last > end + CLOCK_TOLERANCE_SECONDS or end < start:
        raise LegacyLogError(
            f"{folder}: its samples run from {_iso(first)} to {_iso(last)} but {INFO_FILE} says the experiment ran "
            f"from {_iso(start)} to {_iso(end)}; {INFO_FILE} holds local times of the machine that wrote it: set TZ "
            "to that machine's time zone (e.g. TZ=America/Los_Angeles)"
        )
    log = LegacyLog(directory=directory, samples=tuple(samples), info=info, start=start, end=end)
    if not log.power():
        fields = ", ".join(name for field in POWER_FIELDS for name in (field.attributable, field.absolute))
        raise LegacyLogError(f"{folder / DATA_FILE}: no sample of this {FORMAT} has a power field ({fields})")
    return log


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")


def legacy_run(directory: Path) -> Run:
    """The old log in ``directory`` as a Run whose counters 0.1.x's integrals reach (see the module docstring)."""
    return run_from_log(read_log(directory))


def run_from_log(log: LegacyLog) -> Run:
    """``log`` as a Run: its run id the directory as given, its experiment the directory's name."""
    directory = log.directory
    times = np.append(log.timestamps, log.end)
    rows = []
    methods = {}
    for component, (watts, method) in log.power().items():
        methods[component] = method
        rows += _counter_rows("impact_run_energy_joules_total", component, times, np.cumsum(watts * log.intervals))
    cpu = log.cpu_seconds()
    rows += _counter_rows("impact_run_cpu_seconds_total", "", times, np.append(cpu, cpu[-1]))
    if (gpu := log.gpu_seconds()) is not None:
        rows += _counter_rows("impact_run_gpu_seconds_total", "", times, np.cumsum(gpu))
    return Run(
        run_id=str(directory),
        experiment=directory.resolve().name,
        set="",
        labels={},
        user="",
        start_time=log.start,
        end_time=log.end,
        hosts=(legacy_host(log.info),) if log.info else (),
        methods=methods,
        samples=pd.DataFrame(rows, columns=SAMPLE_COLUMNS),
        source=f"{FORMAT} {directory}",
        measured_by=MEASURED_BY_LEGACY,
    )


def _counter_rows(metric: str, component: str, times: np.ndarray, values: np.ndarray) -> list[tuple[Any, ...]]:
    return [(metric, "", component, float(t), float(v)) for t, v in zip(times, values, strict=True)]


def legacy_host(info: Mapping[str, Any]) -> Host:
    """The hardware info.pkl recorded: py-cpuinfo's brand and count, and each GPU with its driver."""
    cpu = info.get("cpu_info") if isinstance(info.get("cpu_info"), dict) else {}
    gpus = info.get("gpu_info") if isinstance(info.get("gpu_info"), list | tuple) else ()
    return Host(
        instance="",
        hostname="(not recorded)",
        cpu_model=str(cpu.get("brand_raw") or cpu.get("brand") or ""),
        cpu_vendor=str(cpu.get("vendor_id_raw") or cpu.get("vendor_id") or ""),
        cpu_count=str(cpu.get("count") or ""),
        gpus=tuple(
            f"{gpu.get('name', '')} (driver {gpu.get('driver_version') or 'unknown'})"
            for gpu in gpus
            if isinstance(gpu, dict)
        ),
    )


# -- finding run directories ---------------------------------------------------------------------------------


def is_legacy_dir(directory: Path) -> bool:
    """Whether ``directory`` holds an old log (an ``impacttracker/`` folder) and no run.json."""
    return (directory / LOG_FOLDER).is_dir() and not (directory / RUN_JSON).exists()


def run_directories(path: Path) -> list[Path]:
    """The run directories ``path`` names: itself when it holds run.json or ``impacttracker/``, its parent when it
    is an ``impacttracker/`` folder or a run.json, else every such directory under it (as 0.1.x's commands walked their
    arguments), in path order; RunDataError when there is none."""
    if (path / RUN_JSON).exists() or (path / LOG_FOLDER).is_dir():
        return [path]
    if path.name == LOG_FOLDER and path.is_dir() or path.name == RUN_JSON and path.is_file():
        return [path.parent]
    if not path.is_dir():
        raise RunDataError(f"{path} does not exist" if not path.exists() else f"{path} is not a directory")
    found = sorted(_walk(path))
    if not found:
        raise RunDataError(
            f"{path} is not a run directory: it holds no {RUN_JSON} (written by track_run, impact-run or "
            f"ImpactTracker) and no {LOG_FOLDER}/ folder ({FORMAT}), and neither is anywhere under it"
        )
    return found


def _walk(root: Path) -> Iterator[Path]:
    """Every directory under ``root`` with run.json or ``impacttracker/``, not looking inside the ones found."""
    for directory, subdirectories, files in os.walk(root):
        here = Path(directory)
        if RUN_JSON in files or LOG_FOLDER in subdirectories:
            yield here
            subdirectories.clear()
        else:
            subdirectories.sort()


def expand(paths: Sequence[Path]) -> list[Path]:
    """``run_directories`` of every path, in order, each directory once."""
    return list(dict.fromkeys(directory for path in paths for directory in run_directories(Path(path))))


# -- 0.1.x's totals ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Totals:
    """What 0.1.x's ``DataInterface`` and ``generate-carbon-impact-statement`` summed over runs.

    ``kwh_pue`` is its ``total_power``: IT energy in kWh times the PUE. ``hours`` is its ``exp_len_hours``, the runs'
    durations added. ``recorded`` says whether some old log's carbon used the intensity its info.pkl recorded,
    ``world_average`` whether some run's used the world average because nothing else was known.
    """

    kg_co2eq: float
    kwh_pue: float
    hours: float
    pue: float
    runs: int
    recorded: bool
    world_average: bool


def impact_totals(
    paths: Sequence[Path],
    prometheus: Callable[[str | None], PrometheusRuns],
    intensity: CarbonIntensity,
    pue: float,
    series: Callable[[Run], TimeSeries] | None = None,
) -> Totals:
    """The totals over every run directory ``paths`` name (``expand``), old logs and new runs alike.

    Energy, duration and, with an intensity given, carbon are every report's figures of the run. Without one
    (``intensity.is_default``) an old log's carbon is what 0.1.x computed from the intensity its info.pkl recorded
    (``LegacyLog.recorded_kg_co2eq``); a run without a recorded intensity takes the world average.
    """
    kg = kwh = hours = 0.0
    count, used_recorded, world_average = 0, False, False
    for directory in expand(paths):
        log = read_log(directory) if is_legacy_dir(directory) else None
        runs = [run_from_log(log)] if log else load_run_dirs([directory], prometheus)
        for run in runs:
            figures = run_figures(run, intensity, pue, series(run) if series else None)
            recorded = log.recorded_kg_co2eq(pue) if log and intensity.is_default else None
            kg += figures.kg_co2eq if recorded is None else recorded
            used_recorded = used_recorded or recorded is not None
            world_average = world_average or (recorded is None and intensity.is_default)
            kwh += figures.total_kwh_pue
            hours += figures.duration_seconds / 3600.0
            count += 1
    return Totals(kg, kwh, hours, pue, count, used_recorded, world_average)
