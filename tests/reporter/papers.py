"""Real paper classes to \\input fragments into: the documented preamble, built, its log and text read back.

Each paper is a class as researchers use it (article two-column, IEEEtran conference, ACM's acmart sigconf, a
5.5 in single-column page as in NeurIPS and ICML) with exactly the preamble docs/reporting.md gives.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.servers import require_binary

EXTRACTABLE = r"""\input{glyphtounicode}\pdfgentounicode=1
"""
"""Not part of the documented preamble: it only makes pdfLaTeX's ligatures (fi, fl) readable to pdftotext."""
FRAGMENT_PREAMBLE = r"""\usepackage[T1]{fontenc}
\usepackage{booktabs,array,tabularx,siunitx,pgfplots}
\pgfplotsset{compat=1.17}
"""
UNICODE_PREAMBLE = r"""\usepackage{fontspec}
\directlua{luaotfload.add_fallback("impactfallback", {"NotoSansCJKsc-Regular:mode=node;", "Symbola:mode=node;"})}
\setmainfont{Latin Modern Roman}[RawFeature={fallback=impactfallback}]
\setmonofont{Latin Modern Mono}[RawFeature={fallback=impactfallback}]
\usepackage{booktabs,array,tabularx,siunitx,pgfplots}
\pgfplotsset{compat=1.17}
"""
INSTALL_HINT = "apt-get install texlive-publishers texlive-latex-extra texlive-fonts-extra texlive-luatex"


@dataclass(frozen=True)
class Paper:
    name: str
    documentclass: str
    extra: str = ""
    two_column: bool = True
    opening: str = ""  # what starts the body: acmart sets its two columns only from \maketitle


SCALABLE = r"\usepackage{lmodern}"  # the paper's own font choice: acmart brings Libertine, the others take this
PAPERS = (
    Paper("article-twocolumn", r"\documentclass[twocolumn,10pt]{article}", SCALABLE),
    Paper("ieeetran", r"\documentclass[conference]{IEEEtran}", SCALABLE),
    Paper(
        "acmart",
        r"\documentclass[sigconf]{acmart}",
        r"\settopmatter{printacmref=false}\setcopyright{none}",
        opening=r"\title{Appendix}\author{A. Researcher}\affiliation{\institution{Lab}\country{FR}}\maketitle",
    ),
    Paper(
        "single-column", r"\documentclass[10pt]{article}", SCALABLE + r"\usepackage[textwidth=5.5in]{geometry}", False
    ),
)


@dataclass(frozen=True)
class Built:
    log: str
    text: str
    pages: int
    pdf: Path

    @property
    def overfull(self) -> list[str]:
        return re.findall(r"^Overfull \\hbox.*$", self.log, re.MULTILINE)


def build_in_paper(fragments: Sequence[Path], paper: Paper, work: Path, unicode: bool = False) -> Built:
    """\\input every fragment into ``paper`` (a wide one in ``table*``) and build it with pdfLaTeX or LuaLaTeX."""
    engine = require_binary("lualatex" if unicode else "pdflatex", INSTALL_HINT)
    work.mkdir(parents=True, exist_ok=True)
    body = []
    for number, fragment in enumerate(fragments):
        shutil.copyfile(fragment, work / f"fragment-{number}.tex")
        line = rf"\input{{fragment-{number}.tex}}"
        if fragment.name.endswith(".wide.fragment.tex"):
            line = rf"\begin{{table*}}\centering{line}\caption{{Fragment {number}.}}\end{{table*}}"
        body.append(line)
    preamble = UNICODE_PREAMBLE if unicode else EXTRACTABLE + FRAGMENT_PREAMBLE + paper.extra
    inputs = "\n\n".join(body)
    (work / "paper.tex").write_text(
        f"{paper.documentclass}\n{preamble}\n\\begin{{document}}\n{paper.opening}\nBefore.\n\n{inputs}\n\nAfter.\n"
        "\\end{document}\n"
    )
    result = subprocess.run(
        [engine, "-interaction=nonstopmode", "-halt-on-error", "paper.tex"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = (work / "paper.log").read_text(errors="replace")
    assert result.returncode == 0, f"{paper.name}: {engine} failed:\n{log[-3000:]}"
    pdf = work / "paper.pdf"
    return Built(log, pdf_text(pdf), page_count(pdf), pdf)


def pdf_text(pdf: Path, layout: bool = False) -> str:
    """The PDF's text, every run of whitespace made one space so phrases survive line breaks.

    With ``layout`` a table's row is read as one line (pdftotext -layout), so a label and its value are adjacent.
    """
    pdftotext = require_binary("pdftotext", "apt-get install poppler-utils")
    flags = ["-layout"] if layout else []
    text = subprocess.run([pdftotext, *flags, str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    return " ".join(text.split())


def page_count(pdf: Path) -> int:
    pdfinfo = require_binary("pdfinfo", "apt-get install poppler-utils")
    info = subprocess.run([pdfinfo, str(pdf)], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"^Pages:\s+(\d+)", info, re.MULTILINE).group(1))


def render_png(pdf: Path, out: Path) -> list[Path]:
    """Every page of ``pdf`` as a PNG beside ``out`` (so a failing layout can be looked at)."""
    pdftoppm = require_binary("pdftoppm", "apt-get install poppler-utils")
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([pdftoppm, "-r", "50", "-png", str(pdf), str(out)], check=True, timeout=120)
    return sorted(out.parent.glob(f"{out.name}*.png"))
