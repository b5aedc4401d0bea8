"""Set-versus-set comparisons: which quantities form the Holm family, and what the warnings say differs.

The runs are synthetic with known power, duration and busy time, so every value is known here in closed form;
p-values come from scipy's Welch test on those values and the adjusted ones from statsmodels' Holm, computed
over the distinct hypotheses only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from statsmodels.stats.multitest import multipletests

from impact_reporter.appendix import QUANTITIES, SetReport, appendix_document, comparison_report, set_report
from impact_reporter.carbon import CarbonIntensity
from impact_reporter.runs import SAMPLE_COLUMNS, Run
from tests.reporter.archives import HOST

REL = 1e-9
PUE = 1.5
G_PER_KWH = 300.0
INTENSITY = CarbonIntensity(G_PER_KWH, "test value", None, None, False, "flag")
RAPL = {"cpu": "rapl", "dram": "rapl"}


def run_of(
    run_id: str,
    watts: dict[str, float],
    seconds: int = 60,
    cpu_busy: float = 0.5,
    gpu_busy: float | None = None,
    methods: dict[str, str] | None = None,
    index: int = 0,
) -> Run:
    """A run at constant power per component, scraped every second, its CPUs (and GPUs) busy a fixed share."""
    start = 1_700_000_000.0 + 1000 * index
    t = np.arange(0, seconds + 1, dtype=float)
    rows = [
        ("impact_run_energy_joules_total", HOST.instance, component, start + x, w * x)
        for component, w in watts.items()
        for x in t
    ]
    rows += [("impact_run_cpu_seconds_total", HOST.instance, "", start + x, cpu_busy * x) for x in t]
    if gpu_busy is not None:
        rows += [("impact_run_gpu_seconds_total", HOST.instance, "", start + x, gpu_busy * x) for x in t]
    return Run(
        run_id=run_id,
        experiment="exp",
        set="set",
        labels={},
        user="alice",
        start_time=start,
        end_time=start + seconds,
        hosts=(HOST,),
        methods=methods or RAPL,
        samples=pd.DataFrame(rows, columns=SAMPLE_COLUMNS),
    )


def set_of(name: str, runs: list[Run]) -> SetReport:
    return set_report(name, runs, INTENSITY, PUE)


def welch_p(a: list[float], b: list[float]) -> float:
    return float(scipy.stats.ttest_ind(a, b, equal_var=False).pvalue)


def holm(p_values: list[float]) -> list[float]:
    return list(multipletests(p_values, method="holm")[1])


# --- the Holm family -------------------------------------------------------------------------------------------

# One component (CPU) whose power, the run's duration and its CPU busy share all vary independently.
ONE_A = [(40.0, 60, 0.5), (44.0, 70, 0.6), (41.0, 55, 0.4), (43.0, 65, 0.7)]
ONE_B = [(36.0, 62, 0.45), (38.5, 58, 0.5), (37.0, 66, 0.55), (35.0, 61, 0.5)]


def one_component_set(name: str, rows: list[tuple[float, int, float]]) -> SetReport:
    return set_of(
        name,
        [
            run_of(f"{name}{i}", {"cpu": w}, s, busy, methods={"cpu": "rapl"}, index=i)
            for i, (w, s, busy) in enumerate(rows)
        ],
    )


def closed_form(rows: list[tuple[float, int, float]]) -> dict[str, list[float]]:
    return {
        "total_kwh": [w * s / 3.6e6 for w, s, _ in rows],
        "duration_hours": [s / 3600 for _, s, _ in rows],
        "cpu_hours": [busy * s / 3600 for _, s, busy in rows],
        "average_power_watts": [w for w, _, _ in rows],
    }


def test_multiples_of_total_energy_are_one_test_and_holm_counts_distinct_hypotheses_only() -> None:
    report = comparison_report(one_component_set("A", ONE_A), one_component_set("B", ONE_B))
    a, b = closed_form(ONE_A), closed_form(ONE_B)
    distinct = ["total_kwh", "duration_hours", "cpu_hours", "average_power_watts"]
    assert report.family == tuple(distinct)
    raw = [welch_p(a[key], b[key]) for key in distinct]
    for key, p, p_holm in zip(distinct, raw, holm(raw), strict=True):
        c = report.comparisons[key]
        assert c.same_test_as is None, key
        assert c.p_value == pytest.approx(p, rel=REL), key
        assert c.p_holm == pytest.approx(p_holm, rel=REL), key

    # CPU energy is the total, PUE-adjusted energy and CO2eq fixed multiples of it: the same test
    total = report.comparisons["total_kwh"]
    factors = {"cpu_kwh": 1.0, "total_kwh_pue": PUE, "kg_co2eq": PUE * G_PER_KWH / 1000}
    for key, factor in factors.items():
        c = report.comparisons[key]
        assert c.same_test_as == "total_kwh", key
        assert c.p_holm == total.p_holm, key
        assert c.p_value == pytest.approx(total.p_value, rel=1e-6), key
        # its own means, difference and interval: the total's, scaled
        assert c.mean_a == pytest.approx(factor * np.mean(a["total_kwh"]), rel=REL), key
        assert c.difference == pytest.approx(factor * total.difference, rel=REL), key
        assert c.ci_low == pytest.approx(factor * total.ci_low, rel=1e-6), key

    # counting the multiples as tests of their own would have made total energy's adjusted p larger
    every_p = [c.p_value for c in report.comparisons.values() if c.p_value is not None]
    assert len(every_p) == 7
    assert total.p_holm < holm(every_p)[0]
    assert report.primary == "total_kwh"
    assert report.only_in == {}


def test_each_component_is_its_own_test_when_two_vary_independently() -> None:
    cpu_a, dram_a = [40.0, 44.0, 41.0, 43.0], [5.0, 4.0, 6.5, 5.5]
    cpu_b, dram_b = [36.0, 38.5, 37.0, 35.0], [6.0, 5.0, 7.0, 4.5]
    pairs_a, pairs_b = enumerate(zip(cpu_a, dram_a, strict=True)), enumerate(zip(cpu_b, dram_b, strict=True))
    a = set_of("A", [run_of(f"a{i}", {"cpu": c, "dram": d}, index=i) for i, (c, d) in pairs_a])
    b = set_of("B", [run_of(f"b{i}", {"cpu": c, "dram": d}, index=i) for i, (c, d) in pairs_b])
    report = comparison_report(a, b)

    kwh = {
        "total_kwh": (
            [(c + d) * 60 / 3.6e6 for c, d in zip(cpu_a, dram_a, strict=True)],
            [(c + d) * 60 / 3.6e6 for c, d in zip(cpu_b, dram_b, strict=True)],
        ),
        "cpu_kwh": ([c * 60 / 3.6e6 for c in cpu_a], [c * 60 / 3.6e6 for c in cpu_b]),
        "dram_kwh": ([d * 60 / 3.6e6 for d in dram_a], [d * 60 / 3.6e6 for d in dram_b]),
    }
    # every run lasts 60 s with the CPU half busy: duration and CPU time do not vary, so they are not tested
    assert report.family == ("total_kwh", "cpu_kwh", "dram_kwh")
    raw = [welch_p(*kwh[key]) for key in report.family]
    for key, p, p_holm in zip(report.family, raw, holm(raw), strict=True):
        assert report.comparisons[key].same_test_as is None, key
        assert report.comparisons[key].p_value == pytest.approx(p, rel=REL), key
        assert report.comparisons[key].p_holm == pytest.approx(p_holm, rel=REL), key
    # energy and CO2eq rest on both components: multiples of the total, not of a component
    for key in ("total_kwh_pue", "kg_co2eq", "average_power_watts"):  # equal durations: power is energy / 60 s
        assert report.comparisons[key].same_test_as == "total_kwh", key
        assert report.comparisons[key].p_holm == report.comparisons["total_kwh"].p_holm, key
    for key in ("duration_hours", "cpu_hours"):
        assert report.comparisons[key].p_value is None and report.comparisons[key].p_holm is None, key
        assert report.comparisons[key].note == "n/a (no variance in either set)", key
    assert report.warnings == ()


def test_a_different_pue_in_b_makes_pue_adjusted_energy_a_test_of_its_own() -> None:
    a = one_component_set("A", ONE_A)
    b = set_report(
        "B",
        [
            run_of(f"B{i}", {"cpu": w}, s, busy, methods={"cpu": "rapl"}, index=i)
            for i, (w, s, busy) in enumerate(ONE_B)
        ],
        INTENSITY,
        1.2,
    )
    report = comparison_report(a, b)
    assert report.comparisons["cpu_kwh"].same_test_as == "total_kwh"
    # the ratio to the total is 1.5 in A but 1.2 in B: another hypothesis, and CO2eq is a multiple of it
    assert report.comparisons["total_kwh_pue"].same_test_as is None
    assert report.comparisons["kg_co2eq"].same_test_as == "total_kwh_pue"
    assert report.family == ("total_kwh", "total_kwh_pue", "duration_hours", "cpu_hours", "average_power_watts")
    pue_a = [w * s / 3.6e6 * PUE for w, s, _ in ONE_A]
    pue_b = [w * s / 3.6e6 * 1.2 for w, s, _ in ONE_B]
    raw = [report.comparisons[key].p_value for key in report.family]
    assert raw[1] == pytest.approx(welch_p(pue_a, pue_b), rel=REL)
    assert report.comparisons["total_kwh_pue"].p_holm == pytest.approx(holm(raw)[1], rel=REL)


def test_family_size_is_the_number_of_adjusted_p_values_in_the_report_and_in_appendix_json() -> None:
    report = comparison_report(one_component_set("A", ONE_A), one_component_set("B", ONE_B))
    adjusted = [key for key, c in report.comparisons.items() if c.p_holm is not None and c.same_test_as is None]
    assert list(report.family) == adjusted
    assert len(report.family) == 4 < len(report.comparisons)
    # Holm's m is the family's size: the smallest p-value in it is multiplied by exactly that
    smallest = min(report.family, key=lambda key: report.comparisons[key].p_value)
    c = report.comparisons[smallest]
    assert c.p_holm == pytest.approx(min(1.0, len(report.family) * c.p_value), rel=REL)

    [compared] = appendix_document([report.a, report.b], [report])["comparisons"]
    assert compared["family"] == list(report.family)
    assert compared["primary"] == "total_kwh"
    assert compared["only_in"] == {}
    assert compared["quantities"]["kg_co2eq"]["same_test_as"] == "total_kwh"
    assert compared["quantities"]["total_kwh"]["same_test_as"] is None


# --- what differs between the sets -----------------------------------------------------------------------------


def gpu_set(name: str, gpu_watts: list[float]) -> SetReport:
    methods = {**RAPL, "gpu": "nvml-counter"}
    return set_of(
        name,
        [
            run_of(f"{name}{i}", {"cpu": 40.0 + i, "dram": 5.0, "gpu": g}, gpu_busy=0.9, methods=methods, index=i)
            for i, g in enumerate(gpu_watts)
        ],
    )


def cpu_set(name: str, cpu_watts: list[float], methods: dict[str, str] | None = None) -> SetReport:
    return set_of(
        name, [run_of(f"{name}{i}", {"cpu": w, "dram": 5.0}, methods=methods, index=i) for i, w in enumerate(cpu_watts)]
    )


def test_gpu_against_cpu_only_names_what_only_one_set_has() -> None:
    report = comparison_report(gpu_set("gpu", [200.0, 210.0, 190.0]), cpu_set("cpu", [60.0, 62.0, 61.0]))
    assert report.only_in == {"gpu_kwh": "A", "gpu_hours": "A"}
    assert "gpu_kwh" not in report.comparisons and "gpu_hours" not in report.comparisons
    [warning] = report.warnings
    assert warning.startswith("Total energy includes GPU energy in A only:")
    assert "CPU package energy and DRAM energy" in warning
    assert not any("measured versus estimated" in w for w in report.warnings)
    assert report.primary == "total_kwh"

    flipped = comparison_report(report.b, report.a)
    assert flipped.only_in == {"gpu_kwh": "B", "gpu_hours": "B"}
    assert flipped.warnings[0].startswith("Total energy includes GPU energy in B only:")

    [compared] = appendix_document([report.a, report.b], [report])["comparisons"]
    assert compared["only_in"] == {"gpu_kwh": "A", "gpu_hours": "A"}


def test_same_components_measured_the_same_way_carry_no_warning() -> None:
    report = comparison_report(cpu_set("x", [40.0, 41.0, 43.0]), cpu_set("y", [30.0, 31.0, 29.5]))
    assert report.warnings == ()
    assert report.only_in == {}


def test_a_component_measured_in_one_set_and_estimated_in_the_other_is_named() -> None:
    a = cpu_set("a", [40.0, 41.0, 43.0])
    b = cpu_set("b", [30.0, 31.0, 29.5], methods={"cpu": "estimate", "dram": "rapl"})
    report = comparison_report(a, b)
    [warning] = report.warnings
    assert warning.startswith("CPU package energy was measured by rapl in A but estimated (estimate) in B")
    assert "DRAM" not in warning and "measured versus estimated" not in warning
    assert report.only_in == {}


def test_differences_in_method_are_compared_only_for_components_both_sets_have() -> None:
    # A's GPU energy is estimated, B has no GPU: that is a difference of components, not of methods
    methods = {**RAPL, "gpu": "estimate"}
    a = set_of(
        "a",
        [run_of(f"a{i}", {"cpu": 40.0 + i, "dram": 5.0, "gpu": 100.0 + i}, methods=methods, index=i) for i in range(3)],
    )
    report = comparison_report(a, cpu_set("b", [30.0, 31.0, 29.5]))
    assert report.only_in == {"gpu_kwh": "A"}  # no GPU time counter in these runs
    assert len(report.warnings) == 1 and "GPU energy in A only" in report.warnings[0]


def test_primary_is_total_energy_and_nothing_when_nothing_is_compared() -> None:
    a = cpu_set("a", [40.0, 41.0, 43.0])
    empty = SetReport("none", (), (), {})
    report = comparison_report(a, empty)
    assert report.comparisons == {} and report.family == () and report.primary is None
    assert report.only_in == {q.key: "A" for q in QUANTITIES if q.key in a.summaries}
