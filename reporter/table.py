"""``impact-report runs`` output: a terminal table a person reads, a CSV a script reads, and JSON with every figure.

The table is for reading: it fits ``TABLE_WIDTH`` terminal columns for typical runs (long run ids shortened to
a unique prefix, as git shortens hashes; long experiment, set and label text cut with an ellipsis), text on
the left, numbers on the right with three significant figures in a unit chosen per value, and nothing printed
for a missing value. Widths are display widths (``wcwidth``), so CJK and other wide characters line up.

The CSV is for computing: floats as Python writes them (they read back exactly), one column per label, and
the same fixed columns on every machine, so files from a CPU-only box and a GPU box concatenate.

A run listed as a ``FailedRun`` (its figures could not be computed) keeps its row everywhere, with the reason.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pandas as pd
import wcwidth

from impact_reporter.appendix import FailedRun
from impact_reporter.carbon import CarbonIntensity
from impact_reporter.energy import RunFigures
from impact_reporter.typeset import decimal

Listed = RunFigures | FailedRun
"""One run of a listing: its figures, or why it has none."""

TABLE_WIDTH = 100
GAP = "  "
ELLIPSIS = "…"
SHORT_ID = 8  # characters of a shortened run id, as git's short hashes
WHOLE_ID = 16  # run ids up to this long (names a person chose, "job-42") are never shortened
COMPONENTS = ("cpu", "dram", "gpu")  # always in the CSV and the wide table, so every machine gives the same columns
NOT_MEASURED = "not measured"

ENERGY_UNITS = (("mJ", 1e-3), ("J", 1.0), ("Wh", 3600.0), ("kWh", 3.6e6), ("MWh", 3.6e9))  # from joules
CARBON_UNITS = (("µg", 1e-9), ("mg", 1e-6), ("g", 1e-3), ("kg", 1.0), ("t", 1e3))  # from kilograms
DURATION_UNITS = (("s", 1.0), ("min", 60.0), ("h", 3600.0))  # from seconds


def display_width(text: str) -> int:
    """The columns ``text`` takes on a terminal: 2 per wide (CJK) character, 0 per combining mark."""
    return wcwidth.width(text)


def printable(text: str) -> str:
    """``text`` with control characters (a label's newline, a terminal escape) shown as U+FFFD, not obeyed."""
    return "".join("\ufffd" if unicodedata.category(c) == "Cc" else c for c in text)


def truncated(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` display columns, its last visible column an ellipsis when cut."""
    if display_width(text) <= width:
        return text
    return wcwidth.clip(text, 0, width - 1, fillchar="").rstrip() + ELLIPSIS


def with_unit(value: float | None, units: Sequence[tuple[str, float]]) -> str:
    """``value`` in the largest of ``units`` (name, size) it is at least one of, to three figures; "" for None."""
    if value is None or not math.isfinite(value):
        return ""
    name, size = units[0]
    for candidate, candidate_size in units[1:]:
        if abs(value) >= candidate_size:
            name, size = candidate, candidate_size
    return f"{decimal(value / size)} {name}"


def energy_text(joules: float | None) -> str:
    return with_unit(joules, ENERGY_UNITS)


def carbon_text(kg: float | None) -> str:
    return with_unit(kg, CARBON_UNITS)


def duration_text(seconds: float | None) -> str:
    return with_unit(seconds, DURATION_UNITS)


def coverage_text(fraction: float | None) -> str:
    return "" if fraction is None or not math.isfinite(fraction) else f"{decimal(100 * fraction)}%"


def start_text(unix_seconds: float, wide: bool = False) -> str:
    """A run's start in UTC, to the minute (to the second in the wide table)."""
    return pd.Timestamp(unix_seconds, unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M:%S" if wide else "%Y-%m-%d %H:%M")


def labels_text(labels: Mapping[str, str]) -> str:
    return " ".join(f"{name}={value}" for name, value in sorted(labels.items()))


def short_ids(run_ids: Sequence[str]) -> list[str]:
    """Run ids as the table shows them: whole up to ``WHOLE_ID`` characters, longer ones (uuids) by their first
    ``SHORT_ID`` characters, or by more when that is what it takes to tell the rows apart."""
    longest = max((len(run_id) for run_id in run_ids), default=0)
    for length in range(SHORT_ID, longest + 1):
        shown = [run_id if len(run_id) <= WHOLE_ID else run_id[:length] for run_id in run_ids]
        if len(set(shown)) == len(set(run_ids)):
            return shown
    return list(run_ids)


@dataclass(frozen=True)
class Column:
    """One table column: its header, its cells in row order, how they align, and how narrow it may be cut.

    ``shortest`` is None for a column that is never cut (ids, times, numbers); text columns are cut, down to
    ``shortest`` display columns, only when the table would be wider than the terminal.
    """

    header: str
    cells: tuple[str, ...]
    right: bool = False
    shortest: int | None = None

    @property
    def natural_width(self) -> int:
        return max(display_width(text) for text in (self.header, *self.cells))


def fitted_widths(columns: Sequence[Column], limit: int) -> list[int]:
    """Each column's width: its natural width, the widest cuttable column narrowed one step at a time until the
    table (with its gaps) fits ``limit``, or every cuttable column is at its shortest."""
    widths = [column.natural_width for column in columns]
    budget = limit - len(GAP) * (len(columns) - 1)
    while sum(widths) > budget:
        cuttable = [i for i, c in enumerate(columns) if c.shortest is not None and widths[i] > c.shortest]
        if not cuttable:
            break
        widest = max(cuttable, key=lambda i: widths[i])
        widths[widest] -= 1
    return widths


def rendered(columns: Sequence[Column], widths: Sequence[int]) -> list[str]:
    """The header line and one line per row, each cell cut to its width and padded by display width."""

    def line(cells: Sequence[str]) -> str:
        parts = []
        for column, width, text in zip(columns, widths, cells, strict=True):
            text = truncated(text, width)
            parts.append(wcwidth.rjust(text, width) if column.right else wcwidth.ljust(text, width))
        return GAP.join(parts).rstrip()

    rows = zip(*(column.cells for column in columns), strict=True)
    return [line([column.header for column in columns]), *(line(cells) for cells in rows)]


def figure(item: Listed, value: Callable[[RunFigures], float | None]) -> float | None:
    """A figure of a listed run; None for a run that has no figures."""
    return value(item) if isinstance(item, RunFigures) else None


def table_columns(listed: Sequence[Listed], wide: bool) -> list[Column]:
    """The columns of the table: the run's identity, when, how long, energy, carbon and coverage; with ``wide``
    also energy per component, the samples' spacing, how each component was obtained, what measured the run, and
    why a run was not measured. (The narrow table gives the spacing in a note: with long names its columns already
    take 100.)"""
    runs = [item.run for item in listed]
    ids = [run.run_id for run in runs] if wide else short_ids([run.run_id for run in runs])
    columns = [
        Column("run", tuple(printable(i) for i in ids)),
        text_column("experiment", [r.experiment for r in runs], wide),
        text_column("set", [r.set for r in runs], wide),
        text_column("labels", [labels_text(r.labels) for r in runs], wide),
        Column("start (UTC)", tuple(start_text(r.start_time, wide) for r in runs)),
        Column("duration", tuple(duration_text(figure(i, lambda f: f.duration_seconds)) for i in listed), True),
    ]
    if wide:
        columns += [
            Column(c, tuple(energy_text(figure(i, lambda f, c=c: f.energy_joules.get(c))) for i in listed), True)
            for c in components(listed)
        ]
    columns += [
        Column(
            "energy",
            tuple(energy_text(item.total_joules) if isinstance(item, RunFigures) else NOT_MEASURED for item in listed),
            True,
        ),
        Column("CO2eq", tuple(carbon_text(figure(i, lambda f: f.kg_co2eq)) for i in listed), True),
        Column("coverage", tuple(coverage_text(figure(i, lambda f: f.coverage.fraction)) for i in listed), True),
    ]
    if wide:
        columns.append(
            Column(
                "spacing", tuple(duration_text(figure(i, lambda f: f.sample_interval_seconds)) for i in listed), True
            )
        )
        columns += [
            Column(f"{c} method", tuple(printable(item.run.methods.get(c, "")) for item in listed))
            for c in components(listed)
        ]
        columns.append(Column("measured by", tuple(printable(item.run.measured_by) for item in listed)))
        if any(isinstance(item, FailedRun) for item in listed):
            columns.append(
                Column(
                    "why not measured",
                    tuple(printable(item.reason) if isinstance(item, FailedRun) else "" for item in listed),
                )
            )
    return columns


def text_column(header: str, texts: Sequence[str], wide: bool) -> Column:
    """A column of free text, cut when the table is too wide (never below its header, nor 6 columns)."""
    return Column(header, tuple(printable(t) for t in texts), shortest=None if wide else max(6, len(header)))


def components(listed: Sequence[Listed]) -> list[str]:
    """``COMPONENTS``, then any other component a listed run has energy or a method for, in name order."""
    found = {c for item in listed for c in item.run.methods} | {
        c for item in listed if isinstance(item, RunFigures) for c in item.energy_joules
    }
    return [*COMPONENTS, *sorted(found - set(COMPONENTS))]


def carbon_basis(listed: Sequence[Listed], intensity: CarbonIntensity, pue: float) -> list[str]:
    """The lines under the table that say how its CO2eq was computed: the formula with this report's numbers, then
    each distinct intensity its runs used, saying what it is (CO2e or CO2 only, basis, year, source)."""
    measured = [item for item in listed if isinstance(item, RunFigures)]
    g_per_kwh = {f.intensity_g_per_kwh for f in measured}
    shown = f"{decimal(g_per_kwh.pop())} gCO2eq/kWh" if len(g_per_kwh) == 1 else "each run's gCO2eq/kWh"
    used = list(dict.fromkeys(f.intensity.describe() for f in measured)) or [intensity.describe()]
    return [f"kgCO2eq = kWh x PUE {pue:g} x {shown} / 1000", *(f"intensity: {basis}" for basis in used)]


def spacing_note(listed: Sequence[Listed], wide: bool) -> str:
    """The line under the table that gives the samples' spacing (so data federated or downsampled to 15 s is not
    read as finely measured) and what coverage was judged against; "" when no run has figures."""
    spacings = [f.sample_interval_seconds for f in listed if isinstance(f, RunFigures)]
    if not spacings:
        return ""
    low, high = duration_text(min(spacings, default=None)), duration_text(max(spacings, default=None))
    shown = (
        "spacing: the median spacing of a run's samples (peak power is over intervals of it)"
        if wide
        else f"samples every {low if low == high else f'{low} to {high}'} (median spacing; peak power is over "
        "intervals of it)"
    )
    expected = {f.expected_interval_seconds for f in listed if isinstance(f, RunFigures)} - {None}
    against = (
        f"the expected scrape interval of {duration_text(expected.pop())} (--expected-interval)"
        if len(expected) == 1
        else "each node's own spacing"
    )
    return f"{shown}; coverage against {against}"


def runs_table(
    listed: Sequence[Listed], intensity: CarbonIntensity, pue: float, wide: bool = False, width: int = TABLE_WIDTH
) -> str:
    """The runs as a terminal table, then the CO2eq formula and a line per run that was not measured.

    Without ``wide`` the table fits ``width`` columns when it can, and notes are wrapped to it; with ``wide``
    nothing is cut or shortened.
    """
    columns = table_columns(listed, wide)
    widths = [c.natural_width for c in columns] if wide else fitted_widths(columns, width)
    lines = rendered(columns, widths)
    notes = carbon_basis(listed, intensity, pue)
    if note := spacing_note(listed, wide):
        notes.append(note)
    if not wide:
        ids = dict(zip((item.run.run_id for item in listed), columns[0].cells, strict=True))
        notes += [
            f"{ids[item.run.run_id]}: {NOT_MEASURED}: {item.reason}" for item in listed if isinstance(item, FailedRun)
        ]
        notes = [part for note in notes for part in wcwidth.wrap(printable(note), width, subsequent_indent="    ")]
    return "\n".join([*lines, "", *notes]) + "\n"


def csv_frame(listed: Sequence[Listed]) -> pd.DataFrame:
    """One row per run with every figure at full precision: the same fixed columns on every machine (energy
    and method of cpu, dram and gpu, empty where a run has none, and what measured the run), then one
    ``label.<name>`` column per label
    any run has. A run that was not measured has empty figures and its reason under ``not_measured``."""
    names = components(listed)
    label_names = sorted({name for item in listed for name in item.run.labels})
    rows = []
    for item in listed:
        run, figures = item.run, item if isinstance(item, RunFigures) else None
        row: dict[str, Any] = {
            "run_id": run.run_id,
            "experiment": run.experiment,
            "set": run.set,
            "start": pd.Timestamp(run.start_time, unit="s", tz="UTC").isoformat(),
            "duration_s": figures.duration_seconds if figures else None,
        }
        row |= {f"{c}_J": figures.energy_joules.get(c) if figures else None for c in names}
        row |= {
            "total_J": figures.total_joules if figures else None,
            "kWh": figures.total_kwh if figures else None,
            "kgCO2eq": figures.kg_co2eq if figures else None,
            "coverage": figures.coverage.fraction if figures else None,
            "sample_interval_s": figures.sample_interval_seconds if figures else None,
            "expected_interval_s": figures.expected_interval_seconds if figures else None,
        }
        row |= {f"{c}_method": run.methods.get(c) for c in names}
        row["measured_by"] = run.measured_by
        row["not_measured"] = item.reason if isinstance(item, FailedRun) else None
        row |= {f"label.{name}": run.labels.get(name) for name in label_names}
        rows.append(row)
    return pd.DataFrame(rows, columns=csv_columns(names, label_names), dtype=object)


def csv_columns(component_names: Sequence[str], label_names: Sequence[str]) -> list[str]:
    """The CSV header: fixed columns (per component for ``component_names``), then the labels'."""
    return [
        "run_id",
        "experiment",
        "set",
        "start",
        "duration_s",
        *(f"{c}_J" for c in component_names),
        "total_J",
        "kWh",
        "kgCO2eq",
        "coverage",
        "sample_interval_s",
        "expected_interval_s",
        *(f"{c}_method" for c in component_names),
        "measured_by",
        "not_measured",
        *(f"label.{name}" for name in label_names),
    ]


def run_json(item: Listed) -> dict[str, Any]:
    """A run as ``--format json`` lists it: every figure (``RunFigures.as_json``), or its metadata and
    ``not_measured`` with the reason. Non-finite floats become null: JSON has no NaN."""
    document = item.as_json() if isinstance(item, RunFigures) else {**item.run.metadata(), "not_measured": item.reason}
    return finite(document)


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float (in nested dicts and lists) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def json_text(document: Any) -> str:
    """``document`` as indented JSON text with a final newline, written by orjson: the standard library's
    indenting encoder is pure Python, seconds for a listing of 10,000 runs. orjson writes a number that is not
    finite as null, never as the NaN that JSON parsers reject."""
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode() + "\n"
