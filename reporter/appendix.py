"""What an appendix says: per-run figures, per-set summaries and set-versus-set comparisons, before rendering.

The renderer (reporter/latex.py) prints exactly what this module computes, and ``appendix.json`` holds the
same numbers, so every figure in a PDF can be checked against a machine-readable file.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from experiment_impact_tracker.work import PER_UNIT
from impact_reporter.carbon import CarbonIntensity
from impact_reporter.energy import RunFigures, runs_figures
from impact_reporter.legacy import is_power_samples
from impact_reporter.runs import Run, RunDataError
from impact_reporter.stats import Comparison, Summary, compare_all, holm_family, repeated_tests, summarize


@dataclass(frozen=True)
class Quantity:
    """One number reported per run, summarised per set and compared between sets."""

    key: str
    label: str
    unit: str
    value: Callable[[RunFigures], float | None]
    components: tuple[str, ...] | None = ()  # the energy it rests on: None for every component, () for none
    additive: bool = True  # whether a sum over runs means something (energy does; a rate such as power does not)


QUANTITIES: tuple[Quantity, ...] = (
    Quantity("total_kwh", "Total energy", "kWh", lambda f: f.total_kwh, None),
    Quantity("cpu_kwh", "CPU package energy", "kWh", lambda f: _component_kwh(f, "cpu"), ("cpu",)),
    Quantity("dram_kwh", "DRAM energy", "kWh", lambda f: _component_kwh(f, "dram"), ("dram",)),
    Quantity("gpu_kwh", "GPU energy", "kWh", lambda f: _component_kwh(f, "gpu"), ("gpu",)),
    # experiment-impact-tracker 0.1 recorded CPU package and DRAM as one attributable power (reporter/legacy.py)
    Quantity(
        "cpu_dram_kwh", "CPU package and DRAM energy", "kWh", lambda f: _component_kwh(f, "cpu+dram"), ("cpu+dram",)
    ),
    Quantity("total_kwh_pue", "PUE-adjusted energy", "kWh", lambda f: f.total_kwh_pue, None),
    Quantity("kg_co2eq", "Carbon emissions", "kg CO2eq", lambda f: f.kg_co2eq, None),
    Quantity("duration_hours", "Duration", "h", lambda f: f.duration_seconds / 3600.0),
    Quantity("cpu_hours", "CPU time", "CPU-h", lambda f: f.cpu_hours),
    Quantity("gpu_hours", "GPU time", "GPU-h", lambda f: f.gpu_hours),
    Quantity("average_power_watts", "Average power", "W", lambda f: f.average_power_watts, None, False),
    *(
        Quantity(spec.key, spec.label, spec.unit, lambda f, key=spec.key: f.energy_per_unit.get(key), None, False)
        for spec in PER_UNIT.values()
    ),
)
"""Energy per unit of work comes last: a run has it for the units it reported (Run.add_work, the callbacks)."""


def _method(figures: RunFigures, component: str) -> str:
    return figures.run.methods.get(component) or "unknown"


def _component_kwh(figures: RunFigures, component: str) -> float | None:
    joules = figures.energy_joules.get(component)
    return None if joules is None else joules / 3.6e6


def component_label(component: str) -> str:
    """A component's name in a sentence: the label of its energy quantity ("GPU energy"), else "<name> energy"."""
    for quantity in QUANTITIES:
        if quantity.components == (component,):
            return quantity.label
    return f"{component} energy"


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
        """Whether the quantity rests on energy that was estimated (modelled, not measured) in some run."""
        return self._rests_on(quantity, lambda f, c: not f.measured.get(c) and not is_power_samples(_method(f, c)))

    def sampled(self, quantity: Quantity) -> bool:
        """Whether the quantity rests on energy integrated from an old log's sampled power readings in some run."""
        return self._rests_on(quantity, lambda f, c: is_power_samples(_method(f, c)))

    def _rests_on(self, quantity: Quantity, kind: Callable[[RunFigures, str], bool]) -> bool:
        """Whether some run's energy of a component the quantity adds up is of this kind."""
        found = {c for f in self.figures for c in f.energy_joules if kind(f, c)}
        if quantity.components is None:
            return bool(found)
        return bool(found & set(quantity.components))

    @property
    def cpu_models(self) -> frozenset[str]:
        return frozenset(h.cpu_model for f in self.figures for h in f.run.hosts if h.cpu_model)

    @property
    def methods(self) -> frozenset[tuple[str, str]]:
        return frozenset((c, f.run.methods.get(c, "unknown")) for f in self.figures for c in f.energy_joules)

    @property
    def components(self) -> frozenset[str]:
        """The energy components some run of the set has: what its total energy adds up."""
        return frozenset(c for f in self.figures for c in f.energy_joules)

    def component_methods(self, component: str) -> frozenset[tuple[str, bool]]:
        """How the set's runs obtained one component's energy: (method, measured by hardware counters) pairs."""
        return frozenset(
            (f.run.methods.get(component) or "unknown", f.measured.get(component, False))
            for f in self.figures
            if component in f.energy_joules
        )


@dataclass(frozen=True)
class ComparisonReport:
    """The treatment effect of set ``a`` versus set ``b`` for every quantity both have, with warnings.

    ``family`` holds the quantities whose p-values were Holm-adjusted, in order: its length is the number of
    hypotheses the adjustment counted, which a quantity that repeats another's test (``same_test_as``) does
    not add to. ``primary`` is the comparison a reader should look at first: total energy when it is compared,
    else the first quantity with a test. ``only_in`` maps each quantity that has values in one set only to
    "A" or "B": it is not compared, and the appendix must say so rather than leave it out silently.
    """

    a: SetReport
    b: SetReport
    comparisons: Mapping[str, Comparison]
    warnings: tuple[str, ...]
    family: tuple[str, ...] = ()
    primary: str | None = None
    only_in: Mapping[str, str] = field(default_factory=dict)


def set_report(
    name: str,
    runs: Sequence[Run],
    intensity: CarbonIntensity,
    pue: float,
    intensity_series: Callable[[Run], Any] | None = None,
    expected_interval: float | None = None,
) -> SetReport:
    """Figures of each run of a set (in start order) and the set's summaries; failed runs are kept aside.
    Coverage is against ``expected_interval`` (seconds) when given (``run_figures``)."""
    ordered = sorted(runs, key=lambda r: (r.start_time, r.run_id))
    computed = runs_figures(ordered, intensity, pue, intensity_series, expected_interval)
    figures = [result for result in computed if isinstance(result, RunFigures)]
    failed = [
        FailedRun(run, str(error))
        for run, error in zip(ordered, computed, strict=True)
        if isinstance(error, RunDataError)
    ]
    report = SetReport(name, tuple(figures), tuple(failed), {})
    summaries = {q.key: summarize(report.values(q)) for q in QUANTITIES if report.values(q)}
    return SetReport(name, tuple(figures), tuple(failed), summaries)


def comparison_report(a: SetReport, b: SetReport) -> ComparisonReport:
    """Welch comparisons of every shared quantity, Holm-adjusted over the distinct hypotheses, with warnings
    that name what differs between the sets: hardware, the components the totals add up, and per component
    how its energy was obtained.
    """
    shared = [q for q in QUANTITIES if q.key in a.summaries and q.key in b.summaries]
    repeats = repeated_tests(
        {q.key: [q.value(f) for f in a.figures] for q in shared},
        {q.key: [q.value(f) for f in b.figures] for q in shared},
    )
    comparisons = compare_all(
        {q.key: a.values(q) for q in shared}, {q.key: b.values(q) for q in shared}, same_test_as=repeats
    )
    tested = [key for key, comparison in comparisons.items() if comparison.p_value is not None]
    primary = "total_kwh" if "total_kwh" in comparisons else next(iter(tested), None)
    only_in = {
        q.key: "A" if q.key in a.summaries else "B"
        for q in QUANTITIES
        if (q.key in a.summaries) != (q.key in b.summaries)
    }
    warnings = []
    if a.cpu_models != b.cpu_models:
        warnings.append(
            "The sets ran on different hardware ("
            f"{', '.join(sorted(a.cpu_models)) or 'unknown'} versus {', '.join(sorted(b.cpu_models)) or 'unknown'}): "
            "differences in energy may come from the hardware rather than the treatment."
        )
    if any(q.components is None for q in shared):
        warnings.extend(_component_warnings(a, b))
    warnings.extend(_method_warnings(a, b))
    return ComparisonReport(a, b, comparisons, tuple(warnings), holm_family(comparisons), primary, only_in)


def _names(components: Iterable[str]) -> str:
    """Components named in a sentence, in a fixed order: "CPU package energy, DRAM energy and GPU energy"."""
    labels = [component_label(c) for c in sorted(components)]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def _component_warnings(a: SetReport, b: SetReport) -> list[str]:
    """A warning when the sets' totals add up different components: A-B then is not the same energy's change."""
    only_a, only_b = a.components - b.components, b.components - a.components
    if not only_a and not only_b:
        return []
    parts = [f"{_names(only_a)} in A only"] if only_a else []
    parts += [f"{_names(only_b)} in B only"] if only_b else []
    common = _names(a.components & b.components) if a.components & b.components else "none"
    return [
        f"Total energy includes {' and '.join(parts)}: the totals (and the PUE-adjusted energy, emissions and "
        f"average power) add up different components, so their difference is not the treatment effect on the "
        f"same energy. Components both sets have: {common}."
    ]


def _how(methods: frozenset[tuple[str, bool]]) -> str:
    """How a component's energy was obtained, in words: "measured by rapl", "integrated from experiment-impact-tracker
    0.1 power samples", "estimated (estimate)"."""
    phrases = [
        f"measured by {method}"
        if measured
        else f"integrated from {method}"
        if is_power_samples(method)
        else f"estimated ({method})"
        for method, measured in sorted(methods, key=lambda m: (not m[1], m[0]))
    ]
    return " and ".join(phrases)


def _method_warnings(a: SetReport, b: SetReport) -> list[str]:
    """One warning per component both sets have whose energy was obtained differently in A than in B."""
    warnings = []
    for component in sorted(a.components & b.components):
        in_a, in_b = a.component_methods(component), b.component_methods(component)
        if in_a != in_b:
            warnings.append(
                f"{component_label(component)} was {_how(in_a)} in A but {_how(in_b)} in B: "
                "its difference mixes the treatment with the measurement."
            )
    return warnings


FILE_NAME_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")
FILE_NAME_BYTES = 100


def file_names(names: Sequence[str]) -> dict[str, str]:
    """A distinct file name for each set name: the name itself where a file system takes it.

    Path separators, control and shell-hostile characters become ``_``, and a name longer than 100 bytes of
    UTF-8 is cut; names that then coincide ("a/b" and "a_b", or two long ones) each get a short hash of the
    full name, so no set's pages overwrite another's.
    """
    names = list(dict.fromkeys(names))
    tamed = {name: _tame(name) for name in names}
    counts: dict[str, int] = {}
    for safe in tamed.values():
        counts[safe.casefold()] = counts.get(safe.casefold(), 0) + 1
    return {
        name: safe if counts[safe.casefold()] == 1 else f"{safe}~{hashlib.sha256(name.encode()).hexdigest()[:8]}"
        for name, safe in tamed.items()
    }


def _tame(name: str) -> str:
    safe = FILE_NAME_UNSAFE.sub("_", unicodedata.normalize("NFC", name)).strip().lstrip(".")
    encoded = safe.encode()[:FILE_NAME_BYTES]
    return encoded.decode(errors="ignore").rstrip() or "set"


def appendix_document(sets: Sequence[SetReport], comparisons: Sequence[ComparisonReport]) -> dict[str, Any]:
    """Every number the appendix prints, as JSON-able data (written as appendix.json)."""
    names = file_names([report.name for report in sets])
    return {
        "sets": [
            {
                "name": report.name,
                "directory": names[report.name],
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
                "file": f"{names[c.a.name]}_v_{names[c.b.name]}.pdf",
                "quantities": {key: comparison.__dict__ for key, comparison in c.comparisons.items()},
                "family": list(c.family),
                "primary": c.primary,
                "only_in": dict(c.only_in),
                "warnings": list(c.warnings),
            }
            for c in comparisons
        ],
    }
