"""LaTeX rendering of appendices: what each table row prints, jinja2 templates, and building PDFs.

Templates live in reporter/templates/ and use LaTeX-friendly delimiters (``\\VAR{...}``, ``\\BLOCK{...}``,
``\\#{...}``). Each page is written three ways: a standalone ``.tex`` built into its PDF with LuaLaTeX (so
names in any script print), a ``.fragment.tex`` that fits one column of a two-column paper, and, for
comparisons, a ``.wide.fragment.tex`` table for ``table*``. The rows are prepared here (units, significant
figures, alignment) so the templates only lay them out.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from impact_reporter.appendix import (
    QUANTITIES,
    ComparisonReport,
    FailedRun,
    Quantity,
    SetReport,
    appendix_document,
    file_names,
)
from impact_reporter.carbon import PRECEDENCE, world_average_note
from impact_reporter.energy import RunFigures
from impact_reporter.forked import forked_map
from impact_reporter.legacy import is_power_samples
from impact_reporter.stats import Comparison, Summary
from impact_reporter.table import json_text
from impact_reporter.typeset import (
    Unit,
    cell,
    decimal,
    escape,
    needs_unicode_engine,
    p_value,
    prose,
    signed,
    table_format,
    unit_for,
)

TEMPLATES = Path(__file__).parent / "templates"
LATEX_PACKAGES = (
    "texlive-luatex texlive-latex-recommended texlive-science texlive-pictures lmodern latexmk fonts-noto-cjk "
    "fonts-symbola"
)
LATEX_INSTALL_HINT = f"install LuaLaTeX and fonts to build PDFs: sudo apt-get install {LATEX_PACKAGES}"
PLOT_POINTS = 300
COMPONENT_NAMES = {"cpu": "CPU package", "dram": "DRAM", "gpu": "GPU", "cpu+dram": "CPU package and DRAM"}
QUANTITY_BY_KEY = {q.key: q for q in QUANTITIES}
WIDE_PAGES = frozenset({"comparison.tex"})
"""Pages with a ``.wide.fragment.tex``: their tables at full width, for ``table*`` across a two-column page."""
MISSING_CHARACTER = re.compile(r"Missing character: There is no (\S+) \(U\+([0-9A-F]+)\)")
OVERFULL = re.compile(r"^Overfull \\hbox \(.*?too wide\).*$", re.MULTILINE)


class LatexError(Exception):
    """LuaLaTeX failed, or a name holds characters no installed font has; the message says which and what to do."""


@dataclass(frozen=True)
class Row:
    """One table row: its label (LaTeX), its cells (decimal strings), and text that replaces cells from a column on."""

    label: str
    cells: tuple[str, ...]
    span: str | None = None  # "only in A", "same test as Total energy", "measured (rapl)"...
    span_from: int = 0  # the first column the span replaces

    def latex(self, first: int, last: int) -> str:
        """The row's label and its columns [first, last) as LaTeX, the span across the columns it replaces."""
        spanned = self.span is not None and self.span_from < last
        own = [cell(text) for text in self.cells[first : self.span_from if spanned else last]]
        if spanned:
            own.append(rf"\multicolumn{{{last - max(first, self.span_from)}}}{{l}}{{{self.span}}}")
        return " & ".join([self.label, *own]) + r" \\"


@dataclass(frozen=True)
class Table:
    """Rows with one siunitx ``table-format`` per numeric column, so every column aligns on its marker."""

    rows: tuple[Row, ...]
    formats: tuple[str, ...]

    @classmethod
    def of(cls, rows: Sequence[Row], columns: int) -> Table:
        formats = tuple(table_format([row.cells[i] for row in rows if i < len(row.cells)]) for i in range(columns))
        return cls(tuple(rows), formats)


def component_name(component: str) -> str:
    return COMPONENT_NAMES.get(component, component)


def quantity_label(quantity: Quantity, unit: Unit, estimated: bool = False, sampled: bool = False) -> str:
    """A quantity's row label with its unit, and whether some run's energy in it was estimated or integrated from an
    old log's sampled power."""
    caveats = (["estimated"] if estimated else []) + (["sampled power"] if sampled else [])
    return f"{escape(quantity.label)} ({unit.label})" + "".join(f", {caveat}" for caveat in caveats)


def summary_table(report: SetReport) -> tuple[Table, list[str]]:
    """The summary's rows (n, mean, SE, CI, total over the runs) and the notes of rows without an interval."""
    rows, notes = [], []
    for quantity in QUANTITIES:
        summary: Summary | None = report.summaries.get(quantity.key)
        if summary is None:
            continue
        unit = unit_for(quantity.unit, [summary.mean, summary.ci_low, summary.ci_high, summary.total])
        total = decimal(summary.total, factor=unit.factor) if quantity.additive else ""
        cells = [str(summary.n)] + [
            decimal(v, factor=unit.factor) for v in (summary.mean, summary.sem, summary.ci_low, summary.ci_high)
        ]
        label = quantity_label(quantity, unit, report.estimated(quantity), report.sampled(quantity))
        rows.append(Row(label, (*cells, total)))
        if summary.note and summary.n:
            notes.append(f"{escape(quantity.label)}: {escape(summary.note)}")
    return Table.of(rows, 6), list(dict.fromkeys(notes))


COMPARISON_HEADERS = (
    "{Mean A}",
    "{Mean B}",
    "{A$-$B}",
    r"{(A$-$B)/B (\%)}",
    "{CI low}",
    "{CI high}",
    "{$g$}",
    "{$t$}",
    "{df}",
    "{$p$}",
    r"{$p_\mathrm{Holm}$}",
)
FIRST_TEST_COLUMN = 7
"""The comparison's columns: means and effect (the interval is the 95% CI of A-B), then from here Welch's test."""


SUMMARY_HEADERS = ("{$n$}", "{Mean}", "{SE}", "{CI low}", "{CI high}", "{All runs}")
"""The summary's columns: the interval is the mean's 95% CI; the last sums the runs."""


def header(names: Sequence[str], first: int, last: int) -> str:
    """A table's header row for its columns [first, last) of ``names``, after the quantity's."""
    return " & ".join(["Quantity", *names[first:last]]) + r" \\"


def comparison_table(c: ComparisonReport) -> tuple[Table, list[str]]:
    """Per quantity: means, A-B, (A-B)/B, its 95% CI, Hedges' g, t, df, p and Holm's p; and notes for n/a rows.

    A quantity that repeats an earlier one's test spans its test columns with "same test as ..."; one that only
    one set has spans them with "only in A/B".
    """
    rows, notes = [], []
    only_in: Mapping[str, str] = c.only_in
    for quantity in QUANTITIES:
        x: Comparison | None = c.comparisons.get(quantity.key)
        if x is None and quantity.key in only_in:
            side = only_in[quantity.key]
            summary = (c.a if side == "A" else c.b).summaries[quantity.key]
            unit = unit_for(quantity.unit, [summary.mean])
            mean = decimal(summary.mean, factor=unit.factor)
            cells = (mean, "") if side == "A" else ("", mean)
            rows.append(Row(quantity_label(quantity, unit), (*cells, *[""] * 9), f"only in {side}", span_from=2))
            continue
        if x is None:
            continue
        unit = unit_for(quantity.unit, [x.mean_a, x.mean_b, x.ci_low, x.ci_high])
        estimated = c.a.estimated(quantity) or c.b.estimated(quantity)
        sampled = c.a.sampled(quantity) or c.b.sampled(quantity)
        cells = (
            decimal(x.mean_a, factor=unit.factor),
            decimal(x.mean_b, factor=unit.factor),
            signed(decimal(x.difference, factor=unit.factor)),
            signed(decimal(x.relative_difference, factor=100.0)) if x.relative_difference is not None else "n/a",
            decimal(x.ci_low, factor=unit.factor),
            decimal(x.ci_high, factor=unit.factor),
            signed(decimal(x.hedges_g)),
            decimal(x.t_statistic),
            decimal(x.df),
            p_value(x.p_value),
            p_value(x.p_holm),
        )
        repeats = x.same_test_as
        span = f"same test as {escape(QUANTITY_BY_KEY[repeats].label)}" if repeats else None
        label = quantity_label(quantity, unit, estimated, sampled)
        rows.append(Row(label, cells, span, span_from=FIRST_TEST_COLUMN))
        if x.note:
            notes.append(f"{escape(quantity.label)}: {escape(x.note)}")
    return Table.of(rows, 11), notes


def run_energy_table(figures: RunFigures) -> tuple[Unit, Table]:
    """The run's energy per component and in total, all in one unit chosen for them; the total says what measured
    the run (the exporter, or a standalone monitor)."""
    by_component = {component: joules / 3.6e6 for component, joules in figures.energy_joules.items()}
    unit = unit_for("kWh", [*by_component.values(), figures.total_kwh_pue])
    rows = [
        Row(escape(component_name(c)), (decimal(kwh, factor=unit.factor),), method_text(figures, c), span_from=1)
        for c, kwh in sorted(by_component.items())
    ]
    rows += [
        Row("Total", (decimal(figures.total_kwh, factor=unit.factor),), f"by {escape(figures.run.measured_by)}", 1),
        Row(rf"Total with PUE {decimal(figures.pue)}", (decimal(figures.total_kwh_pue, factor=unit.factor),), "", 1),
    ]
    return unit, Table.of(rows, 1)


def run_figures_table(figures: RunFigures) -> Table:
    """Carbon, time and power of one run, each in the unit that reads best."""
    rows = []
    for label, base, value in (
        ("Carbon intensity", "gCO2eq/kWh", figures.intensity_g_per_kwh),
        ("Emissions", "kg CO2eq", figures.kg_co2eq),
        ("CPU time", "CPU-h", figures.cpu_hours),
        ("GPU time", "GPU-h", figures.gpu_hours),
        ("Average power", "W", figures.average_power_watts),
        ("Peak power", "W", figures.peak_power_watts),
    ):
        if value is None and label == "GPU time":
            continue
        unit = unit_for(base, [value])
        rows.append(Row(f"{label} ({unit.label})", (decimal(value, factor=unit.factor),)))
    return Table.of(rows, 1)


def method_text(figures: RunFigures, component: str) -> str:
    """How a component's energy was obtained: "measured (rapl)", "integrated from sampled power (...)" for an old
    log's, or "estimated" with the method if it says more."""
    name = figures.run.methods.get(component) or "unknown"
    if figures.measured.get(component):
        return f"measured ({escape(name)})"
    if is_power_samples(name):
        return f"integrated from sampled power ({escape(name)})"
    return "estimated" if name == "estimate" else f"estimated ({escape(name)})"


@dataclass(frozen=True)
class PowerPlot:
    """A run's power over time, per component, in the time unit that suits its length."""

    unit: Unit
    xmax: float
    series: tuple[tuple[str, str], ...]  # (component name, "x y" rows)


def power_plot(figures: RunFigures) -> PowerPlot | None:
    """The plot of a run's power from its start to its end; None for a run no longer than one sample interval.

    (None too when fewer than two samples lie inside the run: then there is no curve to draw either.)
    """
    unit = unit_for("s", [figures.duration_seconds])
    interval = figures.sample_interval_seconds
    if figures.duration_seconds <= interval or figures.power.empty:
        return None
    start = figures.run.start_time
    ends = (figures.power.grid[1:] - start) * unit.factor
    series = tuple(
        (escape(component_name(str(component))), plot_rows(ends, watts))
        for component, watts in sorted(figures.power.watts.items())
    )
    series = tuple(s for s in series if s[1])
    if not series:
        return None
    return PowerPlot(unit, figures.duration_seconds * unit.factor, series)


def plot_rows(x: Sequence[float] | np.ndarray | pd.Series, y: Sequence[float] | np.ndarray | pd.Series) -> str:
    """``x y`` lines for a pgfplots table, thinned to at most PLOT_POINTS points."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) > PLOT_POINTS:
        keep = np.linspace(0, len(x) - 1, PLOT_POINTS).round().astype(int)
        x, y = x[keep], y[keep]
    finite = np.isfinite(x) & np.isfinite(y)
    return "\n".join(f"{a:.6g} {b:.6g}" for a, b in zip(x[finite].tolist(), y[finite].tolist(), strict=True))


@cache
def environment() -> jinja2.Environment:
    """The templates' Jinja environment, made once: it keeps each template compiled, and an appendix of 10,000
    runs writes 10,000 pages from the same one."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        block_start_string=r"\BLOCK{",
        block_end_string="}",
        variable_start_string=r"\VAR{",
        variable_end_string="}",
        comment_start_string=r"\#{",
        comment_end_string="}",
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters |= {"e": escape, "prose": prose}
    return env


def write_page(path: Path, template: str, **context: Any) -> Path:
    """Write ``path`` (a standalone .tex), its ``.fragment.tex`` and, where the page has one, ``.wide.fragment.tex``.

    The fragment's header names the preamble it needs, and says when its names need LuaLaTeX.
    """
    env = environment()
    page = env.get_template(template)
    standalone = page.render(layout="standalone", **context)
    fragment = page.render(layout="column", **context)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(env.get_template("document.tex").render(body=standalone))
    fragment_template = env.get_template("fragment.tex")
    path.with_suffix(".fragment.tex").write_text(
        fragment_template.render(body=fragment, unicode=needs_unicode_engine(fragment))
    )
    if template in WIDE_PAGES:
        wide = page.render(layout="table", **context)
        path.with_suffix(".wide.fragment.tex").write_text(
            fragment_template.render(body=wide, unicode=needs_unicode_engine(wide))
        )
    return path


@dataclass(frozen=True)
class Page:
    """A page to write: its path, its template and what makes its context (made where the page is written)."""

    path: Path
    template: str
    context: Callable[[], Mapping[str, Any]]

    def write(self) -> Path:
        return write_page(self.path, self.template, **self.context())


def write_pages(pages: Sequence[Page]) -> list[Path]:
    """Write every page (in forked processes when there are many: impact_reporter.forked); the paths, in order."""
    return forked_map(Page.write, pages)


def latex_available() -> bool:
    return shutil.which("lualatex") is not None


@dataclass(frozen=True)
class Built:
    """A PDF built from its .tex, with the lines LaTeX found too wide for their column (none, if all is well)."""

    pdf: Path
    overfull: tuple[str, ...]


def build_pdf(tex: Path) -> Built:
    """Build ``tex`` into the PDF beside it with LuaLaTeX, in a scratch directory so no aux files are left behind.

    A character that no installed font has would print as nothing; that is an error naming it.
    """
    with tempfile.TemporaryDirectory(prefix="impact-latex-") as scratch:
        source = Path(scratch) / "document.tex"
        shutil.copyfile(tex, source)
        if shutil.which("latexmk"):
            command = ["latexmk", "-lualatex", "-interaction=nonstopmode", "-halt-on-error", "-quiet", source.name]
        else:
            command = ["lualatex", "-interaction=nonstopmode", "-halt-on-error", source.name]
        result = subprocess.run(command, cwd=scratch, capture_output=True, text=True, timeout=300)
        pdf = Path(scratch) / "document.pdf"
        log = Path(scratch) / "document.log"
        if result.returncode != 0 or not pdf.exists():
            raise LatexError(f"lualatex failed on {tex}:\n{log_errors(log)}")
        text = log.read_text(errors="replace")
        if missing := missing_characters(text):
            raise LatexError(
                f"{tex}: no installed font has {', '.join(missing)}: install fonts that cover them "
                "(sudo apt-get install fonts-noto-cjk fonts-symbola covers most scripts), or rename the set or label"
            )
        target = tex.with_suffix(".pdf")
        shutil.move(pdf, target)
        return Built(target, tuple(OVERFULL.findall(text)))


def missing_characters(log: str) -> list[str]:
    """The characters a LuaLaTeX log says no font had, as ``'X' (U+XXXX, NAME)``."""
    codes = dict.fromkeys(code for _, code in MISSING_CHARACTER.findall(log))
    return [f"'{chr(int(code, 16))}' (U+{code}, {unicodedata.name(chr(int(code, 16)), 'unnamed')})" for code in codes]


def build_pdfs(texs: Sequence[Path], workers: int | None = None) -> list[Built]:
    """Build several documents, in parallel after the first (LuaLaTeX is single-threaded).

    The first build alone lets LuaLaTeX make its font name database, on a first use, before others read it.
    """
    if not texs:
        return []
    first = build_pdf(texs[0])
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [first, *pool.map(build_pdf, texs[1:])]


def log_errors(log: Path, context_lines: int = 3) -> str:
    """The error lines of a LaTeX log (``! ...`` and what follows, up to the ``l.N`` line)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log was written)"
    picked: list[str] = []
    for index, line in enumerate(lines):
        if line.startswith("!"):
            picked += lines[index : index + 1 + context_lines]
    return "\n".join(picked) or "\n".join(lines[-20:])


def write_appendix(
    out: Path, sets: Sequence[SetReport], comparisons: Sequence[ComparisonReport], build: bool = True
) -> list[Built]:
    """Write every .tex (and fragments) and appendix.json under ``out``; build PDFs when asked and possible.

    Layout, as the seed wrote it: ``<set>/0.pdf ... N.pdf`` (runs in start order), ``<set>/summary.pdf``, and
    ``<set A>_v_<set B>.pdf`` per comparison. Returns the PDFs built (none unless ``build``).
    """
    names = file_names([report.name for report in sets])
    pages: list[Page] = []
    for report in sets:
        directory = out / names[report.name]
        entries = sorted(
            [(f.run, f) for f in report.figures] + [(failed.run, failed) for failed in report.failed],
            key=lambda entry: (entry[0].start_time, entry[0].run_id),
        )
        for index, (_, entry) in enumerate(entries):
            title = f"{report.name}: run {index}"
            if isinstance(entry, FailedRun):
                pages.append(Page(directory / f"{index}.tex", "failed.tex", partial(dict, title=title, failed=entry)))
            else:
                pages.append(Page(directory / f"{index}.tex", "run.tex", partial(run_context, title, entry)))
        pages.append(Page(directory / "summary.tex", "summary.tex", partial(summary_context, report)))
    for comparison in comparisons:
        name = f"{names[comparison.a.name]}_v_{names[comparison.b.name]}.tex"
        pages.append(Page(out / name, "comparison.tex", partial(comparison_context, comparison)))
    texs = write_pages(pages)
    document = appendix_document(sets, comparisons)
    (out / "appendix.json").write_text(json_text(document))
    return build_pdfs(texs) if build else []


def run_context(title: str, figures: RunFigures) -> dict[str, Any]:
    run = figures.run
    energy_unit, energy = run_energy_table(figures)
    return {
        "title": title,
        "run": run,
        "f": figures,
        "start": _utc(run.start_time),
        "end": _utc(run.end_time) if run.end_time is not None else "still running when read",
        "duration": decimal(figures.duration_seconds, factor=unit_for("s", [figures.duration_seconds]).factor),
        "duration_unit": unit_for("s", [figures.duration_seconds]).label,
        "energy_unit": energy_unit,
        "energy": energy,
        "figures": run_figures_table(figures),
        "estimated": [
            component_name(c)
            for c, measured in sorted(figures.measured.items())
            if not measured and not is_power_samples(run.methods.get(c, ""))
        ],
        "sampled": [
            component_name(c) for c in sorted(figures.energy_joules) if is_power_samples(run.methods.get(c, ""))
        ],
        "plot": power_plot(figures),
        "short": figures.duration_seconds <= figures.sample_interval_seconds,
        "interval": decimal(figures.sample_interval_seconds),
        "expected": optional_decimal(figures.expected_interval_seconds),
        "coverage": decimal(figures.coverage.fraction, factor=100.0),
        "largest_gap": decimal(figures.coverage.largest_gap_seconds),
        "world_average_note": world_average_note(),
    }


def carbon_basis(figures: Sequence[RunFigures]) -> list[str]:
    """The distinct carbon intensities behind ``figures``, each as the sentence that says what it is (value, CO2e
    or CO2 only, basis, year, source), so a page states the basis of every carbon figure it prints."""
    return list(dict.fromkeys(f.intensity.describe() for f in figures))


def optional_decimal(value: float | None) -> str | None:
    return None if value is None else decimal(value)


def spread(values: Sequence[float], unit: str, factor: float = 1.0) -> str | None:
    r"""The range of ``values`` in siunitx (``unit`` a siunitx unit macro's name): one quantity when the lowest and
    the highest print alike, else ``\SIrange``; None when there are none."""
    if not values:
        return None
    low, high = decimal(min(values), factor=factor), decimal(max(values), factor=factor)
    return rf"\SI{{{low}}}{{\{unit}}}" if low == high else rf"\SIrange{{{low}}}{{{high}}}{{\{unit}}}"


def summary_context(report: SetReport) -> dict[str, Any]:
    table, notes = summary_table(report)
    totals = [f.total_kwh for f in report.figures]
    unit = unit_for("kWh", totals)
    expected = {f.expected_interval_seconds for f in report.figures} - {None}
    return {
        "report": report,
        "table": table,
        "header": partial(header, SUMMARY_HEADERS),
        "notes": notes,
        "spacing": spread([f.sample_interval_seconds for f in report.figures], "second"),
        "coverage": spread([f.coverage.fraction for f in report.figures], "percent", factor=100.0),
        "expected": optional_decimal(expected.pop()) if len(expected) == 1 else None,
        "bars_unit": unit,
        "bars": plot_rows(range(len(totals)), [t * unit.factor for t in totals]),
        "carbon_basis": carbon_basis(report.figures),
        "precedence": PRECEDENCE,
    }


def comparison_context(c: ComparisonReport) -> dict[str, Any]:
    table, notes = comparison_table(c)
    context: dict[str, Any] = {
        "c": c,
        "table": table,
        "header": partial(header, COMPARISON_HEADERS),
        "notes": notes,
        "family": [QUANTITY_BY_KEY[key].label for key in c.family],
        "primary": QUANTITY_BY_KEY[c.primary].label if c.primary else None,
        "bars": None,
        "carbon_basis": carbon_basis([*c.a.figures, *c.b.figures]),
    }
    if "total_kwh" in c.a.summaries and "total_kwh" in c.b.summaries:
        a, b = c.a.summaries["total_kwh"], c.b.summaries["total_kwh"]
        unit = unit_for("kWh", [a.mean, b.mean])
        context["bars"] = {
            "unit": unit,
            "a": (decimal(a.mean, 6, unit.factor), decimal(a.sem or 0.0, 6, unit.factor)),
            "b": (decimal(b.mean, 6, unit.factor), decimal(b.sem or 0.0, 6, unit.factor)),
        }
    return context


def _utc(timestamp: float) -> str:
    return pd.Timestamp(timestamp, unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M:%S")
