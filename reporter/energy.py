"""Pure computations on a run's raw counter samples: totals, power, and how well the run was covered.

Everything here takes numpy arrays of raw samples (as Prometheus stored them) and extrapolates nothing: a
run's counters start at 0 when the run starts, so its total is the last value plus whatever a counter reset
(an exporter restarted without its state) hid.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from reporter.carbon import CarbonIntensity, TimeSeries, integrate_intensity, kg_co2eq, kwh_from_joules
from reporter.runs import Run, RunDataError


@dataclass(frozen=True)
class Coverage:
    """How much of a run's window its samples cover.

    ``fraction`` is the covered share of the window: each stretch between two consecutive samples (and from
    the run's start to the first, and from the last to its end) counts as covered up to one expected scrape
    interval; the rest of a longer stretch is a gap. ``largest_gap_seconds`` is the longest stretch.
    """

    fraction: float
    largest_gap_seconds: float
    samples: int


def running_total(values: np.ndarray) -> np.ndarray:
    """A run counter's raw samples with every reset stepped over: what the counter would read had it never reset.

    A drop is a reset (the exporter lost its state and counted again from 0): the value after the drop is all
    new, as Prometheus' own ``increase`` treats it. The first value counts in full, because run counters start
    at 0 when the run starts.
    """
    if len(values) == 0:
        return np.array([], dtype=np.float64)
    steps = np.diff(values)
    increases = np.where(steps < 0, values[1:], steps)
    return np.concatenate(([values[0]], values[0] + np.cumsum(increases)))


def counter_total(values: np.ndarray) -> float:
    """Total of a counter that started at 0 with the run, resets stepped over."""
    return float(running_total(values)[-1]) if len(values) else 0.0


def expected_interval(timestamps: np.ndarray, default: float = 15.0) -> float:
    """The usual spacing of the samples (their median step): the scrape interval as the samples show it."""
    if len(timestamps) < 2:
        return default
    return float(np.median(np.diff(timestamps)))


def coverage(timestamps: np.ndarray, start: float, end: float, interval: float) -> Coverage:
    """How well samples at ``timestamps`` cover the window [start, end] at the given scrape interval."""
    duration = end - start
    inside = timestamps[(timestamps >= start) & (timestamps <= end)]
    if duration <= 0:
        return Coverage(1.0 if len(inside) else 0.0, 0.0, len(inside))
    edges = np.concatenate(([start], inside, [end]))
    stretches = np.diff(edges)
    covered = np.minimum(stretches, interval).sum() if len(inside) else 0.0
    return Coverage(
        fraction=float(min(1.0, covered / duration)),
        largest_gap_seconds=float(stretches.max()),
        samples=len(inside),
    )


@dataclass(frozen=True)
class RunFigures:
    """The numbers a report prints for one run, all derived from its raw samples.

    Energies are IT energy as measured (``*_pue`` adds the facility's overhead); ``measured`` says per
    component whether it came from hardware counters (RAPL, NVML) rather than an estimate.
    """

    run: Run
    duration_seconds: float
    energy_joules: Mapping[str, float]
    total_joules: float
    total_kwh: float
    total_kwh_pue: float
    kg_co2eq: float
    intensity: CarbonIntensity
    intensity_g_per_kwh: float
    pue: float
    average_power_watts: float
    peak_power_watts: float
    cpu_hours: float
    gpu_hours: float | None
    coverage: Coverage
    resets: int  # exporter restarts without state seen during the run, over all nodes
    measured: Mapping[str, bool]
    power: pd.DataFrame  # columns: timestamp, component, watts (summed over nodes), for figures

    def as_json(self) -> dict[str, Any]:
        """The run's metadata and figures as JSON-able data (``impact-report runs --format json``, appendix.json)."""
        return {
            **self.run.metadata(),
            "duration_seconds": self.duration_seconds,
            "energy_joules": dict(self.energy_joules),
            "total_joules": self.total_joules,
            "total_kwh": self.total_kwh,
            "total_kwh_pue": self.total_kwh_pue,
            "pue": self.pue,
            "kg_co2eq": self.kg_co2eq,
            "carbon_intensity_g_per_kwh": self.intensity_g_per_kwh,
            "carbon_intensity_source": self.intensity.source,
            "carbon_intensity_method": self.intensity.method,
            "average_power_watts": self.average_power_watts,
            "peak_power_watts": self.peak_power_watts,
            "cpu_hours": self.cpu_hours,
            "gpu_hours": self.gpu_hours,
            "coverage": self.coverage.fraction,
            "largest_gap_seconds": self.coverage.largest_gap_seconds,
            "counter_resets": self.resets,
            "measured": dict(self.measured),
        }


MEASURED_METHODS = frozenset({"rapl", "nvml-counter", "nvml-power"})


def run_figures(
    run: Run, intensity: CarbonIntensity, pue: float, intensity_series: TimeSeries | None = None
) -> RunFigures:
    """Totals, power, hours, coverage and carbon of one run; RunDataError when it has no samples."""
    samples = run.samples
    energy_rows = samples[samples["metric"] == "impact_run_energy_joules_total"]
    if energy_rows.empty:
        raise RunDataError(
            f"run {run.run_id} ({run.experiment} {run.set}) has no energy samples: was Prometheus scraping its "
            "exporter while it ran, and is the data still retained?"
        )
    end = run.end_time if run.end_time is not None else float(samples["timestamp"].max())
    duration = max(0.0, end - run.start_time)
    energy: dict[str, float] = defaultdict(float)
    resets: set[tuple[str, float]] = set()  # (instance, when): one exporter restart resets every component
    for (instance, component), series in energy_rows.groupby(["instance", "component"], sort=True):
        series = series.sort_values("timestamp")
        values = series["value"].to_numpy()
        energy[component] += counter_total(values)
        resets.update((instance, t) for t in series["timestamp"].to_numpy()[1:][np.diff(values) < 0])
    total_joules = float(sum(energy.values()))
    power = component_power(energy_rows)
    grid_power = power.groupby("timestamp")["watts"].sum()
    if intensity.g_per_kwh is not None:
        g_per_kwh = intensity.g_per_kwh
    elif intensity_series is not None and len(grid_power) and grid_power.sum() > 0:
        # The energy-weighted intensity over the sampled part of the run, applied to all of its energy.
        interval = expected_interval(grid_power.index.to_numpy())
        grams = integrate_intensity(grid_power.index.to_numpy() - interval, grid_power.to_numpy(), intensity_series)
        g_per_kwh = grams / kwh_from_joules(float(grid_power.sum()) * interval)
    else:
        raise RunDataError(f"run {run.run_id}: the carbon intensity series has no data for the run")
    cover = run_coverage(energy_rows, run.start_time, end)
    kwh = kwh_from_joules(total_joules)
    return RunFigures(
        run=run,
        duration_seconds=duration,
        energy_joules=dict(energy),
        total_joules=total_joules,
        total_kwh=kwh,
        total_kwh_pue=kwh * pue,
        kg_co2eq=kg_co2eq(kwh, g_per_kwh, pue),
        intensity=intensity,
        intensity_g_per_kwh=g_per_kwh,
        pue=pue,
        average_power_watts=total_joules / duration if duration > 0 else 0.0,
        peak_power_watts=float(grid_power.max()) if len(grid_power) else 0.0,
        cpu_hours=counter_hours(samples, "impact_run_cpu_seconds_total") or 0.0,
        gpu_hours=counter_hours(samples, "impact_run_gpu_seconds_total"),
        coverage=cover,
        resets=len(resets),
        measured={component: run.methods.get(component, "") in MEASURED_METHODS for component in energy},
        power=power,
    )


def counter_hours(samples: pd.DataFrame, metric: str) -> float | None:
    """A seconds counter's total over every node, in hours; None when the run has no such counter."""
    rows = samples[samples["metric"] == metric]
    if rows.empty:
        return None
    seconds = sum(
        counter_total(series.sort_values("timestamp")["value"].to_numpy())
        for _, series in rows.groupby("instance")
    )
    return seconds / 3600.0


def component_power(energy_rows: pd.DataFrame) -> pd.DataFrame:
    """Power per component over time, summed over nodes on a common grid of the scrape interval."""
    frames = []
    for component, rows in energy_rows.groupby("component", sort=True):
        timestamps = np.sort(rows["timestamp"].unique())
        interval = expected_interval(timestamps)
        grid = np.arange(timestamps[0], timestamps[-1] + interval / 2, interval)
        if len(grid) < 2:
            continue
        cumulative = np.zeros(len(grid))
        for _, series in rows.groupby("instance"):
            series = series.sort_values("timestamp")
            cumulative += np.interp(grid, series["timestamp"].to_numpy(), running_total(series["value"].to_numpy()))
        watts = np.diff(cumulative) / interval
        frames.append(pd.DataFrame({"timestamp": grid[1:], "component": component, "watts": watts}))
    if not frames:
        return pd.DataFrame(columns=["timestamp", "component", "watts"])
    return pd.concat(frames, ignore_index=True)


def run_coverage(energy_rows: pd.DataFrame, start: float, end: float) -> Coverage:
    """The worst coverage over the run's nodes: a run is as well measured as its worst-covered node."""
    worst: Coverage | None = None
    for _, rows in energy_rows.groupby("instance"):
        timestamps = np.sort(rows["timestamp"].unique())
        node = coverage(timestamps, start, end, expected_interval(timestamps))
        if worst is None or node.fraction < worst.fraction:
            worst = node
    return worst or Coverage(0.0, end - start, 0)
