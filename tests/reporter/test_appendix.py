"""Appendices from run directories (archives): layout, real LuaLaTeX builds, escaping and the awkward sets.

The numbers in appendix.json are checked against scipy and statsmodels run here on the runs' totals, which
the test knows from the power it wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from impact_reporter.latex import LatexError, build_pdf
from impact_reporter.runs import Host, write_archive
from tests.reporter.archives import HOST, archive_set, synthetic_run
from tests.servers import REPO_ROOT, require_binary

NASTY = "a_b & c % d #1 {x} ~^\\"
SECONDS = 60
DRAM_WATTS = 5.0


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from impact_reporter.cli import main, seed_main; "
            "sys.exit((seed_main if sys.argv[1] == 'seed' else main)(sys.argv[2:]))",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env=env,
    )


def pdf_text(path: Path) -> str:
    """The PDF's text with every run of whitespace made one space, so phrases survive line breaks."""
    pdftotext = require_binary("pdftotext", "apt-get install poppler-utils")
    text = subprocess.run([pdftotext, str(path), "-"], capture_output=True, text=True, check=True).stdout
    return " ".join(text.split())


def total_kwh(cpu_watts: float) -> float:
    return (cpu_watts + DRAM_WATTS) * SECONDS / 3.6e6


@pytest.fixture(autouse=True)
def latex() -> None:
    require_binary("lualatex", "apt-get install texlive-luatex texlive-latex-recommended texlive-science latexmk")


def test_seed_command_writes_the_seed_layout_and_the_right_statistics(tmp_path: Path) -> None:
    conv_watts, dw_watts = [40.0, 42.0, 41.0], [30.0, 31.0, 29.5]
    conv = archive_set(tmp_path / "runs", "conv", conv_watts)
    dw = archive_set(tmp_path / "runs", "dw", dw_watts)
    out = tmp_path / "out"
    result = run_cli(
        "seed",
        *map(str, conv),
        "--experiment_set_names",
        "Normal Convolutions (32 filters)",
        "Separable Convolutions (64 filters)",
        "--compare_dirs",
        *map(str, dw),
        "--output_dir",
        str(out),
        "--carbon-intensity=300",
    )
    assert result.returncode == 0, result.stderr

    for name in ("Normal Convolutions (32 filters)", "Separable Convolutions (64 filters)"):
        for stem in ("0", "1", "2", "summary"):
            for suffix in (".pdf", ".tex", ".fragment.tex"):
                assert (out / name / f"{stem}{suffix}").is_file(), f"{name}/{stem}{suffix}"
        assert "\\documentclass" not in (out / name / "0.fragment.tex").read_text()
    comparison = out / "Normal Convolutions (32 filters)_v_Separable Convolutions (64 filters).pdf"
    assert comparison.is_file() and comparison.with_suffix(".tex").is_file()

    document = json.loads((out / "appendix.json").read_text())
    [compared] = document["comparisons"]
    a = np.array([total_kwh(w) for w in conv_watts])
    b = np.array([total_kwh(w) for w in dw_watts])
    welch = stats.ttest_ind(a, b, equal_var=False)
    low, high = CompareMeans(DescrStatsW(a), DescrStatsW(b)).tconfint_diff(alpha=0.05, usevar="unequal")
    total = compared["quantities"]["total_kwh"]
    assert total["p_value"] == pytest.approx(welch.pvalue, rel=1e-9)
    assert total["t_statistic"] == pytest.approx(welch.statistic, rel=1e-9)
    assert (total["ci_low"], total["ci_high"]) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))
    assert total["mean_a"] == pytest.approx(a.mean(), rel=1e-12)
    summary = document["sets"][0]["summary"]["total_kwh"]
    assert summary["sem"] == pytest.approx(stats.sem(a), rel=1e-9)
    assert summary["total"] == pytest.approx(a.sum(), rel=1e-12)
    assert [run["total_kwh"] for run in document["sets"][0]["runs"]] == pytest.approx(list(a), rel=1e-12)

    run_page = pdf_text(out / "Normal Convolutions (32 filters)" / "0.pdf")
    assert "AMD EPYC 7742 64-Core Processor (128 logical CPUs)" in run_page
    assert "NVIDIA A100-SXM4-40GB (driver 550.54.15)" in run_page
    text = pdf_text(comparison)
    assert f"{welch.pvalue:.3g}" in text or "< 0.001" in text
    assert "Welch" in text


def test_impact_report_appendix_escapes_every_user_string(tmp_path: Path) -> None:
    labelled = {"note": "50% & more_{x}", "tilde": "~^\\"}
    first = [
        write_archive(
            synthetic_run(f"n{i}", "exp_#1 & co", NASTY, 40 + i, start=1.7e9 + 100 * i, labels=labelled),
            tmp_path / f"n{i}",
        ).parent
        for i in range(2)
    ]
    second = archive_set(tmp_path / "runs", "plain", [30.0, 33.0])
    out = tmp_path / "out"
    result = run_cli(
        "main",
        "appendix",
        "--experiment-set-names",
        NASTY,
        "plain",
        "--run-dirs",
        *map(str, first),
        "--run-dirs",
        *map(str, second),
        "--compare",
        NASTY,
        "plain",
        f"--out={out}",
    )
    assert result.returncode == 0, result.stderr
    directory = next(p for p in out.iterdir() if p.is_dir() and p.name != "plain")
    assert set(os.listdir(directory)) >= {"0.pdf", "1.pdf", "summary.pdf"}
    text = pdf_text(directory / "0.pdf")
    assert "a_b & c % d #1 {x} ~^\\" in text
    assert "50% & more_{x}" in text
    assert "world average" in result.stderr
    comparison = next(out.glob("*_v_plain.pdf"))
    assert NASTY in pdf_text(comparison)


def test_one_run_sets_identical_sets_and_failed_runs_give_readable_output(tmp_path: Path) -> None:
    single = archive_set(tmp_path / "runs", "single", [40.0])
    same_a = archive_set(tmp_path / "runs", "same-a", [35.0, 35.0, 35.0])
    same_b = archive_set(tmp_path / "runs", "same-b", [35.0, 35.0])
    broken = synthetic_run("broken-0", "broken", "broken", 40.0, start=1_700_001_000.0)
    broken_dir = write_archive(
        type(broken)(**{**broken.__dict__, "samples": broken.samples.iloc[0:0]}), tmp_path / "broken-0"
    ).parent
    with_failure = archive_set(tmp_path / "runs", "ok", [38.0, 39.0]) + [broken_dir]
    out = tmp_path / "out"
    result = run_cli(
        "main",
        "appendix",
        "--experiment-set-names",
        "single",
        "same A",
        "same B",
        "with failure",
        "--run-dirs",
        *map(str, single),
        "--run-dirs",
        *map(str, same_a),
        "--run-dirs",
        *map(str, same_b),
        "--run-dirs",
        *map(str, with_failure),
        "--compare",
        "single",
        "same A",
        "--compare",
        "same A",
        "same B",
        "--compare",
        "with failure",
        "same A",
        f"--out={out}",
        "--region=DE",
    )
    assert result.returncode == 0, result.stderr

    n1 = pdf_text(out / "single_v_same A.pdf")
    assert "n/a (needs at least 2 runs)" in n1
    identical = pdf_text(out / "same A_v_same B.pdf")
    assert "n/a (no variance in either set)" in identical
    failed_page = pdf_text(out / "with failure" / "2.pdf")
    assert "broken-0" in failed_page and "no energy samples" in failed_page
    assert "2 run(s) reported, 1 run(s) not measured and left out" in pdf_text(out / "with failure" / "summary.pdf")
    document = (out / "appendix.json").read_text()
    assert "NaN" not in document and "Infinity" not in document
    for pdf in out.rglob("*.pdf"):
        assert "nan" not in pdf_text(pdf).lower().split(), pdf


def test_sets_on_different_hardware_carry_a_warning(tmp_path: Path) -> None:
    intel = Host("node2:9877", hostname="node2", cpu_model="Intel(R) Xeon(R) Gold 6248", cpu_count="80")
    amd = archive_set(tmp_path / "runs", "amd", [40.0, 41.0])
    xeon = archive_set(tmp_path / "runs", "xeon", [40.0, 41.0], host=intel)
    out = tmp_path / "out"
    result = run_cli(
        "main",
        "appendix",
        "--experiment-set-names",
        "amd",
        "xeon",
        "--run-dirs",
        *map(str, amd),
        "--run-dirs",
        *map(str, xeon),
        "--compare",
        "amd",
        "xeon",
        f"--out={out}",
        "--no-pdf",
    )
    assert result.returncode == 0, result.stderr
    assert not list(out.rglob("*.pdf")), "--no-pdf builds nothing"
    assert "different hardware" in (out / "amd_v_xeon.tex").read_text()
    assert HOST.cpu_model in json.loads((out / "appendix.json").read_text())["comparisons"][0]["warnings"][0]


def test_without_lualatex_the_tex_files_are_written_and_one_line_says_how_to_install(tmp_path: Path) -> None:
    runs = archive_set(tmp_path / "runs", "x", [40.0, 41.0])
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # python, but no TeX
    out = tmp_path / "out"
    result = run_cli(
        "main",
        "appendix",
        "--experiment-set-names",
        "x",
        "--run-dirs",
        *map(str, runs),
        f"--out={out}",
        "--carbon-intensity=100",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "x" / "summary.tex").is_file() and not list(out.rglob("*.pdf"))
    assert "apt-get install texlive-luatex" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_latex_error_shows_the_logs_relevant_lines(tmp_path: Path) -> None:
    tex = tmp_path / "broken.tex"
    tex.write_text("\\documentclass{article}\\begin{document}\\undefinedmacro\\end{document}\n")
    with pytest.raises(LatexError, match="Undefined control sequence"):
        build_pdf(tex)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--experiment-set-names", "a", "b", "--run-dirs", "x"], "one --match per set, or one --run-dirs per set"),
        (["--experiment-set-names", "a", "--run-dirs", "x", "--compare", "a", "c"], "'c': not one of the set names"),
        (["--experiment-set-names", "a", "a", "--run-dirs", "x", "--run-dirs", "y"], "each set needs its own name"),
    ],
)
def test_appendix_usage_mistakes_exit_2(args: list[str], message: str) -> None:
    result = run_cli("main", "appendix", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
