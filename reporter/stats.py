"""Pure statistics for the appendices: per-set summaries and the comparison of two sets of runs.

An appendix reports each quantity (energy, CO2eq, hours) over a set of runs and, for two sets, the effect of
one against the other with a Welch t-test, a confidence interval of the difference and Hedges' g; across
quantities the p-values are Holm-adjusted, because a paper that tests five quantities at once should not read
five unadjusted p-values as five findings. The family is the distinct hypotheses only: a quantity that is, run by
run, one fixed multiple of another (CO2eq of energy at a fixed intensity and PUE) gives the same t and p, so it
is the same test and counting it again would only inflate every adjusted p-value (:func:`repeated_tests`).

Differences at the level of float rounding are not data: a set whose relative spread is within
:data:`RELATIVE_PRECISION` has no variance, and two means that close are equal, so the same joules summed in
another order are never read as an effect.

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

RELATIVE_PRECISION = 1e-12
"""Relative differences at or below this are float rounding: a set whose values lie within it of each other
(``max - min <= RELATIVE_PRECISION * max|x|``) has no variance, and means that close differ by exactly 0."""

SAME_TEST_RTOL = 1e-9
"""How closely the run-by-run ratios of two quantities must agree for one to count as a multiple of the other."""


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
    :func:`compare_all`, which adjusts across quantities; ``same_test_as`` names the earlier quantity whose test
    this one repeats (it is a fixed multiple of it), in which case it did not join the adjustment and carries
    that quantity's ``p_holm``.

    The test's fields are None, with ``note`` saying why, when a set has fewer than 2 runs or neither set
    varies (then the t statistic is a division by zero). A difference within :data:`RELATIVE_PRECISION` of the
    means is exactly 0.0.
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
    same_test_as: str | None = None


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
    """Whether the values are the same up to float rounding (:data:`RELATIVE_PRECISION`).

    Decided on the range, not on ``np.var``: the variance of equal values need not be 0 in floats, and values
    that differ in their last bits would otherwise be tested as if that rounding were the runs' spread.
    """
    if len(array) == 0:
        return False
    low, high = float(array.min()), float(array.max())
    return high - low <= RELATIVE_PRECISION * max(abs(low), abs(high))


def _mean(array: np.ndarray) -> float | None:
    """The mean, exact for equal values (``np.mean([0.1] * 3)`` is one ulp off 0.1)."""
    if len(array) == 0:
        return None
    return float(array[0]) if array.min() == array.max() else _finite(np.mean(array))


def _difference(mean_a: float | None, mean_b: float | None) -> float | None:
    """``mean_a - mean_b``, exactly 0.0 when the two agree to within :data:`RELATIVE_PRECISION`."""
    if mean_a is None or mean_b is None:
        return None
    difference = mean_a - mean_b
    if abs(difference) <= RELATIVE_PRECISION * max(abs(mean_a), abs(mean_b)):
        return 0.0
    return _finite(difference)


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
    ``tconfint_diff(usevar="unequal")``, so the numbers a reader checks with either library match. Hedges' g
    is computed from the unrounded difference, so it keeps the sign and size of t even where ``difference``
    reads 0.0.
    """
    _check_confidence(confidence)
    xa, xb = _as_array(a), _as_array(b)
    n_a, n_b = len(xa), len(xb)
    mean_a, mean_b = _mean(xa), _mean(xb)
    difference = _difference(mean_a, mean_b)
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
        # A set without variance (equal, or equal up to rounding) has a variance of ~1e-33 rather than 0 in
        # scipy's moments, and scipy warns about it; against the other set's variance that is nothing, so the
        # test stands.
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        test = scipy_stats.ttest_ind(xa, xb, equal_var=False)
        ci_low, ci_high = CompareMeans(DescrStatsW(xa), DescrStatsW(xb)).tconfint_diff(
            alpha=1.0 - confidence, usevar="unequal"
        )

    var_a = 0.0 if constant_a else float(np.var(xa, ddof=1))
    var_b = 0.0 if constant_b else float(np.var(xb, ddof=1))
    pooled_sd = math.sqrt(((n_a - 1) * var_a + (n_b - 1) * var_b) / (n_a + n_b - 2))
    correction = 1.0 - 3.0 / (4.0 * (n_a + n_b) - 9.0)
    hedges_g = None
    if mean_a is not None and mean_b is not None and pooled_sd > 0:
        hedges_g = _finite(correction * (mean_a - mean_b) / pooled_sd)

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


def _common_ratio(pairs: Sequence[tuple[float | None, float | None]], rtol: float) -> bool:
    """Whether ``x = c · y`` with one ``c > 0`` for every pair ``(x, y)``, missing values missing in both."""
    ratios = []
    for x, y in pairs:
        if x is None or y is None:
            if x is not None or y is not None:
                return False
            continue
        if y == 0 or not math.isfinite(x) or not math.isfinite(y):
            return False
        ratios.append(x / y)
    if not ratios or min(ratios) <= 0:
        return False
    return max(ratios) - min(ratios) <= rtol * max(ratios)


def repeated_tests(
    a: Mapping[str, Sequence[float | None]],
    b: Mapping[str, Sequence[float | None]],
    rtol: float = SAME_TEST_RTOL,
) -> dict[str, str]:
    """The quantities whose test repeats an earlier one's: quantity -> the earlier quantity (in ``a``'s order).

    ``a`` and ``b`` hold each quantity's values run by run, every quantity listing the same runs in the same
    order (None where a run has no value). A quantity whose values are one positive multiple ``c`` of an
    earlier quantity's in every run of both sets (the same ``c`` in A and in B, to ``rtol``) has the same t,
    df, p and Hedges' g: it is the same hypothesis, whatever its unit. Each is mapped to the first quantity of
    its kind, so the quantities that map to nothing are the distinct hypotheses. Quantities in only one set are
    left out.
    """
    first: list[str] = []
    repeats: dict[str, str] = {}
    for name in (n for n in a if n in b):
        for earlier in first:
            pairs = [*zip(a[name], a[earlier], strict=True), *zip(b[name], b[earlier], strict=True)]
            if _common_ratio(pairs, rtol):
                repeats[name] = earlier
                break
        else:
            first.append(name)
    return repeats


def _first_of(name: str, same_test_as: Mapping[str, str]) -> str:
    """The quantity at the end of ``name``'s chain of repeats (a repeat of a repeat is a repeat of the first)."""
    seen = {name}
    while (name := same_test_as.get(name, name)) not in seen:
        seen.add(name)
    return name


def compare_all(
    a: Mapping[str, Sequence[float]],
    b: Mapping[str, Sequence[float]],
    confidence: float = 0.95,
    same_test_as: Mapping[str, str] | None = None,
) -> dict[str, Comparison]:
    """:func:`compare` for each quantity in both ``a`` and ``b`` (in ``a``'s order), Holm-adjusted across them.

    Only quantities with a p-value join the adjustment, so one that could not be tested neither gets a
    ``p_holm`` nor makes the others' larger. A quantity in only one of the sets has nothing to compare and
    is left out. ``same_test_as`` maps a quantity to the one whose test it repeats (see
    :func:`repeated_tests`): it does not join the adjustment either, and takes that quantity's ``p_holm``, so
    each hypothesis counts once and reads one adjusted p-value wherever it appears.
    """
    comparisons = {name: compare(a[name], b[name], confidence) for name in a if name in b}
    repeats = {name: _first_of(name, same_test_as or {}) for name in same_test_as or {} if name in comparisons}
    repeats = {name: of for name, of in repeats.items() if of in comparisons and of != name}
    family = holm_family(comparisons, repeats)
    adjusted = holm_adjust([comparisons[name].p_value for name in family])  # type: ignore[misc]
    for name, p_holm in zip(family, adjusted, strict=True):
        comparisons[name] = replace(comparisons[name], p_holm=p_holm)
    for name, of in repeats.items():
        comparisons[name] = replace(comparisons[name], same_test_as=of, p_holm=comparisons[of].p_holm)
    return comparisons


def holm_family(
    comparisons: Mapping[str, Comparison], same_test_as: Mapping[str, str] | None = None
) -> tuple[str, ...]:
    """The quantities Holm adjusts over, in order: those with a p-value that repeat no other's test.

    Its length is the family size m that an appendix must state next to the adjusted p-values. The repeats
    are ``same_test_as`` when given, else read from the comparisons' own ``same_test_as``.
    """
    if same_test_as is None:
        same_test_as = {name: c.same_test_as for name, c in comparisons.items() if c.same_test_as is not None}
    return tuple(name for name, c in comparisons.items() if c.p_value is not None and name not in same_test_as)


def significant_figures(x: float, digits: int = 3) -> float:
    """``x`` rounded to ``digits`` significant figures: a table of energies should not print 17 of them.

    0 stays 0 and the sign is kept; NaN and inf come back unchanged (this module never produces them).
    """
    if digits < 1:
        raise ValueError(f"digits must be at least 1, not {digits}")
    if x == 0 or not math.isfinite(x):
        return float(x)
    return round(float(x), digits - 1 - math.floor(math.log10(abs(x))))
