"""Pure computations on a run's raw counter samples: totals, power, and how well the run was covered.

Everything here takes numpy arrays of raw samples (as Prometheus stored them) and extrapolates nothing: a
run's counters start at 0 when the run starts, so its total is the last value plus whatever a counter reset
(an exporter restarted without its state) hid, and its first sample holds the energy since the start. Its
counters stop moving when it ends, so a sample taken at or after the end holds its final value.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from experiment_impact_tracker.work import energy_per_unit
from impact_reporter import carbon
from impact_reporter.carbon import CarbonIntensity, TimeSeries, integrate_intensity, kg_co2eq, kwh_from_joules
from impact_reporter.forked import forked_map
from impact_reporter.runs import SAMPLE_COLUMNS, Run, RunDataError


@dataclass(frozen=True)
class Coverage:
    """How much of a run's window its samples cover.

    ``fraction`` is the covered share of the window: each stretch between two consecutive samples counts as
    covered up to one expected scrape interval, and the rest of a longer stretch is a gap. The run's start is a
    known point (its counters are 0 there), so the stretch from the start to the first sample counts like any
    other. The stretch from the last sample inside the run to its end counts only when a sample at or after
    the end holds the final counters (the exporter keeps finished runs exported, so the next scrape does): the
    counters stop at the end, so that sample measures the stretch however late it came. A run shorter than one
    interval whose final counters were scraped is thus fully covered, with ``samples`` 0. Without such a
    sample the last stretch is a gap, since the energy of the run's last moments was never scraped.
    ``largest_gap_seconds`` is the longest stretch; ``samples`` counts the samples in [start, end].
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


DEFAULT_INTERVAL_SECONDS = 15.0
"""The scrape interval assumed when the samples cannot show one (fewer than two): Prometheus' default."""


def median_spacing(timestamps: np.ndarray, default: float = DEFAULT_INTERVAL_SECONDS) -> float:
    """The usual spacing of the samples (their median step): the scrape interval as the samples show it."""
    if len(timestamps) < 2:
        return default
    return float(np.median(np.diff(timestamps)))


def coverage(timestamps: np.ndarray, start: float, end: float, interval: float) -> Coverage:
    """How well samples at ``timestamps`` cover the run [start, end] at the given scrape interval (see Coverage)."""
    duration = end - start
    inside = np.sort(timestamps[(timestamps >= start) & (timestamps <= end)])
    final_scraped = bool(np.any(timestamps >= end))
    if duration <= 0:
        return Coverage(1.0 if final_scraped else 0.0, 0.0, len(inside))
    points = inside[inside > start]
    if len(points) and points[-1] >= end:
        points = points[:-1]
    stretches = np.diff(np.concatenate(([start], points, [end])))
    covered = np.minimum(stretches, interval)
    if not final_scraped:
        covered[-1] = 0.0
    return Coverage(
        fraction=float(min(1.0, covered.sum() / duration)),
        largest_gap_seconds=float(stretches.max()),
        samples=len(inside),
    )


@dataclass(frozen=True)
class HostIntensity:
    """One host's part of a run's carbon: its energy (J, IT energy) and the intensity it was drawn at."""

    instance: str
    region: str  # the region its exporter exports, "" when none
    joules: float
    g_per_kwh: float
    intensity: CarbonIntensity

    def as_json(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "region": self.region,
            "energy_joules": self.joules,
            "g_per_kwh": self.g_per_kwh,
            "method": self.intensity.method,
            "gas": self.intensity.gas or "CO2e",
            "year": self.intensity.year,
            "source": self.intensity.source,
        }


@dataclass(frozen=True)
class RunFigures:
    """The numbers a report prints for one run, all derived from its raw samples.

    Energies are IT energy as measured (``*_pue`` adds the facility's overhead); ``measured`` says per
    component whether it came from hardware counters (RAPL, NVML) rather than an estimate.
    ``sample_interval_seconds`` is the scrape interval as the run's samples show it: each node's median step
    over its own samples of the run (never over the nodes' samples merged), the coarsest node's; the expected
    interval, else 15 s, when no node has two samples. ``power`` is the run's power per interval of that length
    from its start, the last one cut at its end: nothing before the start or after the end.
    ``peak_power_watts`` is the highest power over one whole such interval, None when the run is shorter than
    one interval (its power is then known only as the average): 15 s samples give a peak over 15 s, however
    finely the exporter measured. ``expected_interval_seconds`` is the scrape interval the data should have
    (``--expected-interval``), against which coverage is then computed, so data sparser than its scrapes
    (federated or downsampled) reads as poorly covered; None when not given: each node's own spacing is used.
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
    peak_power_watts: float | None
    cpu_hours: float
    gpu_hours: float | None
    coverage: Coverage
    resets: int  # exporter restarts without state seen during the run, over all nodes
    measured: Mapping[str, bool]
    power: Power
    sample_interval_seconds: float
    host_intensities: tuple[HostIntensity, ...] = ()
    work_units: Mapping[str, float] = field(default_factory=dict)  # unit -> count reported, over every node

    @property
    def energy_per_unit(self) -> dict[str, float]:
        """Energy per unit of work: ``joules_per_sample``, ``wh_per_1000_tokens``... (see work.py in the client)."""
        return energy_per_unit(self.total_joules, self.work_units)

    expected_interval_seconds: float | None = None

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
            "carbon_intensity_gas": self.intensity.gas or "CO2e",
            "carbon_intensity_year": self.intensity.year,
            "carbon_intensity_basis": self.intensity.describe(),
            "carbon_intensity_hosts": [host.as_json() for host in self.host_intensities],
            "average_power_watts": self.average_power_watts,
            "peak_power_watts": self.peak_power_watts,
            "cpu_hours": self.cpu_hours,
            "gpu_hours": self.gpu_hours,
            "coverage": self.coverage.fraction,
            "largest_gap_seconds": self.coverage.largest_gap_seconds,
            "sample_interval_seconds": self.sample_interval_seconds,
            "expected_interval_seconds": self.expected_interval_seconds,
            "counter_resets": self.resets,
            "measured": dict(self.measured),
            "work_units": dict(self.work_units),
            "energy_per_unit": self.energy_per_unit,
        }


NO_SAMPLES = pd.DataFrame(columns=SAMPLE_COLUMNS)
"""The samples of a run whose figures come back from a forked process: the run's own stay here."""
MEASURED_METHODS = frozenset({"rapl", "nvml-counter", "nvml-power"})
"""Methods whose energy the exporter measured, so reports call it measured: hardware energy counters read at every
sample (RAPL, NVML's total energy), or NVML's power integrated at the exporter's own sampling interval.

Not among them: ``legacy.POWER_SAMPLES_METHOD``, experiment-impact-tracker 0.1's RAPL power averaged over 2 s and
nvidia-smi's momentary draw, taken every few seconds and held in between by that tool (reports say "integrated
from sampled power"), nor ``estimate`` (package power modelled from CPU utilisation and TDP)."""


def run_figures(
    run: Run,
    intensity: CarbonIntensity,
    pue: float,
    intensity_series: TimeSeries | None = None,
    expected_interval: float | None = None,
) -> RunFigures:
    """Totals, power, hours, coverage and carbon of one run; coverage against ``expected_interval`` when given
    (seconds: the scrape interval the data should have), else against each node's own sample spacing.

    RunDataError when the run was found without figures (``Run.not_measured``), has no energy samples, or when
    its energy counters never moved: a run whose counters stayed at 0 was not measured (its processes' CPU time
    was lost, or the hardware counters did not move), and a zero would enter means and tests as a real figure.
    """
    if run.not_measured:
        raise RunDataError(run.not_measured)
    samples = run.samples
    series = split_series(samples)
    energy_series = {
        (instance, component): tv for (metric, instance, component), tv in series.items() if metric == ENERGY
    }
    if not energy_series:
        raise RunDataError(
            f"run {run.run_id} ({run.experiment} {run.set}) has no energy samples: was Prometheus scraping its "
            "exporter while it ran, and is the data still retained?"
        )
    end = run.end_time if run.end_time is not None else float(samples["timestamp"].max())
    duration = max(0.0, end - run.start_time)
    energy: dict[str, float] = defaultdict(float)
    resets: set[tuple[str, float]] = set()  # (instance, when): one exporter restart resets every component
    for (instance, component), (timestamps, values) in energy_series.items():
        energy[component] += counter_total(values)
        resets.update((instance, t) for t in timestamps[1:][np.diff(values) < 0])
    total_joules = float(sum(energy.values()))
    cpu_hours = counter_hours(series, "impact_run_cpu_seconds_total")
    if total_joules <= 0:
        used = f"although it used {cpu_hours * 3600:.3g} CPU-seconds" if cpu_hours else "and it recorded no CPU time"
        raise RunDataError(
            f"run {run.run_id} ({run.experiment} {run.set}) was not measured: its energy counters never moved {used}; "
            "its processes may have exited before the exporter sampled them (exporters that lost a root's last "
            "CPU time), or the node's energy counters did not count"
        )
    node_times = node_timestamps(energy_series)
    interval = sample_interval(node_times, run.start_time, end, expected_interval or DEFAULT_INTERVAL_SECONDS)
    power = component_power(energy_series, run.start_time, end, interval)
    hosts = host_intensities(run, energy_series, intensity, end, interval, intensity_series)
    g_per_kwh = carbon.energy_weighted([(host.joules, host.g_per_kwh) for host in hosts])
    run_intensity = carbon.combined_intensity([(h.instance, h.joules, h.intensity) for h in hosts], g_per_kwh)
    cover = run_coverage(node_times, run.start_time, end, expected_interval)
    kwh = kwh_from_joules(total_joules)
    return RunFigures(
        run=run,
        duration_seconds=duration,
        energy_joules=dict(energy),
        total_joules=total_joules,
        total_kwh=kwh,
        total_kwh_pue=kwh * pue,
        kg_co2eq=kg_co2eq(kwh, g_per_kwh, pue),
        intensity=run_intensity,
        intensity_g_per_kwh=g_per_kwh,
        host_intensities=tuple(hosts),
        pue=pue,
        average_power_watts=total_joules / duration if duration > 0 else 0.0,
        peak_power_watts=peak_power(power, interval),
        cpu_hours=cpu_hours or 0.0,
        gpu_hours=counter_hours(series, "impact_run_gpu_seconds_total"),
        coverage=cover,
        resets=len(resets),
        measured={component: run.methods.get(component, "") in MEASURED_METHODS for component in energy},
        power=power,
        sample_interval_seconds=interval,
        work_units=work_totals(series),
        expected_interval_seconds=expected_interval,
    )


def runs_figures(
    runs: Sequence[Run],
    intensity: CarbonIntensity,
    pue: float,
    intensity_series: Callable[[Run], TimeSeries] | None = None,
    expected_interval: float | None = None,
) -> list[RunFigures | RunDataError]:
    """Each run's figures (``run_figures``), or the RunDataError that says why it has none, in order.

    Many runs are computed in forked processes (impact_reporter.forked), which send back each run's figures
    without its samples (the run is put back here); not when a run's intensity series is read from Prometheus
    (``intensity_series``), as forked processes must not share a connection.
    """

    def figures_or_error(run: Run) -> RunFigures | RunDataError:
        try:
            series = intensity_series(run) if intensity_series is not None else None
            return run_figures(run, intensity, pue, series, expected_interval)
        except RunDataError as error:
            return error

    if intensity_series is not None:
        return [figures_or_error(run) for run in runs]

    def without_samples(run: Run) -> RunFigures | RunDataError:
        result = figures_or_error(run)
        return replace(result, run=replace(run, samples=NO_SAMPLES)) if isinstance(result, RunFigures) else result

    computed = forked_map(without_samples, runs)
    return [
        replace(result, run=run) if isinstance(result, RunFigures) else result
        for result, run in zip(computed, runs, strict=True)
    ]


def host_intensities(
    run: Run,
    energy_series: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    intensity: CarbonIntensity,
    end: float,
    interval: float,
    intensity_series: TimeSeries | None,
) -> list[HostIntensity]:
    """Each host's energy and the intensity it was drawn at, by the precedence of ``carbon.intensity_for_host``;
    hosts whose counters never moved are left out.

    A host whose intensity is a series gets the series' energy-weighted mean over its own sampled power.
    RunDataError names a host region the table lacks, or a series without data for the run.
    """
    regions = {host.instance: host.region for host in run.hosts}
    by_instance: dict[str, dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]] = defaultdict(dict)
    for (instance, component), series in energy_series.items():
        by_instance[instance][(instance, component)] = series
    hosts = []
    for instance, own in sorted(by_instance.items()):
        joules = sum(counter_total(values) for _, values in own.values())
        if joules <= 0:
            continue  # a host that drew nothing for the run adds no carbon at any intensity
        try:
            chosen = carbon.intensity_for_host(intensity, regions.get(instance, ""))
        except ValueError as error:
            raise RunDataError(f"run {run.run_id}: host {instance}: {error}") from None
        g_per_kwh = chosen.g_per_kwh
        if g_per_kwh is None:
            g_per_kwh = series_intensity(own, run, end, interval, intensity_series)
        hosts.append(HostIntensity(str(instance), regions.get(instance, ""), joules, g_per_kwh, chosen))
    return hosts


def series_intensity(
    energy_series: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]],
    run: Run,
    end: float,
    interval: float,
    intensity_series: TimeSeries | None,
) -> float:
    """The energy-weighted mean of a time-varying intensity over the sampled power of ``energy_series``, applied
    to all of their energy; RunDataError when there is no series or no sampled power."""
    ends, watts = component_power(energy_series, run.start_time, end, interval).total()
    if intensity_series is None or not len(watts) or watts.sum() <= 0:
        raise RunDataError(f"run {run.run_id}: the carbon intensity series has no data for the run")
    edges = np.concatenate(([run.start_time], ends))
    grams = integrate_intensity(edges, np.append(watts, 0.0), intensity_series)
    return grams / kwh_from_joules(float(np.sum(watts * np.diff(edges))))


ENERGY = "impact_run_energy_joules_total"
WORK = "impact_run_work_units_total"
SeriesKey = tuple[str, str, str]
"""A series of a run's samples: (metric, instance, component); a work counter's component is its unit."""


def split_series(samples: pd.DataFrame) -> dict[SeriesKey, tuple[np.ndarray, np.ndarray]]:
    """Each series of a run's samples, in key order, as (timestamps, values) in time order.

    The table is split once, so that each figure reads arrays instead of filtering and grouping the table
    again: pandas' per-call cost, not the samples, was what a report of thousands of runs spent its time on.
    A table read from a store holds each series in one block of rows in time order (runs.samples_frames),
    which is split where its key changes; any other table is sorted first.
    """
    if samples.empty:
        return {}
    in_blocks = series_blocks(samples)
    if in_blocks is not None:
        return in_blocks
    code = np.zeros(len(samples), dtype=np.int64)
    for name in ("metric", "instance", "component"):
        codes, uniques = pd.factorize(samples[name], sort=True, use_na_sentinel=False)
        code = code * len(uniques) + codes
    timestamps = samples["timestamp"].to_numpy(dtype=np.float64)
    values = samples["value"].to_numpy(dtype=np.float64)
    order = np.lexsort((timestamps, code))
    code, timestamps, values = code[order], timestamps[order], values[order]
    firsts = np.concatenate(([0], np.flatnonzero(np.diff(code)) + 1))
    keys = zip(*(samples[name].to_numpy()[order[firsts]] for name in ("metric", "instance", "component")), strict=True)
    bounds = [*firsts.tolist(), len(code)]
    return {
        key: (timestamps[bounds[i] : bounds[i + 1]], values[bounds[i] : bounds[i + 1]]) for i, key in enumerate(keys)
    }


def series_blocks(samples: pd.DataFrame) -> dict[SeriesKey, tuple[np.ndarray, np.ndarray]] | None:
    """``split_series`` of a table whose series each lie in one block of rows in time order; None for any other."""
    columns = [samples[name].to_numpy() for name in ("metric", "instance", "component")]
    timestamps = samples["timestamp"].to_numpy(dtype=np.float64)
    values = samples["value"].to_numpy(dtype=np.float64)
    changed = np.zeros(len(samples) - 1, dtype=bool)
    for column in columns:
        changed |= column[1:] != column[:-1]
    if not (np.diff(timestamps)[~changed] > 0).all():
        return None
    bounds = [0, *(np.flatnonzero(changed) + 1).tolist(), len(samples)]
    keys = [tuple(column[first] for column in columns) for first in bounds[:-1]]
    if len(set(keys)) != len(keys):
        return None
    blocks = {
        key: (timestamps[first:after], values[first:after])
        for key, first, after in zip(keys, bounds[:-1], bounds[1:], strict=True)
    }
    return dict(sorted(blocks.items()))


def work_totals(series: Mapping[SeriesKey, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Units of work the run reported, per unit, summed over its nodes (each node's counter has its processes')."""
    totals: dict[str, float] = defaultdict(float)
    for (metric, _, unit), (_, values) in series.items():
        if metric == WORK:
            totals[unit] += counter_total(values)
    return dict(sorted(totals.items()))


def counter_hours(series: Mapping[SeriesKey, tuple[np.ndarray, np.ndarray]], metric: str) -> float | None:
    """A seconds counter's total over every node, in hours; None when the run has no such counter."""
    totals = [counter_total(values) for (name, _, _), (_, values) in series.items() if name == metric]
    return sum(totals) / 3600.0 if totals else None


def node_timestamps(energy_series: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Each node's energy sample times, every component's together."""
    times: dict[str, list[np.ndarray]] = defaultdict(list)
    for (instance, _), (timestamps, _) in energy_series.items():
        times[instance].append(timestamps)
    return {instance: np.concatenate(parts) for instance, parts in sorted(times.items())}


def run_timestamps(timestamps: np.ndarray, start: float, end: float) -> np.ndarray:
    """A node's sample times that bear on the run, sorted: from its start through the first at or after its end
    (which holds the final counters), or every sample from the start when that leaves fewer than two.

    Samples read later (a finished run stays exported a while) repeat the final value; leaving them out keeps
    every figure the same whenever the report is made. A run shorter than one interval needs them to show it.
    """
    t = np.sort(np.unique(timestamps))
    t = t[t >= start]
    after = np.flatnonzero(t >= end)
    through_end = t[: after[0] + 1] if len(after) else t
    return through_end if len(through_end) >= 2 else t


def sample_interval(node_times: Mapping[str, np.ndarray], start: float, end: float, default: float) -> float:
    """The scrape interval as a run's energy samples (each node's times) show it: each node's median step over
    its own samples of the run, the coarsest node's; ``default`` when no node has two. Nodes scraped at different
    moments (each every second, half a second apart) are each 1 s apart: merged, their samples would read as
    0.5 s."""
    steps = [
        median_spacing(times)
        for timestamps in node_times.values()
        if len(times := run_timestamps(timestamps, start, end)) >= 2
    ]
    return max(steps) if steps else default


WHOLE = 1 - 1e-6
"""An interval of the power grid at least this share of the sample interval long is whole. Unix times are
float64, exact to about 2.4e-7 s in this century: a grid edge may be that far from start + k x interval."""


def power_grid(start: float, end: float, interval: float) -> np.ndarray:
    """The edges of a run's power intervals: every ``interval`` from its start, the last one cut at its end (an
    edge closer to the end than the unix times' precision is the end)."""
    if end <= start:
        return np.array([start], dtype=np.float64)
    grid = np.arange(start, end, interval, dtype=np.float64)
    if end - grid[-1] <= interval * (1 - WHOLE):
        grid = grid[:-1]
    return np.append(grid, end)


def energy_since_start(
    timestamps: np.ndarray, values: np.ndarray, start: float, end: float, at: np.ndarray
) -> np.ndarray:
    """One node's energy of a run counter from the run's start until each time in ``at`` (within [start, end]).

    The counter is 0 at the start; a sample inside the run holds the energy until then; the first sample at or
    after the end holds the run's final energy, which it reached at the end. Between known points the energy
    grows linearly; past the last known point (the final counters never scraped) it is unknown: NaN.
    """
    order = np.argsort(timestamps, kind="stable")
    t, total = timestamps[order], running_total(values[order])
    inside = (t > start) & (t < end)
    known_t, known_e = [start, *t[inside]], [0.0, *total[inside]]
    after = np.flatnonzero(t >= end)
    if len(after) and end > start:
        known_t.append(end)
        known_e.append(float(total[after[0]]))
    energy = np.interp(at, known_t, known_e)
    energy[at > known_t[-1]] = np.nan
    return energy


@dataclass(frozen=True)
class Power:
    """A run's mean power over each interval of its power grid (``power_grid``), per component, summed over nodes.

    ``watts[component][i]`` is the power from ``grid[i]`` to ``grid[i + 1]``, NaN where no node's samples close
    the interval (the final counters never scraped). Arrays rather than a table: a report of 10,000 runs spent
    a fifth of its figures' time making tables of them.
    """

    grid: np.ndarray
    watts: Mapping[str, np.ndarray]

    @property
    def empty(self) -> bool:
        return not any(np.isfinite(watts).any() for watts in self.watts.values())

    def total(self) -> tuple[np.ndarray, np.ndarray]:
        """(interval ends, power summed over components) of the intervals whose power some component knows."""
        if not self.watts:
            return np.array([]), np.array([])
        stacked = np.vstack(list(self.watts.values()))
        known = np.isfinite(stacked).any(axis=0)
        return self.grid[1:][known], np.nansum(stacked[:, known], axis=0)

    def table(self) -> pd.DataFrame:
        """One row per component and interval with a known power: ``timestamp`` (the interval's end), ``component``
        and ``watts``, components in name order (for notebooks and tests)."""
        rows = [
            pd.DataFrame({"timestamp": self.grid[1:][known], "component": component, "watts": watts[known]})
            for component, watts in sorted(self.watts.items())
            if (known := np.isfinite(watts)).any()
        ]
        return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["timestamp", "component", "watts"])


def component_power(
    energy_series: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]], start: float, end: float, interval: float
) -> Power:
    """Power per component over [start, end], summed over nodes, on the grid of ``power_grid``.

    ``energy_series`` holds each (instance, component) energy counter's (timestamps, values). The first interval
    begins at the run's start, where the counters were 0, and none reaches past the end.
    """
    grid = power_grid(start, end, interval)
    cumulative: dict[str, np.ndarray] = {}
    if len(grid) >= 2:
        for (_, component), (timestamps, values) in sorted(energy_series.items(), key=lambda item: item[0][::-1]):
            since_start = energy_since_start(timestamps, values, start, end, grid)
            cumulative[component] = cumulative.get(component, 0.0) + since_start
    return Power(grid, {component: np.diff(energy) / np.diff(grid) for component, energy in cumulative.items()})


def peak_power(power: Power, interval: float) -> float | None:
    """The highest power over one whole interval of the run's grid; None when there is none: a run shorter than
    one interval is known only by its average.

    Whole intervals are read off the grid's own edges, not recomputed from the start: at unix times, start +
    k x interval is not exactly an edge, and an interval of 1.001 s would then never count as whole."""
    ends, watts = power.total()
    whole = np.isin(ends, power.grid[1:][np.diff(power.grid) >= interval * WHOLE])
    return float(watts[whole].max()) if whole.any() else None


def run_coverage(
    node_times: Mapping[str, np.ndarray], start: float, end: float, expected: float | None = None
) -> Coverage:
    """The worst coverage over the run's nodes (each node's energy sample times): a run is as well measured as
    its worst-covered node. Each node is judged against ``expected`` when given, else against its own median
    spacing."""
    worst: Coverage | None = None
    for node in node_times.values():
        timestamps = run_timestamps(node, start, end)
        node_coverage = coverage(timestamps, start, end, expected or median_spacing(timestamps))
        if worst is None or node_coverage.fraction < worst.fraction:
            worst = node_coverage
    return worst or Coverage(0.0, end - start, 0)
