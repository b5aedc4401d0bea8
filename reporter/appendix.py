"""What an appendix says: per-run figures, per-set summaries and set-versus-set comparisons, before rendering.

The renderer (reporter/latex.py) prints exactly what this module computes, and ``appendix.json`` holds the
same numbers, so every figure in a PDF can be checked against a machine-readable file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reporter.carbon import CarbonIntensity
from reporter.energy import RunFigures, run_figures
from reporter.runs import Run, RunDataError
from reporter.stats import Comparison, Summary, compare_all, summarize


@dataclass(frozen=True)
class Quantity:
    """One number reported per run, summarised per set and compared between sets."""

    key: str
    label: str
    unit: str
    value: Callable[[RunFigures], float | None]
    components: tuple[str, ...] | None = ()  # the energy it rests on: None for every component, () for none


QUANTITIES: tuple[Quantity, ...] = (
    Quantity("total_kwh", "Total energy", "kWh", lambda f: f.total_kwh, None),
    Quantity("cpu_kwh", "CPU package energy", "kWh", lambda f: _component_kwh(f, "cpu"), ("cpu",)),
    Quantity("dram_kwh", "DRAM energy", "kWh", lambda f: _component_kwh(f, "dram"), ("dram",)),
    Quantity("gpu_kwh", "GPU energy", "kWh", lambda f: _component_kwh(f, "gpu"), ("gpu",)),
    Quantity("total_kwh_pue", "PUE-adjusted energy", "kWh", lambda f: f.total_kwh_pue, None),
    Quantity("kg_co2eq", "Carbon emissions", "kg CO2eq", lambda f: f.kg_co2eq, None),
    Quantity("duration_hours", "Duration", "h", lambda f: f.duration_seconds / 3600.0),
    Quantity("cpu_hours", "CPU time", "CPU-h", lambda f: f.cpu_hours),
    Quantity("gpu_hours", "GPU time", "GPU-h", lambda f: f.gpu_hours),
    Quantity("average_power_watts", "Average power", "W", lambda f: f.average_power_watts, None),
)


def _component_kwh(figures: RunFigures, component: str) -> float | None:
    joules = figures.energy_joules.get(component)
    return None if joules is None else joules / 3.6e6


@dataclass(frozen=True)
class FailedRun:
    """A run that could not be reported (no samples, say), with the reason shown in its place."""

    run: Run
    reason: str


@dataclass(frozen=True)
class SetReport:
    """One experiment set: its runs' figures in order, the runs that failed, and a summary per quantity."""

    name: str
    figures: tuple[RunFigures, ...]
    failed: tuple[FailedRun, ...]
    summaries: Mapping[str, Summary]

    def values(self, quantity: Quantity) -> list[float]:
        return [v for f in self.figures if (v := quantity.value(f)) is not None]

    def estimated(self, quantity: Quantity) -> bool:
        """Whether the quantity rests on energy that was estimated rather than measured in some run."""
        estimated = {c for f in self.figures for c, measured in f.measured.items() if not measured}
        if quantity.components is None:
            return bool(estimated)
        return bool(estimated & set(quantity.components))

    @property
    def cpu_models(self) -> frozenset[str]:
        return frozenset(h.cpu_model for f in self.figures for h in f.run.hosts if h.cpu_model)

    @property
    def methods(self) -> frozenset[tuple[str, str]]:
        return frozenset((c, f.run.methods.get(c, "unknown")) for f in self.figures for c in f.energy_joules)


@dataclass(frozen=True)
class ComparisonReport:
    """The treatment effect of set ``a`` versus set ``b`` for every quantity both have, with warnings."""

    a: SetReport
    b: SetReport
    comparisons: Mapping[str, Comparison]
    warnings: tuple[str, ...]


def set_report(
    name: str,
    runs: Sequence[Run],
    intensity: CarbonIntensity,
    pue: float,
    intensity_series: Callable[[Run], Any] | None = None,
) -> SetReport:
    """Figures of each run of a set (in start order) and the set's summaries; failed runs are kept aside."""
    figures, failed = [], []
    for run in sorted(runs, key=lambda r: (r.start_time, r.run_id)):
        try:
            series = intensity_series(run) if intensity_series else None
            figures.append(run_figures(run, intensity, pue, series))
        except RunDataError as error:
            failed.append(FailedRun(run, str(error)))
    report = SetReport(name, tuple(figures), tuple(failed), {})
    summaries = {q.key: summarize(report.values(q)) for q in QUANTITIES if report.values(q)}
    return SetReport(name, tuple(figures), tuple(failed), summaries)


def comparison_report(a: SetReport, b: SetReport) -> ComparisonReport:
    """Welch comparisons of every shared quantity, Holm-adjusted, with warnings when the sets differ in kind."""
    shared = [q for q in QUANTITIES if q.key in a.summaries and q.key in b.summaries]
    comparisons = compare_all({q.key: a.values(q) for q in shared}, {q.key: b.values(q) for q in shared})
    warnings = []
    if a.cpu_models != b.cpu_models:
        warnings.append(
            "The sets ran on different hardware ("
            f"{', '.join(sorted(a.cpu_models)) or 'unknown'} versus {', '.join(sorted(b.cpu_models)) or 'unknown'}): "
            "differences in energy may come from the hardware rather than the treatment."
        )
    if a.methods != b.methods:
        warnings.append(
            "The sets' energy was obtained by different methods (measured versus estimated): "
            "their difference mixes the treatment with the measurement."
        )
    return ComparisonReport(a, b, comparisons, tuple(warnings))


SAFE_NAME = re.compile(r"[^A-Za-z0-9 ()._+,=-]")


def safe_file_name(name: str) -> str:
    """A file name for a set name: ordinary names stay as they are (as the seed wrote them), others are tamed."""
    safe = SAFE_NAME.sub("_", name).strip().lstrip(".")
    return safe[:120] or "set"


def appendix_document(sets: Sequence[SetReport], comparisons: Sequence[ComparisonReport]) -> dict[str, Any]:
    """Every number the appendix prints, as JSON-able data (written as appendix.json)."""
    return {
        "sets": [
            {
                "name": report.name,
                "directory": safe_file_name(report.name),
                "runs": [f.as_json() for f in report.figures],
                "failed_runs": [{"run_id": f.run.run_id, "reason": f.reason} for f in report.failed],
                "summary": {key: summary.__dict__ for key, summary in report.summaries.items()},
            }
            for report in sets
        ],
        "comparisons": [
            {
                "a": c.a.name,
                "b": c.b.name,
                "file": f"{safe_file_name(c.a.name)}_v_{safe_file_name(c.b.name)}.pdf",
                "quantities": {key: comparison.__dict__ for key, comparison in c.comparisons.items()},
                "warnings": list(c.warnings),
            }
            for c in comparisons
        ],
    }
