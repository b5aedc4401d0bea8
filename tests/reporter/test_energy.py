"""Pure run computations on literal samples: totals across resets, coverage and gaps, power, figures."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from impact_reporter.carbon import CarbonIntensity, resolve_intensity
from impact_reporter.energy import component_power, counter_total, coverage, run_figures, running_total, split_series
from impact_reporter.prometheus import Series
from impact_reporter.runs import SAMPLE_COLUMNS, Host, Run, RunDataError

FLAT = CarbonIntensity(g_per_kwh=400.0, source="test", region=None, year=None, is_default=False, method="flag")


def test_counter_total_counts_the_first_value_and_steps_over_resets() -> None:
    assert counter_total(np.array([2.0, 5.0, 9.0])) == 9.0
    # the exporter restarted without state after 9 J: it counted 1 J, then 4 J more
    assert counter_total(np.array([2.0, 5.0, 9.0, 1.0, 5.0])) == 14.0
    assert counter_total(np.array([])) == 0.0


@given(
    st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=50),
    st.sets(st.integers(min_value=1, max_value=49)),
)
def test_running_total_recovers_increments_across_any_resets(increments: list[float], reset_at: set[int]) -> None:
    """A counter that restarts from 0 at chosen samples still sums to every increment written.

    A restart shows only when the new value is below the old one, for Prometheus as for us: others continue.
    """
    raw, value = [], 0.0
    for index, increment in enumerate(increments):
        value = increment if index in reset_at and increment < value else value + increment
        raw.append(value)
    assert running_total(np.array(raw))[-1] == pytest.approx(sum(increments), rel=1e-9, abs=1e-6)


def test_coverage_of_evenly_scraped_run_is_full() -> None:
    cover = coverage(np.arange(100.0, 111.0), start=100.0, end=110.0, interval=1.0)
    assert (cover.fraction, cover.largest_gap_seconds, cover.samples) == (1.0, 1.0, 11)


def test_coverage_shows_a_thirty_second_gap() -> None:
    timestamps = np.concatenate((np.arange(0.0, 31.0), np.arange(61.0, 101.0)))
    cover = coverage(timestamps, start=0.0, end=100.0, interval=1.0)
    assert cover.largest_gap_seconds == 31.0
    assert cover.fraction == pytest.approx(0.70)


def test_coverage_without_samples_is_zero() -> None:
    cover = coverage(np.array([]), start=0.0, end=10.0, interval=1.0)
    assert (cover.fraction, cover.largest_gap_seconds) == (0.0, 10.0)


def samples(rows: list[tuple[str, str, str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


def make_run(
    frame: pd.DataFrame,
    end: float | None = 10.0,
    methods: dict | None = None,
    start: float = 0.0,
    hosts: tuple[Host, ...] = (Host("a"), Host("b")),
) -> Run:
    return Run(
        run_id="r",
        experiment="e",
        set="s",
        labels={},
        user="u",
        start_time=start,
        end_time=end,
        hosts=hosts,
        methods=methods or {"cpu": "rapl"},
        samples=frame,
    )


def two_nodes() -> pd.DataFrame:
    """Node a draws 10 W, node b 30 W, both scraped every second for 10 s; b was also busy on 2 CPU-seconds."""
    rows = [("impact_run_energy_joules_total", "a", "cpu", float(t), 10.0 * t) for t in range(11)]
    rows += [("impact_run_energy_joules_total", "b", "cpu", float(t), 30.0 * t) for t in range(11)]
    rows += [("impact_run_cpu_seconds_total", "b", "", float(t), 0.2 * t) for t in range(11)]
    return samples(rows)


def test_component_power_sums_nodes() -> None:
    energy = {
        (i, c): tv for (m, i, c), tv in split_series(two_nodes()).items() if m == "impact_run_energy_joules_total"
    }
    power = component_power(energy, 0.0, 10.0, 1.0).table()
    assert list(power["watts"]) == pytest.approx([40.0] * 10)
    assert list(power["timestamp"]) == pytest.approx(list(range(1, 11)))


def test_run_figures_of_two_nodes() -> None:
    figures = run_figures(make_run(two_nodes()), FLAT, pue=1.5)
    assert figures.energy_joules == {"cpu": pytest.approx(400.0)}
    assert figures.total_kwh == pytest.approx(400 / 3.6e6)
    assert figures.kg_co2eq == pytest.approx(400 / 3.6e6 * 1.5 * 400 / 1000)
    assert figures.average_power_watts == pytest.approx(40.0)
    assert figures.peak_power_watts == pytest.approx(40.0)
    assert figures.cpu_hours == pytest.approx(2.0 / 3600)
    assert figures.gpu_hours is None
    assert figures.coverage.fraction == 1.0
    assert figures.sample_interval_seconds == 1.0
    assert figures.measured == {"cpu": True}


FR_PL = (Host("a", region="FR"), Host("b", region="pl"))


def test_a_run_on_hosts_in_fr_and_pl_gets_their_energy_weighted_intensity() -> None:
    # By hand: node a (France, 56 gCO2e/kWh) drew 100 J, node b (Poland, 662) 300 J, so the run's intensity is
    # (100 * 56 + 300 * 662) / 400 = 510.5 g/kWh, and its carbon the sum of the two hosts' carbon.
    figures = run_figures(make_run(two_nodes(), hosts=FR_PL), resolve_intensity(), pue=1.5)
    assert figures.intensity_g_per_kwh == pytest.approx(510.5, rel=1e-12)
    by_host = 100 / 3.6e6 * 1.5 * 56 / 1000 + 300 / 3.6e6 * 1.5 * 662 / 1000
    assert figures.kg_co2eq == pytest.approx(by_host, rel=1e-12)
    assert figures.intensity.method == "per-host" and not figures.intensity.is_default
    assert [(h.instance, h.region, h.joules, h.g_per_kwh) for h in figures.host_intensities] == [
        ("a", "FR", pytest.approx(100.0), 56.0),
        ("b", "pl", pytest.approx(300.0), 662.0),
    ]
    described = figures.intensity.describe()
    assert described.startswith("energy-weighted over the run's hosts (510.5 gCO2eq/kWh): a: 56 gCO2eq/kWh (CO2e; ")
    assert "; b: 662 gCO2eq/kWh (CO2e; " in described and "France (FR), 2023" in described
    document = json.loads(json.dumps(figures.as_json()))
    assert document["carbon_intensity_method"] == "per-host" and document["carbon_intensity_year"] == 2023
    assert [(h["instance"], h["g_per_kwh"], h["method"]) for h in document["carbon_intensity_hosts"]] == [
        ("a", 56.0, "host-region"),
        ("b", 662.0, "host-region"),
    ]


@pytest.mark.parametrize(
    ("given", "g_per_kwh"), [({"region": "SE"}, 41.0), ({"flag_g_per_kwh": 100.0, "region": "SE"}, 100.0)]
)
def test_an_explicit_flag_wins_over_the_hosts_regions(given: dict, g_per_kwh: float) -> None:
    figures = run_figures(make_run(two_nodes(), hosts=FR_PL), resolve_intensity(**given), pue=1.5)
    assert figures.intensity_g_per_kwh == g_per_kwh
    assert figures.intensity == resolve_intensity(**given)
    assert {h.g_per_kwh for h in figures.host_intensities} == {g_per_kwh}


def test_a_host_without_region_takes_the_series_else_the_world_average() -> None:
    hosts = (Host("a", region="FR"), Host("b"))
    world = run_figures(make_run(two_nodes(), hosts=hosts), resolve_intensity(), pue=1.0)
    assert world.intensity_g_per_kwh == pytest.approx((100 * 56 + 300 * 481) / 400, rel=1e-12)
    assert world.intensity.is_default and world.intensity.method == "per-host"
    flat_300 = Series({}, np.array([0.0]), np.array([300.0]))
    series = run_figures(make_run(two_nodes(), hosts=hosts), resolve_intensity(series_query="grid"), 1.0, flat_300)
    assert series.intensity_g_per_kwh == pytest.approx((100 * 56 + 300 * 300) / 400, rel=1e-12)
    assert not series.intensity.is_default
    assert [h.intensity.method for h in series.host_intensities] == ["host-region", "prometheus-series"]


def test_a_host_region_the_table_lacks_fails_the_run_naming_the_host_and_the_flag() -> None:
    hosts = (Host("a", region="FR"), Host("b", region="gcp:europe-west7"))
    with pytest.raises(RunDataError) as caught:
        run_figures(make_run(two_nodes(), hosts=hosts), resolve_intensity(), pue=1.0)
    message = str(caught.value)
    assert message.startswith("run r: host b: unknown region 'gcp:europe-west7': did you mean gcp:europe-west1 ")
    assert message.endswith("(the region its exporter exports with --carbon.region)")


def test_an_estimated_component_is_not_called_measured() -> None:
    figures = run_figures(make_run(two_nodes(), methods={"cpu": "estimate"}), FLAT, pue=1.0)
    assert figures.measured == {"cpu": False}


def test_a_run_without_samples_is_an_error_naming_it() -> None:
    with pytest.raises(RunDataError, match="run r .* has no energy samples"):
        run_figures(make_run(samples([])), FLAT, pue=1.0)


def test_coverage_of_a_run_shorter_than_one_interval_whose_final_counters_were_scraped_is_full() -> None:
    cover = coverage(np.array([1.5, 2.5, 3.5]), start=0.0, end=0.8, interval=1.0)
    assert (cover.fraction, cover.largest_gap_seconds, cover.samples) == (1.0, pytest.approx(0.8), 0)


def test_coverage_without_a_sample_at_or_after_the_end_leaves_the_last_stretch_a_gap() -> None:
    # scraped at 0.5 s, then the exporter was gone: the energy of the run's last 0.3 s was never read
    cover = coverage(np.array([0.5]), start=0.0, end=0.8, interval=1.0)
    assert cover.fraction == pytest.approx(0.5 / 0.8)


def constant_power_run(watts: float, start: float, end: float, first: float, until: float) -> pd.DataFrame:
    """A run at ``watts`` scraped every second from ``first`` to ``until``; counters stay at their final value
    after the end, as the exporter keeps finished runs exported."""
    rows = [
        ("impact_run_energy_joules_total", "a", "cpu", t, watts * (min(t, end) - start))
        for t in np.arange(first, until, 1.0)
    ]
    rows += [
        ("impact_run_cpu_seconds_total", "a", "", t, 0.5 * (min(t, end) - start)) for t in np.arange(first, until, 1.0)
    ]
    return samples(rows)


def test_a_run_shorter_than_one_interval_has_its_energy_full_coverage_and_no_peak() -> None:
    # 0.8 s at 50 W; the only sample inside the run is at 0.5 s, the next one (after its end) holds 40 J
    run = make_run(constant_power_run(50.0, 100.0, 100.8, 100.5, 130), end=100.8, start=100.0, hosts=(Host("a"),))
    figures = run_figures(run, FLAT, pue=1.0)
    assert figures.total_joules == pytest.approx(40.0)
    assert figures.average_power_watts == pytest.approx(50.0)
    assert figures.peak_power_watts is None
    assert figures.coverage.fraction == 1.0
    assert figures.sample_interval_seconds == 1.0
    assert list(figures.power.table()["timestamp"]) == pytest.approx([100.8])
    assert list(figures.power.table()["watts"]) == pytest.approx([50.0])
    document = json.loads(json.dumps(figures.as_json(), allow_nan=False))
    assert document["peak_power_watts"] is None
    assert document["sample_interval_seconds"] == 1.0


def test_power_is_only_the_run_from_its_start_to_its_end() -> None:
    # 4.3 s at 20 W, first scraped 0.7 s after its start, its final counters scraped until 26 s
    start, end = 1_700_000_000.0, 1_700_000_004.3
    run = make_run(
        constant_power_run(20.0, start, end, start + 0.7, start + 26), end=end, start=start, hosts=(Host("a"),)
    )
    figures = run_figures(run, FLAT, pue=1.0)
    power = figures.power.table()
    assert list(power["timestamp"] - start) == pytest.approx([1.0, 2.0, 3.0, 4.0, 4.3])
    assert list(power["watts"]) == pytest.approx([20.0] * 5)  # the first second too, from 0 J at the start
    assert figures.peak_power_watts == pytest.approx(20.0)
    assert float((power["watts"] * np.diff(np.concatenate(([start], power["timestamp"])))).sum()) == pytest.approx(
        figures.total_joules
    )


def test_a_short_high_power_burst_is_the_peak_and_the_cut_last_interval_is_not() -> None:
    # 10 W for two seconds, 30 W in the third, 90 W in the last 0.5 s (a cut interval: not a peak of its own)
    energy = {0.0: 0.0, 1.0: 10.0, 2.0: 20.0, 3.0: 50.0, 3.5: 95.0}
    rows = [("impact_run_energy_joules_total", "a", "cpu", t, e) for t, e in energy.items() if t > 0]
    rows += [("impact_run_energy_joules_total", "a", "cpu", t, 95.0) for t in (4.0, 5.0)]
    run = make_run(samples(rows), end=3.5, start=0.0, hosts=(Host("a"),))
    figures = run_figures(run, FLAT, pue=1.0)
    assert list(figures.power.table()["watts"]) == pytest.approx([10.0, 10.0, 30.0, 90.0])
    assert figures.peak_power_watts == pytest.approx(30.0)


def test_a_run_whose_energy_counters_never_moved_while_it_used_cpu_is_not_measured() -> None:
    rows = [("impact_run_energy_joules_total", "a", "cpu", float(t), 0.0) for t in range(1, 12)]
    rows += [("impact_run_cpu_seconds_total", "a", "", float(t), 0.3) for t in range(1, 12)]
    with pytest.raises(RunDataError, match="not measured: its energy counters never moved although it used 0.3 CPU"):
        run_figures(make_run(samples(rows)), FLAT, pue=1.0)


def test_samples_read_long_after_the_end_change_no_figure() -> None:
    # the same 4.3 s run reported soon after its end, and a minute later with sparser samples of its final value
    start, end = 1_700_000_000.0, 1_700_000_004.3
    soon = constant_power_run(20.0, start, end, start + 0.7, start + 6)
    final = soon[soon["metric"] == "impact_run_energy_joules_total"]["value"].max()
    late_rows = [("impact_run_energy_joules_total", "a", "cpu", start + t, final) for t in range(9, 60, 3)]
    late = pd.concat([soon, samples(late_rows)], ignore_index=True)
    reported = [
        run_figures(make_run(frame, end=end, start=start, hosts=(Host("a"),)), FLAT, pue=1.0).as_json()
        for frame in (soon, late)
    ]
    assert reported[0] == reported[1]


def interleaved_nodes(samples_after_end: int) -> pd.DataFrame:
    """A 10 s run on two nodes, each scraped every second, half a second apart: node a at whole seconds draws
    10 W; node b at half seconds draws 30 W, and 70 W from 4.5 s to 5.5 s. Node b's final counters are scraped
    once (then the node went away), node a's ``samples_after_end`` times (its exporter kept the finished run)."""

    def b_joules(t: float) -> float:
        return 30.0 * t + 40.0 * float(np.clip(t - 4.5, 0.0, 1.0))

    rows = [("impact_run_energy_joules_total", "a", "cpu", t, 10.0 * min(t, 10.0)) for t in np.arange(1.0, 10.0)]
    rows += [("impact_run_energy_joules_total", "b", "cpu", t, b_joules(t)) for t in np.arange(0.5, 10.0)]
    rows += [("impact_run_energy_joules_total", "a", "cpu", 10.0 + k, 100.0) for k in range(samples_after_end)]
    rows += [("impact_run_energy_joules_total", "b", "cpu", 10.5, b_joules(10.0))]
    return samples(rows)


def test_two_nodes_scraped_half_a_second_apart_are_each_one_second_apart() -> None:
    """Merged, the nodes' samples are 0.5 s apart: the peak would be over 0.5 s (80 W, from 4.5 s to 5 s). Each
    node is sampled every second: the peak is over whole seconds from the start, 10 W + 50 W from 4 s to 5 s."""
    figures = run_figures(make_run(interleaved_nodes(samples_after_end=2)), FLAT, pue=1.0)
    assert figures.sample_interval_seconds == 1.0
    assert figures.total_joules == pytest.approx(100.0 + 340.0)
    assert figures.peak_power_watts == pytest.approx(60.0)
    assert (figures.coverage.fraction, figures.coverage.largest_gap_seconds) == (1.0, 1.0)
    assert list(figures.power.table()["watts"]) == pytest.approx([40.0] * 4 + [60.0, 60.0] + [40.0] * 4)


def test_two_nodes_give_the_same_figures_whether_few_or_many_samples_follow_the_end() -> None:
    few, many = (run_figures(make_run(interleaved_nodes(after)), FLAT, pue=1.0).as_json() for after in (1, 300))
    assert few == many


def federated_every_15_seconds() -> pd.DataFrame:
    """A 60 s run at 10 W with a 40 W second from 30 s to 31 s, as a federation every 15 s keeps it: the 1 s
    scrapes of 5, 20, 35 and 50 s, and 65 s, which holds the final 630 J."""

    def joules(t: float) -> float:
        return 10.0 * min(t, 60.0) + 30.0 * float(np.clip(t - 30.0, 0.0, 1.0))

    return samples(
        [("impact_run_energy_joules_total", "a", "cpu", t, joules(t)) for t in (5.0, 20.0, 35.0, 50.0, 65.0)]
    )


def test_samples_every_15_seconds_give_a_15_second_spacing_and_a_peak_over_15_seconds() -> None:
    run = make_run(federated_every_15_seconds(), end=60.0, hosts=(Host("a"),))
    figures = run_figures(run, FLAT, pue=1.0)
    assert figures.total_joules == pytest.approx(630.0)
    assert figures.sample_interval_seconds == 15.0
    assert list(figures.power.table()["timestamp"]) == [15.0, 30.0, 45.0, 60.0]
    # the energy at 15, 30 and 45 s lies between the samples: 150, 320 and 480 J; 630 J at the end
    assert list(figures.power.table()["watts"]) == pytest.approx([10.0, 170 / 15, 160 / 15, 10.0])
    assert figures.peak_power_watts == pytest.approx(170 / 15)  # the 40 W second, spread over 15 s
    # against its own spacing the run is fully covered: nothing says the data was scraped every second
    assert (figures.coverage.fraction, figures.coverage.largest_gap_seconds) == (1.0, 15.0)
    document = figures.as_json()
    assert document["sample_interval_seconds"] == 15.0 and document["expected_interval_seconds"] is None


def test_against_an_expected_1_second_interval_15_second_samples_cover_1_second_per_stretch() -> None:
    """Each of the five stretches (5, 15, 15, 15 and 10 s) counts 1 s: 5 s of 60 s. Energy and peak are as
    without the expected interval: only coverage is judged against it."""
    run = make_run(federated_every_15_seconds(), end=60.0, hosts=(Host("a"),))
    own = run_figures(run, FLAT, pue=1.0)
    figures = run_figures(run, FLAT, pue=1.0, expected_interval=1.0)
    assert figures.coverage.fraction == pytest.approx(5 / 60)
    assert figures.coverage.largest_gap_seconds == 15.0
    assert figures.sample_interval_seconds == 15.0 and figures.expected_interval_seconds == 1.0
    assert (figures.total_joules, figures.peak_power_watts) == (own.total_joules, own.peak_power_watts)
    assert figures.as_json()["expected_interval_seconds"] == 1.0


def test_samples_finer_than_the_expected_interval_are_fully_covered() -> None:
    figures = run_figures(make_run(two_nodes()), FLAT, pue=1.0, expected_interval=15.0)
    assert figures.coverage.fraction == 1.0 and figures.sample_interval_seconds == 1.0


def test_a_run_without_two_samples_takes_the_expected_interval_as_its_spacing() -> None:
    # 0.8 s at 50 W scraped once, after its end: no spacing to see; with --expected-interval 1s none is assumed
    run = make_run(constant_power_run(50.0, 100.0, 100.8, 101.5, 102), end=100.8, start=100.0, hosts=(Host("a"),))
    assert run_figures(run, FLAT, pue=1.0).sample_interval_seconds == 15.0
    assert run_figures(run, FLAT, pue=1.0, expected_interval=1.0).sample_interval_seconds == 1.0


def test_a_run_at_unix_times_has_its_peak_whatever_its_spacing() -> None:
    """At 1.8e9 s, float64 times are 2^-22 s (2.4e-7 s) apart: a store's 1.001 s steps are 1.000999928 s or
    1.001000166 s, and with as many of each their median is 1.001000047 s. From a unix-time start, start + k x
    that is not exactly an edge of the power grid: a 27 s run at 20 W had no whole interval and its peak read
    n/a, as a federated copy of a real run did."""
    steps = [1.000999927520752, 1.001000165939331] * 14  # 29 samples: 28 steps through the first after the end
    start, end = 1796454508.465033, 1796454535.910332
    times = 1796454508.6 + np.concatenate(([0.0], np.cumsum(steps)))  # the last one after the end
    rows = [("impact_run_energy_joules_total", "a", "cpu", t, 20.0 * (min(t, end) - start)) for t in times]
    figures = run_figures(make_run(samples(rows), end=end, start=start, hosts=(Host("a"),)), FLAT, pue=1.0)
    assert figures.sample_interval_seconds == 1.0010000467300415
    assert figures.peak_power_watts == pytest.approx(20.0)
    assert list(figures.power.table()["watts"]) == pytest.approx([20.0] * 28)


@given(st.randoms(use_true_random=False), st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=6))
def test_split_series_gives_the_same_series_from_blocks_and_from_any_row_order(
    shuffler: random.Random, lengths: list[int]
) -> None:
    """A table read from a store (each series one block of rows in time order) is split where its key
    changes; the same rows in any order, where a series may lie in several blocks, give the same series."""
    keys = [("impact_run_energy_joules_total", f"node{i % 2}", ("cpu", "dram", "gpu")[i % 3]) for i in range(6)]
    blocks = pd.DataFrame(
        [(*keys[k], float(t), float(10 * k + t)) for k, n in enumerate(lengths) for t in range(n)],
        columns=SAMPLE_COLUMNS,
    )
    rows = list(blocks.itertuples(index=False))
    shuffler.shuffle(rows)
    shuffled = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
    expected = {keys[k]: (np.arange(n, dtype=float), 10.0 * k + np.arange(n)) for k, n in enumerate(lengths)}
    for table in (blocks, shuffled):
        split = split_series(table)
        assert list(split) == sorted(expected)
        for key, (timestamps, values) in expected.items():
            np.testing.assert_array_equal(split[key][0], timestamps)
            np.testing.assert_array_equal(split[key][1], values)
