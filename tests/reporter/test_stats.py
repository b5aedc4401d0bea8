"""Appendix statistics against independent computations written out here from first principles.

The module under test calls scipy and statsmodels; these tests recompute every figure from the textbook
formulas with numpy (Welch's t and Welch–Satterthwaite df, Hedges' g by hand) and take only the t
distribution's sf/ppf from scipy, then cross-check against the libraries the module promises to match.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import pytest
import scipy.stats
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from reporter.stats import Comparison, Summary, compare, compare_all, holm_adjust, significant_figures, summarize

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
