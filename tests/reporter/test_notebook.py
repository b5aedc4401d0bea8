"""The reporter from Python (impact_reporter.notebook) against a fake Prometheus API: the DataFrame has the figures
``impact-report runs --format json`` prints for the same runs, and energy per unit of work is summarised and
compared with the numbers scipy gives for the ground truth the test set.

Each run: 10 W on the CPU for 60 s (600 J), scraped every 5 s, and a samples counter growing at its own rate.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest
from scipy import stats

from impact_reporter.appendix import comparison_report, set_report
from impact_reporter.carbon import resolve_intensity
from impact_reporter.notebook import runs
from impact_reporter.prometheus import PrometheusClient
from impact_reporter.runs import PrometheusRuns
from tests.reporter.fake_prometheus import FakePrometheus, FakeSeries
from tests.reporter.test_stores import DAY, JOULES, SECONDS, report, run_series

WINDOW = {"start": str(DAY), "end": str(DAY + 86399)}


def worked(run_id: str, start: float, samples: int, set_name: str = "a", seed: str = "0") -> list[FakeSeries]:
    """A run's series with ``samples`` samples reported evenly over its minute, labelled ``seed``."""
    series = run_series(run_id, start)
    info = series[0]
    info.labels |= {"set": set_name, "seed": seed}
    energy = series[4]
    work = [(t, float(math.floor(samples * min(t - start, SECONDS) / SECONDS))) for t, _ in energy.samples]
    identity = {name: energy.labels[name] for name in ("run_id", "user", "instance", "job")}
    return [*series, FakeSeries({"__name__": "impact_run_work_units_total", **identity, "unit": "samples"}, work)]


def test_the_dataframe_has_the_figures_of_impact_report_runs_json() -> None:
    series = worked("r1", DAY + 3600, 300, seed="1") + worked("r2", DAY + 7200, 1200, seed="2")
    with FakePrometheus(series) as server:
        code, listed, stderr = report(server)
        assert code == 0, stderr
        table = runs(prometheus=server.url, carbon_intensity=100, **WINDOW)
    expected = pd.json_normalize(listed["runs"], sep=".")
    assert list(table.columns) == list(expected.columns)
    assert table.to_dict("records") == expected.to_dict("records")
    assert table["labels.seed"].tolist() == ["1", "2"]  # one column per label
    assert table["total_joules"].tolist() == [JOULES, JOULES]
    assert table["work_units.samples"].tolist() == [300.0, 1200.0]
    assert table["energy_per_unit.joules_per_sample"].tolist() == [JOULES / 300, JOULES / 1200]


def test_a_bad_argument_raises_instead_of_exiting() -> None:
    with pytest.raises(ValueError, match="unknown region 'Atlantis'"):
        runs(prometheus="http://127.0.0.1:9", region="Atlantis")


def test_energy_per_sample_is_summarised_and_compared_as_scipy_computes_it() -> None:
    samples_a, samples_b = [300, 320, 360], [500, 450, 560, 610]
    series = [s for k, n in enumerate(samples_a) for s in worked(f"a{k}", DAY + 600 * k, n, "A")]
    series += [s for k, n in enumerate(samples_b) for s in worked(f"b{k}", DAY + 40_000 + 600 * k, n, "B")]
    intensity = resolve_intensity(flag_g_per_kwh=100)
    with FakePrometheus(series) as server:
        reader = PrometheusRuns(PrometheusClient(server.url), settle_seconds=0)
        found = reader.load([], DAY, DAY + 86399)
    sets = {name: [run for run in found if run.set == name] for name in ("A", "B")}
    a, b = (set_report(name, sets[name], intensity, 1.58) for name in ("A", "B"))
    truth_a, truth_b = [JOULES / n for n in samples_a], [JOULES / n for n in samples_b]

    summary = a.summaries["joules_per_sample"]
    half = stats.t.ppf(0.975, 2) * stats.sem(truth_a)
    assert (summary.mean, summary.ci_low, summary.ci_high) == pytest.approx(
        (sum(truth_a) / 3, sum(truth_a) / 3 - half, sum(truth_a) / 3 + half), rel=1e-12
    )
    comparison: Any = comparison_report(a, b).comparisons["joules_per_sample"]
    welch = stats.ttest_ind(truth_a, truth_b, equal_var=False)
    assert (comparison.t_statistic, comparison.p_value) == pytest.approx((welch.statistic, welch.pvalue), rel=1e-9)
    assert comparison.p_value < 0.05 and comparison.same_test_as is None  # a hypothesis of its own, not energy's
