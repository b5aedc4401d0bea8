"""Text and numbers as LaTeX that prints them literally and readably, in any script, at a column's width.

A reviewer reads every figure of an appendix, so numbers carry three significant figures in a unit chosen for
the values at hand (35 J rather than 9.82e-6 kWh), columns align on the decimal marker (siunitx ``S`` columns
whose ``table-format`` is computed here), and user strings print exactly as typed: ``--no-amp`` keeps its two
hyphens, LaTeX specials are escaped, and long unbroken names may wrap instead of running into the margin.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from impact_reporter.stats import significant_figures

DIGITS = 3
"""Significant figures of every number printed: runs are rarely repeatable to better than a percent."""

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
    "'": r"\textquotesingle{}",
    "`": r"\textasciigrave{}",
}
LIGATURE_BREAK = r"\kern0pt "
"""Put between characters TeX would join: ``--`` would print as an en dash, ``''`` as a closing quote."""
LIGATURE_STARTS = frozenset("-!?,")
BREAK_EVERY = 12
"""In a word longer than this, a line may break after every so many characters (run ids, long set names)."""
FLAG = re.compile(r"(?<![\w-])(--[A-Za-z][\w.-]*)")


PLAIN = re.compile(r"[A-Za-z0-9.:/()+=]*")
"""A word TeX prints as it is: no special character, no ligature to break (most of the numbers and words that
an appendix of 10,000 runs escapes)."""


def escape(text: object) -> str:
    """``text`` as LaTeX source that prints it literally, with break points inside very long words.

    Every character is kept (the documents are built with LuaLaTeX and fonts that cover any script); only
    control characters, which no font can show, become U+FFFD.
    """
    return " ".join(_escape_word(word) for word in str(text).split(" "))


def _escape_word(word: str) -> str:
    if len(word) <= BREAK_EVERY and PLAIN.fullmatch(word):
        return word
    out = []
    for index, char in enumerate(word):
        if index and index % BREAK_EVERY == 0 and len(word) > BREAK_EVERY:
            out.append(r"\allowbreak{}")
        if not char.isprintable():
            char = "\ufffd"
        out.append(LATEX_SPECIAL.get(char, char))
        if char in LIGATURE_STARTS and word[index + 1 : index + 2] in {"-", "`", "'"}:
            out.append(LIGATURE_BREAK)
    return "".join(out)


def literal(text: object) -> str:
    """``text`` as LaTeX that prints it literally, without the break points of ``escape``: for running text that
    someone pastes into a paper."""
    return "".join(LATEX_SPECIAL.get(char, char) if char.isprintable() else "\ufffd" for char in str(text))


def prose(text: str) -> str:
    """Our own sentences (notes, warnings) escaped, with command-line flags set in typewriter type."""
    parts = FLAG.split(text)
    return "".join(rf"\texttt{{{escape(part)}}}" if FLAG.fullmatch(part) else escape(part) for part in parts)


PDFLATEX_EXTRAS = frozenset("–—‘’‚“”„…•†‡‰€")
"""Characters beyond Latin-1 and Latin Extended-A that pdfLaTeX prints from UTF-8 input with T1 fonts."""


BEYOND_PDFLATEX = re.compile("[^\x00-\u017f" + re.escape("".join(sorted(PDFLATEX_EXTRAS))) + "]")
"""A character past Latin Extended-A that is not among PDFLATEX_EXTRAS."""


def needs_unicode_engine(text: str) -> bool:
    """Whether pdfLaTeX with T1 fonts cannot print ``text``: it has Greek, Cyrillic, CJK, emoji or the like."""
    return not text.isascii() and BEYOND_PDFLATEX.search(text) is not None


@dataclass(frozen=True)
class Unit:
    """A unit to print a quantity in: its LaTeX label and the factor from the quantity's base unit."""

    label: str
    factor: float


SCALES: dict[str, tuple[tuple[float, Unit], ...]] = {
    # base unit: (largest magnitude in the base unit for which this unit reads best, the unit), smallest first
    "kWh": ((3600 / 3.6e6, Unit("J", 3.6e6)), (1.0, Unit("Wh", 1e3)), (math.inf, Unit("kWh", 1.0))),
    "kg CO2eq": ((1.0, Unit("g CO$_2$eq", 1e3)), (math.inf, Unit("kg CO$_2$eq", 1.0))),
    "h": ((100 / 3600, Unit("s", 3600.0)), (100 / 60, Unit("min", 60.0)), (math.inf, Unit("h", 1.0))),
    "CPU-h": ((100 / 3600, Unit("CPU-s", 3600.0)), (100 / 60, Unit("CPU-min", 60.0)), (math.inf, Unit("CPU-h", 1.0))),
    "GPU-h": ((100 / 3600, Unit("GPU-s", 3600.0)), (100 / 60, Unit("GPU-min", 60.0)), (math.inf, Unit("GPU-h", 1.0))),
    "W": ((1e4, Unit("W", 1.0)), (math.inf, Unit("kW", 1e-3))),
    "s": ((100, Unit("s", 1.0)), (6000, Unit("min", 1 / 60)), (math.inf, Unit("h", 1 / 3600))),
}


def unit_for(base: str, values: Iterable[float | None]) -> Unit:
    """The unit in which ``values`` (in ``base``) read best: the smallest whose largest value stays below its bound.

    A base without scales (gCO2eq/kWh, say) is printed as it is.
    """
    scales = SCALES.get(base)
    if scales is None:
        return Unit(unit_label(base), 1.0)
    largest = max((abs(v) for v in values if v is not None and math.isfinite(v)), default=0.0)
    return next(unit for bound, unit in scales if largest < bound)


def unit_label(unit: str) -> str:
    """A unit as LaTeX, CO$_2$ written one way everywhere."""
    return escape(unit).replace("CO2", "CO$_2$")


def decimal(value: float | None, digits: int = DIGITS, factor: float = 1.0) -> str:
    """``value * factor`` to ``digits`` significant figures, written out without an exponent; ``n/a`` if missing.

    Written out, the figures of one column align on the decimal marker and need no ``x 10^n`` to be read.
    """
    if value is None or not math.isfinite(value):
        return "n/a"
    scaled = significant_figures(value * factor, digits)
    if scaled == 0:
        return "0"
    places = max(0, digits - 1 - math.floor(math.log10(abs(scaled))))
    return f"{scaled:.{places}f}"


def signed(text: str) -> str:
    """A difference with its sign shown: ``+1.2`` as well as ``-1.2``."""
    return text if text.startswith("-") or not _is_number(text) or float(text) == 0 else f"+{text}"


def _is_number(text: str) -> bool:
    return bool(re.fullmatch(r"[+-]?\d+(\.\d+)?", text))


def cell(text: str) -> str:
    """A table cell for an ``S`` column: numbers as they are, anything else braced so siunitx leaves it alone."""
    return text if _is_number(text) else f"{{{text}}}"


def table_format(cells: Sequence[str]) -> str:
    """siunitx's ``table-format`` for a column of :func:`decimal` strings, so it aligns them on the marker."""
    numbers = [text for text in cells if _is_number(text)]
    if not numbers:
        return "1"
    sign = r"\pm" if any(t[0] in "+-" for t in numbers) else ""
    whole = max(len(t.lstrip("+-").split(".")[0]) for t in numbers)
    places = max(len(t.split(".")[1]) if "." in t else 0 for t in numbers)
    return f"{sign}{whole}.{places}" if places else f"{sign}{whole}"


def p_value(value: float | None) -> str:
    """A p-value as papers print it: ``< 0.001`` below that, else three significant figures."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return r"$<$\,0.001" if value < 0.001 else decimal(value)
