"""LaTeX rendering of appendices: escaping, number formatting, jinja2 templates, and building PDFs.

Templates live in reporter/templates/ and use LaTeX-friendly delimiters (``\\VAR{...}``, ``\\BLOCK{...}``,
``\\#{...}``) so they stay valid-looking LaTeX. Each document is rendered twice: a standalone ``.tex`` with a
preamble, and a ``.fragment.tex`` body to ``\\input{}`` into a paper.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from reporter.appendix import QUANTITIES, ComparisonReport, FailedRun, SetReport, appendix_document, safe_file_name
from reporter.carbon import WORLD_AVERAGE_NOTE
from reporter.energy import RunFigures
from reporter.stats import significant_figures

TEMPLATES = Path(__file__).parent / "templates"
LATEX_INSTALL_HINT = (
    "install LaTeX to build PDFs: sudo apt-get install texlive-latex-recommended texlive-science "
    "texlive-pictures lmodern latexmk"
)
PLOT_POINTS = 300

LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    '"': r"\textquotedbl{}",
}


class LatexError(Exception):
    """pdflatex failed; the message holds the relevant lines of its log."""


def escape(text: object) -> str:
    """``text`` as LaTeX source that prints it literally (user strings: set names, labels, experiments).

    Characters pdflatex cannot typeset from UTF-8 input (outside Latin-1) become '?', so no name can break
    the build.
    """
    return "".join(
        LATEX_SPECIAL.get(char, char if char.isprintable() and ord(char) < 256 else "?") for char in str(text)
    )


def number(value: float | None, digits: int = 3) -> str:
    """A number for siunitx, rounded to ``digits`` significant figures; ``n/a`` for a missing value."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return rf"\num{{{significant_figures(value, digits):.{digits}g}}}"


def p_value(value: float | None) -> str:
    """A p-value as papers print it: ``< 0.001`` below that, else three significant figures."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if value < 0.001:
        return r"$<$\,\num{0.001}"
    return number(value)


def percent(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return rf"\SI{{{100 * value:.1f}}}{{\percent}}"


def plot_rows(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> str:
    """``x y`` lines for a pgfplots table, thinned to at most PLOT_POINTS points."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) > PLOT_POINTS:
        keep = np.linspace(0, len(x) - 1, PLOT_POINTS).round().astype(int)
        x, y = x[keep], y[keep]
    return "\n".join(f"{a:.6g} {b:.6g}" for a, b in zip(x, y, strict=True) if math.isfinite(a) and math.isfinite(b))


def power_plot_series(power: pd.DataFrame, start: float) -> list[dict[str, str]]:
    """One pgfplots series per component: seconds since the run's start against watts."""
    return [
        {"component": str(component), "rows": plot_rows(rows["timestamp"] - start, rows["watts"])}
        for component, rows in power.groupby("component", sort=True)
    ]


def environment() -> jinja2.Environment:
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
    env.filters |= {"e": escape, "num": number, "p": p_value, "pct": percent}
    env.globals |= {"power_plot_series": power_plot_series, "plot_rows": plot_rows}
    return env


def render(template: str, **context: Any) -> tuple[str, str]:
    """(standalone document, fragment) for a body template."""
    env = environment()
    body = env.get_template(template).render(**context)
    return env.get_template("document.tex").render(body=body), env.get_template("fragment.tex").render(body=body)


def write_document(path: Path, template: str, **context: Any) -> Path:
    """Write ``path`` (a .tex) and its ``.fragment.tex``; return the .tex path."""
    document, fragment = render(template, **context)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document)
    path.with_suffix(".fragment.tex").write_text(fragment)
    return path


def latex_available() -> bool:
    return shutil.which("pdflatex") is not None


def build_pdf(tex: Path) -> Path:
    """Build ``tex`` into the PDF beside it, in a scratch directory so no aux files are left behind."""
    with tempfile.TemporaryDirectory(prefix="impact-latex-") as scratch:
        source = Path(scratch) / "document.tex"
        shutil.copyfile(tex, source)
        if shutil.which("latexmk"):
            command = ["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-quiet", source.name]
        else:
            command = ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", source.name]
        result = subprocess.run(command, cwd=scratch, capture_output=True, text=True, timeout=300)
        pdf = Path(scratch) / "document.pdf"
        if result.returncode != 0 or not pdf.exists():
            raise LatexError(f"pdflatex failed on {tex}:\n{log_errors(Path(scratch) / 'document.log')}")
        target = tex.with_suffix(".pdf")
        shutil.move(pdf, target)
        return target


def build_pdfs(texs: Sequence[Path], workers: int | None = None) -> list[Path]:
    """Build several documents in parallel (pdflatex is single-threaded)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(build_pdf, texs))


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
) -> list[Path]:
    """Write every .tex (and fragment) and appendix.json under ``out``; build PDFs when asked and possible.

    Layout, as the seed wrote it: ``<set>/0.pdf ... N.pdf`` (runs in start order), ``<set>/summary.pdf``, and
    ``<set A>_v_<set B>.pdf`` per comparison. Returns the .tex files written.
    """
    texs: list[Path] = []
    for report in sets:
        directory = out / safe_file_name(report.name)
        entries = sorted(
            [(f.run, f) for f in report.figures] + [(failed.run, failed) for failed in report.failed],
            key=lambda entry: (entry[0].start_time, entry[0].run_id),
        )
        for index, (_, entry) in enumerate(entries):
            title = f"{report.name}: run {index}"
            if isinstance(entry, FailedRun):
                texs.append(write_document(directory / f"{index}.tex", "failed.tex", title=title, failed=entry))
            else:
                texs.append(write_document(directory / f"{index}.tex", "run.tex", **run_context(title, entry)))
        texs.append(
            write_document(
                directory / "summary.tex", "summary.tex", report=report,
                quantities=[q for q in QUANTITIES if q.key in report.summaries],
                totals=[f.total_kwh for f in report.figures],
            )
        )
    for comparison in comparisons:
        name = f"{safe_file_name(comparison.a.name)}_v_{safe_file_name(comparison.b.name)}.tex"
        texs.append(
            write_document(
                out / name, "comparison.tex", c=comparison,
                quantities=[q for q in QUANTITIES if q.key in comparison.comparisons],
            )
        )
    (out / "appendix.json").write_text(json.dumps(appendix_document(sets, comparisons), indent=2) + "\n")
    if build:
        build_pdfs(texs)
    return texs


def run_context(title: str, figures: RunFigures) -> dict[str, Any]:
    run = figures.run

    def method(component: str) -> str:
        name = run.methods.get(component) or "unknown"
        return f"measured ({name})" if figures.measured.get(component) else f"estimated ({name})"

    return {
        "title": title,
        "run": run,
        "f": figures,
        "start": _utc(run.start_time),
        "end": _utc(run.end_time) if run.end_time is not None else "still running when read",
        "method": method,
        "world_average_note": WORLD_AVERAGE_NOTE,
    }


def _utc(timestamp: float) -> str:
    return pd.Timestamp(timestamp, unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M:%S")
