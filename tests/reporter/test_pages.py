"""Every page a reader sees, built and read back: standalone PDFs and fragments inside real paper classes.

One appendix is written for the whole module, with what breaks layouts: a GPU and three components, 100-character
names with ``--flags`` and LaTeX specials, an hour-long run, a run without samples, names in CJK, Greek,
Cyrillic and emoji, and runs sampled every 5 and 15 s reported against an expected 1 s interval. Each page must
build without an error or an ``Overfull \\hbox``, keep one page per run, and print its names and numbers
literally (read back with pdftotext). Pages are also rendered to PNG under build/test-pages/ so a failing layout
can be looked at.
"""

from __future__ import annotations

import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from impact_reporter.appendix import comparison_report, file_names, set_report
from impact_reporter.carbon import resolve_intensity
from impact_reporter.latex import LatexError, write_appendix
from impact_reporter.runs import Run
from tests.reporter.archives import synthetic_run
from tests.reporter.papers import PAPERS, Paper, build_in_paper, page_count, pdf_text, render_png
from tests.servers import REPO_ROOT, require_binary

LONG = "Separable convolutions --no-amp & 50% of {filters} at lr_0.001 with a width multiplier of 0.75 (v2a)"
assert len(LONG) == 100
CJK, JAPANESE, PLAIN = "中文", "日本", "Normal (32)"
MIXED = "Ελληνικά и кириллица 🚀"
UNICODE_NOTICE = "This fragment has characters beyond what pdfLaTeX prints"
PAGES = REPO_ROOT / "build" / "test-pages"
GPU_METHODS = {"cpu": "rapl", "dram": "rapl", "gpu": "nvml-counter"}


def gpu_run(index: int, seconds: int = 40) -> Run:
    return synthetic_run(
        f"0123456789abcdef0123456789abcd{index:02d}",
        LONG,
        LONG,
        40.0 + index,
        seconds=seconds,
        start=1.7e9 + 4000 * index,
        gpu_watts=250.0 + 10 * index,
        methods=GPU_METHODS,
        labels={"seed": str(index), "note": "--no-amp & 100% {raw}", "model": "mobilenet_v2 " * 6},
    )


def cpu_runs(name: str, watts: list[float], start: float, spacings: tuple[float, ...] = (1.0,)) -> list[Run]:
    """30 s runs at these CPU powers, sampled every ``spacings[i]`` seconds (the last spacing for the rest)."""
    return [
        synthetic_run(
            f"{name}-{i}", name, name, w, seconds=30, start=start + 100 * i, spacing=spacings[min(i, len(spacings) - 1)]
        )
        for i, w in enumerate(watts)
    ]


@pytest.fixture(scope="module")
def appendix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The appendix, built: PDFs (LuaLaTeX), .tex and fragments; no page may be wider than its column."""
    require_binary("lualatex", "apt-get install texlive-luatex fonts-noto-cjk fonts-symbola")
    out = tmp_path_factory.mktemp("pages") / "appendix"
    intensity = resolve_intensity(flag_g_per_kwh=None, region="FR", series_query=None)
    unmeasured = synthetic_run("unmeasured-run", LONG, LONG, 40.0, start=1.7e9 + 20_000)
    unmeasured = Run(**{**unmeasured.__dict__, "samples": unmeasured.samples.iloc[0:0]})
    sets = [
        set_report(
            LONG, [gpu_run(0, 3600), gpu_run(1), gpu_run(2), unmeasured], intensity, 1.58, expected_interval=1.0
        ),
        set_report(CJK, cpu_runs(CJK, [30.0, 31.0, 29.0], 1.71e9), intensity, 1.58),
        set_report(JAPANESE, cpu_runs(JAPANESE, [33.0, 35.0], 1.72e9), intensity, 1.58),
        set_report(MIXED, cpu_runs(MIXED, [20.0, 25.0], 1.73e9, (15.0, 5.0)), intensity, 1.58, expected_interval=1.0),
        set_report(PLAIN, cpu_runs(PLAIN, [30.0, 32.0, 31.0], 1.74e9), intensity, 1.58),
    ]
    comparisons = [comparison_report(sets[0], sets[4]), comparison_report(sets[2], sets[1])]
    built = write_appendix(out, sets, comparisons)
    assert [b for b in built if b.overfull] == [], "standalone pages with lines wider than the page"
    if PAGES.exists():
        shutil.rmtree(PAGES)
    names = file_names([LONG, CJK, JAPANESE, MIXED, PLAIN])
    with ThreadPoolExecutor() as pool:
        list(pool.map(lambda b: render_png(b.pdf, PAGES / png_name(b.pdf, out, names)), built))
    return out


def png_name(pdf: Path, out: Path, names: dict[str, str]) -> str:
    """A short ASCII name for a page's PNGs: set number and page (``set0-summary``), or ``comparison-N``."""
    relative = pdf.relative_to(out)
    if len(relative.parts) == 1:
        return f"comparison-{sorted(p.name for p in out.glob('*_v_*.pdf')).index(pdf.name)}"
    return f"set{list(names.values()).index(relative.parts[0])}-{pdf.stem}"


def test_each_set_has_its_own_files_and_names_that_collide_are_told_apart(appendix: Path) -> None:
    directories = {p.name for p in appendix.iterdir() if p.is_dir()}
    assert directories == {LONG, CJK, JAPANESE, MIXED, PLAIN}
    document = json.loads((appendix / "appendix.json").read_text())
    assert [s["directory"] for s in document["sets"]] == [LONG, CJK, JAPANESE, MIXED, PLAIN]
    tamed = file_names(["a/b", "a_b", "a:b", "plain", "x" * 300])
    assert len(set(tamed.values())) == 5 and tamed["plain"] == "plain"
    assert all("/" not in name and len(name.encode()) <= 110 for name in tamed.values())


def test_every_run_fits_one_page_and_prints_names_numbers_and_flags_literally(appendix: Path) -> None:
    directory = appendix / LONG
    document = json.loads((appendix / "appendix.json").read_text())
    runs = document["sets"][0]["runs"]
    for index, run in enumerate(runs):
        pdf = directory / f"{index}.pdf"
        assert page_count(pdf) == 1, f"{pdf} has {page_count(pdf)} pages"
        text = pdf_text(pdf)
        assert LONG in text and "--no-amp & 100% {raw}" in text
        assert run["run_id"] in text.replace(" ", "")
        gpu_wh = run["energy_joules"]["gpu"] / 3600
        assert f"{gpu_wh:.3g}" in text.replace(",", ""), f"GPU energy {gpu_wh:.3g} Wh not on {pdf}"
        assert "measured (nvml-counter)" in text and "–" not in text.replace("Ελληνικά", "")
    hour = pdf_text(directory / "0.pdf", layout=True)
    assert "Duration 60.0 min" in hour and "Time since start (min)" in hour
    assert "GPU 250 measured (nvml-counter)" in hour and "Peak power (W) 295" in hour
    assert "unmeasured-run" in pdf_text(directory / "3.pdf") and "not measured" in pdf_text(directory / "3.pdf")


def test_pages_state_the_samples_spacing_and_the_interval_coverage_is_judged_against(appendix: Path) -> None:
    """Set MIXED was sampled every 15 s and every 5 s and reported with an expected 1 s interval: its 30 s runs
    are covered 2 s and 6 s of 30 s. The other sets, sampled every second, are fully covered at their spacing."""
    directory = appendix / file_names([MIXED])[MIXED]
    coarse, finer, summary = (pdf_text(directory / name) for name in ("0.pdf", "1.pdf", "summary.pdf"))
    against = "against the expected scrape interval of 1.00 s"
    per_interval = "(median spacing; power and its peak are per such interval)"
    assert f"Samples every 15.0 s {per_interval} cover 6.67 % of the run {against} (largest gap 15.0 s)" in coarse
    assert f"Samples every 5.00 s {per_interval} cover 20.0 % of the run {against} (largest gap 5.00 s)" in finer
    assert "Samples every 5.00 s to 15.0 s (each run’s median spacing" in summary
    assert f"covering 6.67 % to 20.0 % of each run {against}." in summary
    plain = pdf_text(appendix / PLAIN / "summary.pdf")
    assert "Samples every 1.00 s (each run’s median spacing" in plain and "covering 100 % of each run." in plain
    assert "cover 100 % of the run (largest gap 1.00 s)" in pdf_text(appendix / PLAIN / "0.pdf")
    [mixed] = [s for s in json.loads((appendix / "appendix.json").read_text())["sets"] if s["name"] == MIXED]
    assert [(r["sample_interval_seconds"], r["expected_interval_seconds"]) for r in mixed["runs"]] == [
        (15.0, 1.0),
        (5.0, 1.0),
    ]


@pytest.mark.parametrize("name", [CJK, JAPANESE, MIXED])
def test_names_in_any_script_print_as_typed(appendix: Path, name: str) -> None:
    for pdf in (appendix / file_names([name])[name]).glob("*.pdf"):
        assert name in pdf_text(pdf), pdf
    assert "?" not in pdf_text(appendix / name / "summary.pdf")


def test_a_name_no_font_can_print_is_an_error_that_names_the_character(tmp_path: Path) -> None:
    require_binary("lualatex", "apt-get install texlive-luatex")
    intensity = resolve_intensity(flag_g_per_kwh=100.0, region=None, series_query=None)
    linear_a = "\U00010600"
    report = set_report(f"set {linear_a}", cpu_runs("x", [30.0, 31.0], 1.7e9), intensity, 1.0)
    with pytest.raises(LatexError, match=r"U\+10600, LINEAR A SIGN AB001"):
        write_appendix(tmp_path, [report], [])


def test_comparison_rows_for_a_component_only_one_set_has(appendix: Path) -> None:
    text = pdf_text(appendix / f"{LONG}_v_{PLAIN}.pdf", layout=True)
    assert re.search(r"GPU energy \(Wh\) +[\d.]+ +only in A", text), text
    assert "Total energy includes GPU energy in A only" in text
    assert "measured versus estimated" not in text


def test_every_standalone_page_is_one_page_and_states_the_holm_family_it_used(appendix: Path) -> None:
    for pdf in appendix.rglob("*.pdf"):
        assert page_count(pdf) == 1, f"{pdf.relative_to(appendix)} has {page_count(pdf)} pages"
    document = json.loads((appendix / "appendix.json").read_text())
    for comparison in document["comparisons"]:
        text = pdf_text(appendix / comparison["file"])
        family = comparison["family"]
        assert f"across the {len(family)} distinct hypotheses tested" in text
        adjusted = [q for q in comparison["quantities"].values() if q["p_holm"] is not None and not q["same_test_as"]]
        assert len(adjusted) == len(family) > 0


def fragments(appendix: Path, unicode: bool) -> list[Path]:
    found = sorted(appendix.rglob("*.fragment.tex"))
    return [f for f in found if (UNICODE_NOTICE in f.read_text()) == unicode]


@pytest.mark.parametrize("paper", PAPERS, ids=[p.name for p in PAPERS])
def test_latin_fragments_fit_each_paper_class_with_the_documented_preamble(
    appendix: Path, paper: Paper, tmp_path: Path
) -> None:
    found = [f for f in fragments(appendix, unicode=False) if paper.two_column or ".wide." not in f.name]
    built = build_in_paper(found, paper, tmp_path)
    render_png(built.pdf, PAGES / paper.name / "fragments")
    assert built.overfull == [], f"fragments wider than a column of {paper.name}: {built.overfull}"
    text = built.text.casefold()  # acmart sets section titles in capitals
    assert "--no-amp & 50% of {filters}" in text and f"versus {PLAIN}".casefold() in text
    summary = json.loads((appendix / "appendix.json").read_text())["sets"][0]["summary"]
    assert f"{summary['total_kwh']['mean'] * 1000:.3g}" in built.text, "the mean total energy (Wh) is printed"


@pytest.mark.parametrize("paper", PAPERS[:2], ids=[p.name for p in PAPERS[:2]])
def test_fragments_in_other_scripts_fit_with_lualatex(appendix: Path, paper: Paper, tmp_path: Path) -> None:
    found = fragments(appendix, unicode=True)
    assert len(found) >= 8, "names beyond Latin-1 must mark their fragments for LuaLaTeX"
    built = build_in_paper(found, paper, tmp_path, unicode=True)
    render_png(built.pdf, PAGES / paper.name / "unicode-fragments")
    assert built.overfull == [], f"fragments wider than a column of {paper.name}: {built.overfull}"
    for word in (CJK, JAPANESE, *MIXED.split()):
        assert word in built.text, word


def test_every_page_states_the_basis_of_its_carbon_figures(appendix: Path) -> None:
    # Rendered and read back: the run page says how the intensity was chosen and what it is (location-based annual
    # average, CO2e, year, source); the summary and comparison pages say it of all their runs, with the precedence.
    fr = (
        "56 gCO2eq/kWh (CO2e; location-based annual average of national generation, life-cycle): France (FR), 2023: "
        "Our World in Data carbon_intensity_elec (Ember, Energy Institute), via codecarbon"
    )
    run_page = " ".join(pdf_text(appendix / PLAIN / "0.pdf").split())
    run_page = run_page.replace("lifecycle", "life-cycle")  # pdftotext drops the hyphen where "life-" ends a line
    assert f"Carbon intensity, from --region: {fr}" in run_page, run_page
    summary = " ".join(pdf_text(appendix / PLAIN / "summary.pdf").split())
    assert "Carbon intensity (--carbon-intensity or --region, else each host's region" in summary and fr in summary
    comparison = " ".join(pdf_text(appendix / f"{LONG}_v_{PLAIN}.pdf").split())
    assert f"Carbon intensity: {fr}" in comparison


def test_a_co2_only_intensity_says_so_on_every_page(tmp_path: Path) -> None:
    intensity = resolve_intensity(region="CN-SH")
    report = set_report(PLAIN, cpu_runs(PLAIN, [30.0, 31.0], 1.7e9), intensity, 1.0)
    write_appendix(tmp_path, [report], [], build=False)
    for tex in (tmp_path / PLAIN / "0.tex", tmp_path / PLAIN / "summary.tex"):
        text = tex.read_text().replace("\\allowbreak{}", "")  # the break points escape() puts in long words
        assert "gCO2/kWh (CO2 only, not CO2e; location-based annual average of provincial electricity" in text, tex
        assert "Shanghai (CN-SH), 2023: China MEE and NBS" in text, tex
