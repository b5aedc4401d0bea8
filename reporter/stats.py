"""Pure statistics for the appendices: per-set summaries and the comparison of two sets of runs.

An appendix reports each quantity (energy, CO2eq, hours) over a set of runs and, for two sets, the effect of
one against the other with a Welch t-test, a confidence interval of the difference and Hedges' g; across
quantities the p-values are Holm-adjusted, because a paper that tests five quantities at once should not read
five unadjusted p-values as five findings.

The renderer prints every number it gets, so nothing here ever returns NaN or inf: a figure that is not
defined (too few runs, no variance) is ``None`` and the result's ``note`` says why.

scipy and statsmodels are imported inside the functions that use them: together they take about a second to
import, which every ``impact-report runs`` (which needs no statistics) would otherwise pay.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

NEEDS_TWO_RUNS = "n/a (needs at least 2 runs)"
NO_RUNS = "n/a (no runs)"
NO_VARIANCE = "n/a (no variance in either set)"


@dataclass(frozen=True)
class Summary:
    """One quantity over a set of runs: its mean with a t-distribution confidence interval, and its sum.

    ``std`` and ``sem`` use ddof=1 (the runs are a sample of the runs one could make); the interval is
    ``mean ± t_{(1+confidence)/2, n-1} · sem``. ``total`` is the sum over the runs (a paper reports what all of
    its runs cost, not only their mean) and ``cumulative`` the running sum in run order, for figures.

    With 0 runs only ``n`` and ``total`` (0) are set; with 1 run the mean and total are, but nothing that
    needs a spread, and ``note`` says so. Runs that all read the same give std = sem = 0 and an interval
    collapsed onto the mean: that is the right answer for a sample without spread, not a failure.
    """

    n: int
    mean: float | None
    std: float | None
    sem: float | None
    ci_low: float | None
    ci_high: float | None
    total: float
    cumulative: tuple[float, ...]
    confidence: float
    note: str | None = None


@dataclass(frozen=True)
class Comparison:
    """The effect of set ``a`` (treatment) against set ``b`` (baseline) on one quantity.

    ``difference`` is ``mean_a - mean_b`` and ``relative_difference`` that over ``mean_b`` (None when
    ``mean_b`` is 0). The test is Welch's t-test, which does not assume equal variances: ``t_statistic``,
    ``df`` (Welch–Satterthwaite) and the two-sided ``p_value``; ``ci_low``/``ci_high`` bound the difference
    at the given confidence with the same degrees of freedom. ``hedges_g`` is the difference over the pooled
    (ddof=1) standard deviation times ``J = 1 - 3 / (4 (n_a + n_b) - 9)``, which removes the small-sample bias
    of Cohen's d: with a handful of runs per set that bias is not small. ``p_holm`` is set only by
    :func:`compare_all`, which adjusts across quantities.

    The test's fields are None, with ``note`` saying why, when a set has fewer than 2 runs or neither set
    varies (then the t statistic is a division by zero).
    """

    n_a: int
    n_b: int
    mean_a: float | None
    mean_b: float | None
    difference: float | None
    relative_difference: float | None
    confidence: float
    # the test's figures: None (with a note) when it cannot be made
    t_statistic: float | None = None
    df: float | None = None
    p_value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    hedges_g: float | None = None
    p_holm: float | None = None
    note: str | None = None


def _finite(x: float | np.floating | None) -> float | None:
    """``x`` as a float, or None when it is missing, NaN or infinite: the renderer must never print those."""
    if x is None:
        return None
    value = float(x)
    return value if math.isfinite(value) else None


def _as_array(values: Sequence[float]) -> np.ndarray:
    """The runs' values as a float array; NaN or inf among them is an error of the caller's, not a statistic."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise ValueError("values must be finite numbers (a run without a figure should be left out, not NaN)")
    return array


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, not {confidence!r}")


def _constant(array: np.ndarray) -> bool:
    """Whether all values are the same. Compared exactly: ``np.var`` of equal values need not be 0 in floats."""
    return len(array) > 0 and bool(array.min() == array.max())


def _mean(array: np.ndarray) -> float | None:
    """The mean, exact for a constant set (``np.mean([0.1] * 3)`` is one ulp off 0.1)."""
    if len(array) == 0:
        return None
    return float(array[0]) if _constant(array) else _finite(np.mean(array))


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, spread, t confidence interval, total and running total of one quantity over a set of runs."""
    _check_confidence(confidence)
    array = _as_array(values)
    n = len(array)
    cumulative = tuple(float(x) for x in np.cumsum(array))
    total = cumulative[-1] if n else 0.0
    if n == 0:
        return Summary(0, None, None, None, None, None, 0.0, (), confidence, NO_RUNS)
    mean = _mean(array)
    if n == 1:
        return Summary(1, mean, None, None, None, None, total, cumulative, confidence, NEEDS_TWO_RUNS)
    std = 0.0 if _constant(array) else float(np.std(array, ddof=1))
    sem = std / math.sqrt(n)
    from scipy import stats as scipy_stats  # imported here: see the module docstring

    half_width = float(scipy_stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * sem
    ci_low = ci_high = None
    if mean is not None:
        ci_low, ci_high = _finite(mean - half_width), _finite(mean + half_width)
    return Summary(n, mean, _finite(std), _finite(sem), ci_low, ci_high, total, cumulative, confidence)


def compare(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Comparison:
    """The treatment effect of the runs in ``a`` against those in ``b``: Welch's t-test, CI and Hedges' g.

    The p-value is scipy's ``ttest_ind(a, b, equal_var=False)`` and the interval statsmodels'
    ``tconfint_diff(usevar="unequal")``, so the numbers a reader checks with either library match.
    """
    _check_confidence(confidence)
    xa, xb = _as_array(a), _as_array(b)
    n_a, n_b = len(xa), len(xb)
    mean_a, mean_b = _mean(xa), _mean(xb)
    difference = _finite(mean_a - mean_b) if mean_a is not None and mean_b is not None else None
    relative = _finite(difference / mean_b) if difference is not None and mean_b else None
    untested = Comparison(n_a, n_b, mean_a, mean_b, difference, relative, confidence)
    if n_a < 2 or n_b < 2:
        return replace(untested, note=NEEDS_TWO_RUNS)
    constant_a, constant_b = _constant(xa), _constant(xb)
    if constant_a and constant_b:
        if difference:
            return replace(untested, note=f"n/a (no variance in either set; means differ by {difference:.3g})")
        return replace(untested, note=NO_VARIANCE)

    from scipy import stats as scipy_stats  # imported here: see the module docstring
    from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

    with warnings.catch_warnings():
        # A constant set's variance comes out as ~1e-33 rather than 0 and scipy warns about it; against the
        # other set's variance that is nothing, so the test stands.
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        test = scipy_stats.ttest_ind(xa, xb, equal_var=False)
        ci_low, ci_high = CompareMeans(DescrStatsW(xa), DescrStatsW(xb)).tconfint_diff(
            alpha=1.0 - confidence, usevar="unequal"
        )

    var_a = 0.0 if constant_a else float(np.var(xa, ddof=1))
    var_b = 0.0 if constant_b else float(np.var(xb, ddof=1))
    pooled_sd = math.sqrt(((n_a - 1) * var_a + (n_b - 1) * var_b) / (n_a + n_b - 2))
    correction = 1.0 - 3.0 / (4.0 * (n_a + n_b) - 9.0)
    hedges_g = _finite(correction * difference / pooled_sd) if difference is not None and pooled_sd > 0 else None

    return replace(
        untested,
        t_statistic=_finite(test.statistic),
        df=_finite(test.df),
        p_value=_finite(test.pvalue),
        ci_low=_finite(ci_low),
        ci_high=_finite(ci_high),
        hedges_g=hedges_g,
    )


def holm_adjust(p_values: Sequence[float]) -> tuple[float, ...]:
    """Holm step-down adjusted p-values, in the order given (statsmodels' ``multipletests(method="holm")``).

    Holm controls the family-wise error rate like Bonferroni but rejects at least as much: the smallest
    p-value is multiplied by m, the next by m - 1, and so on, each kept at least as large as the one before.
    """
    if len(p_values) == 0:
        return ()
    from statsmodels.stats.multitest import multipletests  # imported here: see the module docstring

    _, adjusted, _, _ = multipletests(np.asarray(p_values, dtype=np.float64), method="holm")
    return tuple(float(p) for p in adjusted)


def compare_all(
    a: Mapping[str, Sequence[float]], b: Mapping[str, Sequence[float]], confidence: float = 0.95
) -> dict[str, Comparison]:
    """:func:`compare` for each quantity in both ``a`` and ``b`` (in ``a``'s order), Holm-adjusted across them.

    Only quantities with a p-value join the adjustment, so one that could not be tested neither gets a
    ``p_holm`` nor makes the others' larger. A quantity in only one of the sets has nothing to compare and
    is left out.
    """
    comparisons = {name: compare(a[name], b[name], confidence) for name in a if name in b}
    tested = [name for name, comparison in comparisons.items() if comparison.p_value is not None]
    adjusted = holm_adjust([comparisons[name].p_value for name in tested])  # type: ignore[misc]
    for name, p_holm in zip(tested, adjusted, strict=True):
        comparisons[name] = replace(comparisons[name], p_holm=p_holm)
    return comparisons


def significant_figures(x: float, digits: int = 3) -> float:
    """``x`` rounded to ``digits`` significant figures: a table of energies should not print 17 of them.

    0 stays 0 and the sign is kept; NaN and inf come back unchanged (this module never produces them).
    """
    if digits < 1:
        raise ValueError(f"digits must be at least 1, not {digits}")
    if x == 0 or not math.isfinite(x):
        return float(x)
    return round(float(x), digits - 1 - math.floor(math.log10(abs(x))))
