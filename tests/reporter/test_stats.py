"""Appendix statistics against independent computations written out here from first principles.

The module under test calls scipy and statsmodels; these tests recompute every figure from the textbook
formulas with numpy (Welch's t and Welch–Satterthwaite df, Hedges' g by hand) and take only the t
distribution's sf/ppf from scipy, then cross-check against the libraries the module promises to match.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence

import numpy as np
import pytest
import scipy.stats
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from impact_reporter.stats import (
    RELATIVE_PRECISION,
    Comparison,
    Summary,
    compare,
    compare_all,
    holm_adjust,
    holm_family,
    repeated_tests,
    significant_figures,
    summarize,
)

REL = 1e-9


# --- independent reference computations -------------------------------------------------------------------


def reference_summary(values: Sequence[float], confidence: float) -> dict[str, float]:
    x = np.asarray(values, dtype=float)
    n = len(x)
    mean = x.sum() / n
    std = math.sqrt(((x - mean) ** 2).sum() / (n - 1))
    sem = std / math.sqrt(n)
    half = scipy.stats.t.ppf((1 + confidence) / 2, n - 1) * sem
    return {"mean": mean, "std": std, "sem": sem, "ci_low": mean - half, "ci_high": mean + half}


def reference_welch(a: Sequence[float], b: Sequence[float], confidence: float) -> dict[str, float]:
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n_a, n_b = len(xa), len(xb)
    mean_a, mean_b = xa.sum() / n_a, xb.sum() / n_b
    var_a = ((xa - mean_a) ** 2).sum() / (n_a - 1)
    var_b = ((xb - mean_b) ** 2).sum() / (n_b - 1)
    va, vb = var_a / n_a, var_b / n_b
    se = math.sqrt(va + vb)
    diff = mean_a - mean_b
    t = diff / se
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    p = 2 * scipy.stats.t.sf(abs(t), df)
    half = scipy.stats.t.ppf((1 + confidence) / 2, df) * se
    pooled = math.sqrt(((n_a - 1) * var_a + (n_b - 1) * var_b) / (n_a + n_b - 2))
    j = 1 - 3 / (4 * (n_a + n_b) - 9)
    return {
        "mean_a": mean_a,
        "mean_b": mean_b,
        "difference": diff,
        "t_statistic": t,
        "df": df,
        "p_value": p,
        "ci_low": diff - half,
        "ci_high": diff + half,
        "hedges_g": j * diff / pooled,
    }


def reference_holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down by hand: sort ascending, multiply the k-th smallest by m - k, keep monotone, cap at 1."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p_values[i]))
        adjusted[i] = running
    return adjusted


def assert_all_finite_or_none(result: Summary | Comparison) -> None:
    """Every field of the result: None, a string, an int, or a finite float (tuples element by element)."""
    for field in dataclasses.fields(result):
        value = getattr(result, field.name)
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if item is None or isinstance(item, str):
                continue
            assert isinstance(item, (int, float)), (field.name, item)
            assert math.isfinite(item), (field.name, item)


def assert_matches(result: object, expected: dict[str, float], abs_tol: float = 0.0) -> None:
    for name, value in expected.items():
        assert getattr(result, name) == pytest.approx(value, rel=REL, abs=abs_tol), name


A = [12.1, 13.4, 11.8, 12.9, 13.0, 12.2]
B = [10.2, 11.1, 10.8, 9.9, 12.4]


# --- summarize -------------------------------------------------------------------------------------------------


def test_summary_of_literal_runs_has_closed_form_values() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert (s.n, s.mean, s.total, s.cumulative) == (4, 2.5, 10.0, (1.0, 3.0, 6.0, 10.0))
    assert s.std == pytest.approx(math.sqrt(5 / 3), rel=REL)
    assert s.sem == pytest.approx(math.sqrt(5 / 12), rel=REL)
    # t_{0.975, 3} = 3.182446305284263
    assert s.ci_low == pytest.approx(2.5 - 3.182446305284263 * math.sqrt(5 / 12), rel=REL)
    assert s.ci_high == pytest.approx(2.5 + 3.182446305284263 * math.sqrt(5 / 12), rel=REL)
    assert s.note is None


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_summary_matches_reference_on_literal_runs(confidence: float) -> None:
    s = summarize(A, confidence)
    assert_matches(s, reference_summary(A, confidence))
    assert s.confidence == confidence
    assert s.cumulative == pytest.approx(np.cumsum(A).tolist(), rel=REL)
    assert s.total == pytest.approx(sum(A), rel=REL)


def test_summary_keeps_run_order_in_cumulative() -> None:
    assert summarize([3.0, 1.0, 2.0]).cumulative == (3.0, 4.0, 6.0)


def test_summary_of_no_runs() -> None:
    s = summarize([])
    assert (s.n, s.total, s.cumulative) == (0, 0.0, ())
    assert (s.mean, s.std, s.sem, s.ci_low, s.ci_high) == (None, None, None, None, None)
    assert s.note == "n/a (no runs)"
    assert_all_finite_or_none(s)


def test_summary_of_one_run_has_mean_and_total_only() -> None:
    s = summarize([7.5])
    assert (s.n, s.mean, s.total, s.cumulative) == (1, 7.5, 7.5, (7.5,))
    assert (s.std, s.sem, s.ci_low, s.ci_high) == (None, None, None, None)
    assert s.note == "n/a (needs at least 2 runs)"
    assert_all_finite_or_none(s)


def test_summary_without_variance_collapses_the_interval_onto_the_mean() -> None:
    # 0.1 three times: np.var is not exactly 0 in floats, the summary must still say 0
    s = summarize([0.1, 0.1, 0.1])
    assert (s.mean, s.std, s.sem, s.ci_low, s.ci_high) == (0.1, 0.0, 0.0, 0.1, 0.1)
    assert s.note is None
    assert_all_finite_or_none(s)


def test_summary_rejects_nan_and_bad_confidence() -> None:
    with pytest.raises(ValueError):
        summarize([1.0, math.nan])
    with pytest.raises(ValueError):
        summarize([1.0, 2.0], confidence=1.0)


# --- compare ---------------------------------------------------------------------------------------------------


def test_compare_has_closed_form_values_on_literal_sets() -> None:
    """a = 1..4, b = 2·a: t = -sqrt(3), df = 75/17, g = -sqrt(3/2) · 20/23, all by hand."""
    c = compare([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0])
    assert (c.n_a, c.n_b, c.mean_a, c.mean_b, c.difference) == (4, 4, 2.5, 5.0, -2.5)
    assert c.relative_difference == -0.5
    assert c.t_statistic == pytest.approx(-math.sqrt(3), rel=REL)
    assert c.df == pytest.approx(75 / 17, rel=REL)
    assert c.hedges_g == pytest.approx(-math.sqrt(1.5) * 20 / 23, rel=REL)
    assert c.p_value == pytest.approx(2 * scipy.stats.t.sf(math.sqrt(3), 75 / 17), rel=REL)
    half = scipy.stats.t.ppf(0.975, 75 / 17) * 5 / math.sqrt(12)
    assert (c.ci_low, c.ci_high) == (pytest.approx(-2.5 - half, rel=REL), pytest.approx(-2.5 + half, rel=REL))
    assert c.p_holm is None
    assert c.note is None


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_compare_matches_reference_on_literal_sets(confidence: float) -> None:
    c = compare(A, B, confidence)
    assert_matches(c, reference_welch(A, B, confidence))
    assert c.relative_difference == pytest.approx(c.difference / (sum(B) / len(B)), rel=REL)
    assert c.confidence == confidence


def test_compare_agrees_with_scipy_and_statsmodels() -> None:
    c = compare(A, B, 0.9)
    scipy_result = scipy.stats.ttest_ind(A, B, equal_var=False)
    assert c.p_value == pytest.approx(scipy_result.pvalue, rel=REL)
    assert c.t_statistic == pytest.approx(scipy_result.statistic, rel=REL)
    low, high = CompareMeans(DescrStatsW(np.array(A)), DescrStatsW(np.array(B))).tconfint_diff(
        alpha=0.1, usevar="unequal"
    )
    assert (c.ci_low, c.ci_high) == (pytest.approx(low, rel=REL), pytest.approx(high, rel=REL))


def test_compare_is_antisymmetric() -> None:
    ab, ba = compare(A, B), compare(B, A)
    assert ab.difference == -ba.difference
    assert ab.t_statistic == pytest.approx(-ba.t_statistic, rel=REL)
    assert ab.hedges_g == pytest.approx(-ba.hedges_g, rel=REL)
    assert ab.p_value == pytest.approx(ba.p_value, rel=REL)
    assert (ab.ci_low, ab.ci_high) == (pytest.approx(-ba.ci_high, rel=REL), pytest.approx(-ba.ci_low, rel=REL))


# hypothesis: floats in a sane range, sets whose spread is not lost in rounding
values = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)
run_set = st.lists(values, min_size=2, max_size=30)


def spread(x: Sequence[float]) -> bool:
    array = np.asarray(x)
    return float(np.std(array)) > 1e-6 * (1.0 + float(np.abs(array).max()))


@settings(max_examples=300, deadline=None)
@given(run_set, run_set, st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_compare_matches_reference_on_random_sets(a: list[float], b: list[float], confidence: float) -> None:
    assume(spread(a) and spread(b))
    c = compare(a, b, confidence)
    # difference-like figures may cancel to ~0: allow rounding of the data's magnitude there, nothing more
    scale = 1e-12 * (1.0 + max(np.abs(a).max(), np.abs(b).max()))
    assert_matches(c, reference_welch(a, b, confidence), abs_tol=scale)
    assert c.p_value == pytest.approx(scipy.stats.ttest_ind(a, b, equal_var=False).pvalue, rel=REL, abs=1e-12)
    low, high = CompareMeans(DescrStatsW(np.array(a)), DescrStatsW(np.array(b))).tconfint_diff(
        alpha=1 - confidence, usevar="unequal"
    )
    assert c.ci_low == pytest.approx(low, rel=REL, abs=scale)
    assert c.ci_high == pytest.approx(high, rel=REL, abs=scale)
    assert c.note is None
    assert_all_finite_or_none(c)


@settings(max_examples=200, deadline=None)
@given(run_set, st.sampled_from([0.8, 0.95, 0.99]))
def test_summary_matches_reference_on_random_sets(x: list[float], confidence: float) -> None:
    assume(spread(x))
    s = summarize(x, confidence)
    assert_matches(s, reference_summary(x, confidence), abs_tol=1e-12 * (1.0 + np.abs(x).max()))
    assert s.n == len(x)
    assert_all_finite_or_none(s)


@pytest.mark.parametrize(
    ("a", "b"),
    [([], []), ([], [1.0, 2.0]), ([1.0], [1.0, 2.0]), ([1.0, 2.0], [3.0])],
)
def test_compare_with_too_few_runs_gives_means_but_no_test(a: list[float], b: list[float]) -> None:
    c = compare(a, b)
    assert (c.t_statistic, c.df, c.p_value, c.ci_low, c.ci_high, c.hedges_g, c.p_holm) == (None,) * 7
    assert c.note == "n/a (needs at least 2 runs)"
    assert c.mean_a == (sum(a) / len(a) if a else None)
    assert c.mean_b == (sum(b) / len(b) if b else None)
    assert c.difference == (c.mean_a - c.mean_b if a and b else None)
    assert_all_finite_or_none(c)


def test_compare_identical_sets_without_variance() -> None:
    c = compare([0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1])
    assert (c.mean_a, c.mean_b, c.difference, c.relative_difference) == (0.1, 0.1, 0.0, 0.0)
    assert (c.t_statistic, c.df, c.p_value, c.ci_low, c.ci_high, c.hedges_g) == (None,) * 6
    assert c.note == "n/a (no variance in either set)"
    assert_all_finite_or_none(c)


def test_compare_sets_without_variance_but_different_means() -> None:
    # scipy's moments of these are not exactly constant and it would report t ≈ -4.5e15: never pass that on
    c = compare([0.1, 0.1, 0.1], [0.2, 0.2, 0.2])
    assert c.difference == pytest.approx(-0.1, rel=REL)
    assert (c.t_statistic, c.df, c.p_value, c.ci_low, c.ci_high, c.hedges_g) == (None,) * 6
    assert c.note == "n/a (no variance in either set; means differ by -0.1)"
    assert_all_finite_or_none(c)


def test_compare_with_one_set_without_variance_is_a_welch_test() -> None:
    a, b = [5.0, 5.0, 5.0, 5.0], [4.0, 4.5, 3.5, 4.2]
    c = compare(a, b)
    expected = reference_welch(a, b, 0.95)
    assert_matches(c, expected)
    # b alone carries the variance: df = n_b - 1
    assert c.df == pytest.approx(3.0, rel=REL)
    assert c.note is None
    assert_all_finite_or_none(c)


def test_compare_with_zero_baseline_mean_has_no_relative_difference() -> None:
    c = compare([1.0, 2.0, 3.0], [-1.0, 0.0, 1.0])
    assert c.difference == 2.0
    assert c.relative_difference is None
    assert c.p_value is not None
    assert_all_finite_or_none(c)


# --- values that differ only by float rounding -----------------------------------------------------------------


def ulps_from(x: float, steps: Sequence[int]) -> list[float]:
    """``x`` moved by each number of units in the last place: what summing the same joules in another order gives."""
    out = []
    for k in steps:
        y = x
        for _ in range(abs(k)):
            y = float(np.nextafter(y, math.inf if k > 0 else -math.inf))
        out.append(y)
    return out


KWH = 45.0 * 60 / 3.6e6  # one minute at 45 W: 7.5e-4 kWh, one ulp ~1e-19 kWh


def test_summary_of_values_equal_up_to_rounding_has_no_spread() -> None:
    x = ulps_from(KWH, [0, 1, 3, -2])
    assert np.std(x, ddof=1) > 0  # numpy sees a spread: the rounding of the sums
    s = summarize(x)
    assert (s.std, s.sem) == (0.0, 0.0)
    assert s.ci_low == s.ci_high == s.mean
    assert s.mean == pytest.approx(KWH, rel=1e-15)
    assert s.total == pytest.approx(4 * KWH, rel=1e-15)
    assert s.note is None


def test_sets_equal_up_to_rounding_are_not_a_finding() -> None:
    # the same energy in every run, its joules summed in different orders: the runs differ in their last bits
    a, b = ulps_from(KWH, [3, 4, 3, 4]), ulps_from(KWH, [-3, -4, -3, -4])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's "precision loss": it knows, and tests anyway
        scipy_result = scipy.stats.ttest_ind(a, b, equal_var=False)
    assert abs(scipy_result.statistic) > 10 and scipy_result.pvalue < 0.001  # 7 ulps read as a finding
    c = compare(a, b)
    assert np.mean(a) - np.mean(b) != 0.0
    assert (c.difference, c.relative_difference) == (0.0, 0.0)
    assert (c.t_statistic, c.df, c.p_value, c.ci_low, c.ci_high, c.hedges_g, c.p_holm) == (None,) * 7
    assert c.note == "n/a (no variance in either set)"
    assert_all_finite_or_none(c)


def test_identical_sets_have_a_difference_of_exactly_zero() -> None:
    a, b = ulps_from(KWH, [0, 0, 0]), ulps_from(KWH, [0, 2, 2])
    assert KWH - np.mean(b) != 0.0  # about -1e-19 kWh: what an appendix printed as A-B
    c = compare(a, b)
    assert c.difference == 0.0 and c.relative_difference == 0.0
    assert c.p_value is None and c.note == "n/a (no variance in either set)"
    same = compare(a, a)
    assert (same.difference, same.t_statistic, same.note) == (0.0, None, "n/a (no variance in either set)")


def test_rounding_apart_sets_with_different_means_say_by_how_much() -> None:
    c = compare(ulps_from(0.1, [0, 1, 2]), ulps_from(0.2, [0, -1, 1]))
    assert c.difference == pytest.approx(-0.1, rel=1e-14)
    assert c.t_statistic is None and c.p_value is None
    assert c.note == "n/a (no variance in either set; means differ by -0.1)"


def test_a_spread_above_the_precision_is_tested() -> None:
    # 1e-10 relative is far above rounding: a (tiny) spread that scipy and this module both test
    a = [1.0, 1.0 + 1e-10, 1.0 + 2e-10]
    b = [1.0 + 5e-10, 1.0 + 6e-10, 1.0 + 8e-10]
    assert 1e-10 >= 50 * RELATIVE_PRECISION
    c = compare(a, b)
    expected = scipy.stats.ttest_ind(a, b, equal_var=False)
    assert c.t_statistic == pytest.approx(expected.statistic, rel=1e-6)
    assert c.p_value == pytest.approx(expected.pvalue, rel=1e-6)
    assert summarize(a).std == pytest.approx(float(np.std(a, ddof=1)), rel=1e-6)


def test_means_within_the_precision_differ_by_zero_but_the_test_stands() -> None:
    a, b = [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]
    assert sum(a) / 3 != sum(b) / 3  # one ulp apart
    c = compare(a, b)
    assert (c.difference, c.relative_difference) == (0.0, 0.0)
    assert c.p_value == pytest.approx(scipy.stats.ttest_ind(a, b, equal_var=False).pvalue, rel=REL)
    assert c.note is None


def test_one_set_constant_up_to_rounding_against_a_varying_one_is_a_welch_test() -> None:
    a, b = ulps_from(5.0, [0, 1, -1, 0]), [4.0, 4.5, 3.5, 4.2]
    c = compare(a, b)
    assert_matches(c, reference_welch(a, b, 0.95))
    assert c.df == pytest.approx(3.0, rel=REL)


# --- Holm and compare_all --------------------------------------------------------------------------------------


def test_holm_matches_hand_written_step_down_on_literal_p_values() -> None:
    p = [0.01, 0.04, 0.03, 0.005, 0.5]
    # sorted: 0.005·5 = 0.025, 0.01·4 = 0.04, 0.03·3 = 0.09, 0.04·2 = 0.08 -> 0.09 (monotone), 0.5·1 = 0.5
    assert holm_adjust(p) == pytest.approx([0.04, 0.09, 0.09, 0.025, 0.5], rel=REL)
    assert holm_adjust(p) == pytest.approx(reference_holm(p), rel=REL)
    assert holm_adjust([0.3, 0.6]) == pytest.approx([0.6, 0.6], rel=REL)
    assert holm_adjust([0.6, 0.9]) == pytest.approx([1.0, 1.0], rel=REL)
    assert holm_adjust([]) == ()


@settings(max_examples=30)  # statsmodels' multipletests runs gc.collect() on every call: ~0.1 s each here
@given(st.lists(st.floats(min_value=0.0, max_value=1.0, allow_nan=False), min_size=1, max_size=20))
def test_holm_matches_hand_written_step_down_on_random_p_values(p: list[float]) -> None:
    assert holm_adjust(p) == pytest.approx(reference_holm(p), rel=REL, abs=1e-300)


def test_compare_all_adjusts_only_testable_quantities_present_in_both() -> None:
    a = {
        "energy_kwh": A,
        "co2_kg": [1.0, 1.2, 0.9, 1.1],
        "gpu_hours": [2.0],  # one run: no test
        "cpu_hours": [5.0, 5.5, 6.0],  # not in b
        "idle": [0.5, 0.5],  # no variance in either set
    }
    b = {"energy_kwh": B, "co2_kg": [1.3, 1.4, 1.25, 1.5], "gpu_hours": [1.0, 1.5], "idle": [0.5, 0.5]}
    result = compare_all(a, b, confidence=0.9)
    assert list(result) == ["energy_kwh", "co2_kg", "gpu_hours", "idle"]
    for name, comparison in result.items():
        assert dataclasses.replace(comparison, p_holm=None) == compare(a[name], b[name], 0.9)
        assert_all_finite_or_none(comparison)
    raw = [result["energy_kwh"].p_value, result["co2_kg"].p_value]
    expected = reference_holm(raw)  # m = 2: the untestable quantities do not count
    assert result["energy_kwh"].p_holm == pytest.approx(expected[0], rel=REL)
    assert result["co2_kg"].p_holm == pytest.approx(expected[1], rel=REL)
    assert result["energy_kwh"].p_holm >= result["energy_kwh"].p_value
    assert result["gpu_hours"].p_holm is None
    assert result["idle"].p_holm is None


def test_compare_all_of_nothing_is_empty() -> None:
    assert compare_all({}, {"energy_kwh": [1.0, 2.0]}) == {}


def test_repeated_tests_finds_one_positive_multiple_in_both_sets() -> None:
    a = {
        "energy": [1.0, 2.0, 4.0],
        "energy_pue": [1.5, 3.0, 6.0],
        "co2": [0.45, 0.9, 1.8],
        "hours": [1.0, 1.0, 2.0],
        "negated": [-1.0, -2.0, -4.0],
    }
    b = {
        "energy": [3.0, 5.0],
        "energy_pue": [4.5, 7.5],
        "co2": [0.9, 1.5],  # 0.3 · energy in B but 0.45 · energy in A: another hypothesis
        "hours": [1.0, 2.0],
        "negated": [-3.0, -5.0],
    }
    # co2 is 0.3 · energy_pue in both sets
    assert repeated_tests(a, b) == {"energy_pue": "energy"}
    b["co2"] = [1.35, 2.25]
    assert repeated_tests(a, b) == {"energy_pue": "energy", "co2": "energy"}
    # a quantity in one set only is not compared, so it repeats nothing
    assert repeated_tests({**a, "gpu": [2.0, 4.0, 8.0]}, b) == {"energy_pue": "energy", "co2": "energy"}


def test_repeated_tests_tolerates_rounding_but_not_a_different_value() -> None:
    a = {"x": [1.0, 3.0, 7.0], "y": [0.1 * 1.0, 0.1 * 3.0 * (1 + 1e-13), 0.7]}
    b = {"x": [2.0, 5.0], "y": [0.2, 0.5]}
    assert repeated_tests(a, b) == {"y": "x"}
    a["y"][2] = 0.7 * (1 + 1e-6)
    assert repeated_tests(a, b) == {}


def test_repeated_tests_needs_missing_values_in_the_same_runs_and_no_zero_divisor() -> None:
    a = {"x": [1.0, None, 2.0], "y": [2.0, None, 4.0], "z": [2.0, 3.0, 4.0]}
    b = {"x": [3.0, 4.0], "y": [6.0, 8.0], "z": [6.0, 8.0]}
    assert repeated_tests(a, b) == {"y": "x"}
    assert repeated_tests({"zero": [0.0, 0.0], "w": [1.0, 2.0]}, {"zero": [0.0, 0.0], "w": [3.0, 4.0]}) == {}


def test_compare_all_adjusts_over_distinct_hypotheses_and_repeats_get_their_adjusted_p() -> None:
    energy_a, energy_b = A, B
    a = {
        "energy": energy_a,
        "energy_pue": [1.4 * x for x in energy_a],
        "co2": [0.42 * x for x in energy_a],
        "hours": [1.0, 1.2, 0.9, 1.1, 1.0, 1.3],
        "idle": [0.5, 0.5],
    }
    b = {
        "energy": energy_b,
        "energy_pue": [1.4 * x for x in energy_b],
        "co2": [0.42 * x for x in energy_b],
        "hours": [1.3, 1.4, 1.25, 1.5, 1.2],
        "idle": [0.5, 0.5],
    }
    repeats = {"energy_pue": "energy", "co2": "energy_pue"}  # a chain: co2 repeats energy's test too
    result = compare_all(a, b, same_test_as=repeats)
    assert holm_family(result) == ("energy", "hours")
    family_p = [scipy.stats.ttest_ind(a[k], b[k], equal_var=False).pvalue for k in ("energy", "hours")]
    expected = multipletests(family_p, method="holm")[1]
    assert result["energy"].p_holm == pytest.approx(expected[0], rel=REL)
    assert result["hours"].p_holm == pytest.approx(expected[1], rel=REL)
    assert (result["energy_pue"].same_test_as, result["co2"].same_test_as) == ("energy", "energy")
    assert result["energy_pue"].p_holm == result["co2"].p_holm == result["energy"].p_holm
    assert result["energy"].same_test_as is None and result["idle"].p_holm is None
    # the repeats keep their own figures: the energy's, scaled
    assert result["co2"].difference == pytest.approx(0.42 * result["energy"].difference, rel=REL)
    assert result["co2"].p_value == pytest.approx(result["energy"].p_value, rel=1e-9)
    # four tests would have made each adjusted p larger
    assert result["energy"].p_holm < multipletests([*family_p, family_p[0], family_p[0]], method="holm")[1][0]


# --- significant figures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "digits", "expected"),
    [
        (0.0, 3, 0.0),
        (123456.0, 3, 123000.0),
        (-123456.0, 3, -123000.0),
        (0.00123456, 3, 0.00123),
        (-0.00123456, 2, -0.0012),
        (9.996, 3, 10.0),
        (1.5, 1, 2.0),
        (42.0, 5, 42.0),
    ],
)
def test_significant_figures(x: float, digits: int, expected: float) -> None:
    assert significant_figures(x, digits) == pytest.approx(expected, rel=1e-12)


def test_significant_figures_default_is_three_and_digits_must_be_positive() -> None:
    assert significant_figures(math.pi) == 3.14
    with pytest.raises(ValueError):
        significant_figures(1.0, 0)


@given(st.floats(min_value=-1e12, max_value=1e12, allow_nan=False).filter(lambda x: abs(x) > 1e-12))
def test_significant_figures_stays_within_half_a_unit_of_the_last_digit(x: float) -> None:
    rounded = significant_figures(x, 3)
    unit = 10 ** (math.floor(math.log10(abs(x))) - 2)
    assert abs(rounded - x) <= 0.5 * unit * (1 + 1e-9)
