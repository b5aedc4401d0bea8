"""Tests for per-GPU attribution: worked examples with exact joules, the fallbacks, and conservation (hypothesis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from impact_exporter.gpu_attribution import (
    GpuAttribution,
    active_shares,
    attribute_gpu_interval,
    lowest_idle_watts,
)
from impact_exporter.sources.gpu import GpuProcess
from impact_exporter.sources.nvml import NvmlSource
from tests.fakes.nvml import GIB, FakeGpu, FakeNvml

RUN_A = "run-a"
RUN_B = "run-b"


def test_time_sliced_processes_get_active_energy_by_sm_share_and_idle_equally() -> None:
    processes = [GpuProcess(101, 6 * GIB, 0.4), GpuProcess(102, 2 * GIB, 0.2)]
    result = attribute_gpu_interval(250.0, 1.0, 50.0, processes, {101: RUN_A, 102: RUN_B})
    # idle 50 J shared 25/25; active 200 J: 101 gets 0.4, 102 gets 0.2, 0.4 of it is nobody's
    assert (result.idle_joules, result.active_joules, result.basis) == (50.0, 200.0, "sm")
    assert result.by_process == {101: 105.0, 102: 65.0}
    assert result.by_group == {RUN_A: 105.0, RUN_B: 65.0}
    assert result.unattributed == 80.0
    assert result.gpu_seconds == {RUN_A: 0.4, RUN_B: 0.2}


def test_two_gpus_three_processes_from_the_source_to_groups() -> None:
    """The fake's time-sliced scenario, read by the source and attributed per GPU, summed per run."""
    nvml = FakeNvml([FakeGpu("GPU-aaaa", power_watts=250.0), FakeGpu("GPU-bbbb", power_watts=150.0)])
    a100, h100 = nvml.gpus
    a100.processes, a100.slices = {101: 6 * GIB, 102: 2 * GIB}, [{101: 80}, {102: 40}]
    h100.processes, h100.slices = {103: 10 * GIB}, [{103: 50}]
    group_of = {101: RUN_A, 102: RUN_B, 103: RUN_B}
    source = NvmlSource(nvml=nvml, clock=nvml.clock)  # type: ignore[arg-type]
    source.sample()
    nvml.advance(1.0)
    results = [
        attribute_gpu_interval(reading.energy_joules_delta, reading.elapsed_seconds, 50.0, reading.processes, group_of)
        for reading in source.sample().gpus
    ]
    # A100: 250 J = 50 idle (25 + 25) + 200 active (0.4 -> 80, 0.2 -> 40); H100: 150 J = 50 idle + 100 active (0.5)
    assert [result.by_group for result in results] == [{RUN_A: 105.0, RUN_B: 65.0}, {RUN_B: 100.0}]
    assert [result.unattributed for result in results] == [80.0, 50.0]
    totals = {group: sum(result.by_group.get(group, 0.0) for result in results) for group in (RUN_A, RUN_B)}
    assert totals == {RUN_A: 105.0, RUN_B: 165.0}
    gpu_seconds = {group: sum(result.gpu_seconds.get(group, 0.0) for result in results) for group in (RUN_A, RUN_B)}
    assert gpu_seconds == pytest.approx({RUN_A: 0.4, RUN_B: 0.7}, rel=1e-12)


def test_without_sm_utilisation_active_energy_follows_used_memory() -> None:
    processes = [GpuProcess(101, 6 * GIB, None), GpuProcess(102, 2 * GIB, None)]
    result = attribute_gpu_interval(250.0, 1.0, 50.0, processes, {101: RUN_A, 102: RUN_B})
    assert result.basis == "memory"
    assert result.by_group == {RUN_A: 25.0 + 150.0, RUN_B: 25.0 + 50.0}
    assert result.unattributed == 0.0
    assert result.gpu_seconds == {}  # no utilisation measured: no GPU seconds claimed


def test_memory_fallback_counts_unknown_memory_as_none() -> None:
    shares, basis = active_shares([GpuProcess(1, 3 * GIB, None), GpuProcess(2, None, None)])
    assert (shares, basis) == ({1: 1.0, 2: 0.0}, "memory")
    shares, basis = active_shares([GpuProcess(1, None, None)])
    assert (shares, basis) == ({1: 0.0}, "none")


def test_sm_shares_over_one_are_scaled_down_together() -> None:
    processes = [GpuProcess(1, None, 0.8), GpuProcess(2, None, 0.6)]
    shares, _ = active_shares(processes)
    assert shares == {1: 0.8 / 1.4, 2: 0.6 / 1.4}
    result = attribute_gpu_interval(140.0, 2.0, None, processes, {1: RUN_A, 2: RUN_B})
    assert result.by_group == pytest.approx({RUN_A: 80.0, RUN_B: 60.0}, rel=1e-12)
    assert sum(result.by_group.values()) <= 140.0 * (1 + 1e-12)
    assert result.gpu_seconds == pytest.approx({RUN_A: 2.0 * 0.8 / 1.4, RUN_B: 2.0 * 0.6 / 1.4}, rel=1e-12)


def test_idle_policy_none_leaves_idle_energy_unattributed() -> None:
    processes = [GpuProcess(101, GIB, 0.5)]
    result = attribute_gpu_interval(300.0, 2.0, 60.0, processes, {101: RUN_A}, idle_policy="none")
    assert (result.idle_joules, result.by_group, result.unattributed) == (120.0, {RUN_A: 90.0}, 210.0)


def test_idle_energy_never_exceeds_what_was_measured() -> None:
    result = attribute_gpu_interval(40.0, 1.0, 60.0, [GpuProcess(101, GIB, 1.0)], {101: RUN_A})
    assert (result.idle_joules, result.active_joules, result.by_group) == (40.0, 0.0, {RUN_A: 40.0})


def test_unknown_idle_power_makes_all_energy_active() -> None:
    result = attribute_gpu_interval(100.0, 1.0, None, [GpuProcess(101, GIB, 0.25)], {101: RUN_A})
    assert (result.idle_joules, result.by_group, result.unattributed) == (0.0, {RUN_A: 25.0}, 75.0)


def test_an_idle_gpu_gives_everything_to_nobody() -> None:
    result = attribute_gpu_interval(55.0, 1.0, 50.0, [], {101: RUN_A})
    assert result == GpuAttribution({}, {}, 55.0, 50.0, 5.0, "none", {})


def test_a_process_in_no_group_is_charged_but_its_energy_stays_unattributed() -> None:
    processes = [GpuProcess(101, GIB, 0.5), GpuProcess(999, GIB, 0.5)]
    result = attribute_gpu_interval(100.0, 1.0, 0.0, processes, {101: RUN_A})
    assert result.by_process == {101: 50.0, 999: 50.0}
    assert (result.by_group, result.unattributed, result.gpu_seconds) == ({RUN_A: 50.0}, 50.0, {RUN_A: 0.5})


def test_processes_of_one_group_add_up_and_their_gpu_seconds_stop_at_the_interval() -> None:
    processes = [GpuProcess(101, GIB, 0.5), GpuProcess(102, GIB, 0.3)]
    result = attribute_gpu_interval(100.0, 2.0, 10.0, processes, {101: RUN_A, 102: RUN_A})
    assert result.by_group == pytest.approx({RUN_A: 20.0 + 80.0 * 0.8}, rel=1e-12)
    assert result.gpu_seconds == pytest.approx({RUN_A: 1.6}, rel=1e-12)


def test_rounding_never_makes_the_unattributed_rest_negative() -> None:
    # 10.1 J by memory shares 0.1, 0.2, 0.3, 0.4: the four products add up to 1.8e-15 J more than 10.1
    processes = [GpuProcess(pid, pid, None) for pid in (1, 2, 3, 4)]
    result = attribute_gpu_interval(10.1, 1.0, None, processes, {1: "g1", 2: "g0", 3: "g1", 4: "g0"})
    assert sum(result.by_group.values()) > 10.1
    assert result.unattributed == 0.0


@pytest.mark.parametrize(
    ("energy", "seconds", "idle", "policy", "message"),
    [
        (-1.0, 1.0, None, "share", "energy_joules must be a finite number >= 0, not -1.0"),
        (math.nan, 1.0, None, "share", "energy_joules must be a finite number >= 0, not nan"),
        (1.0, -0.5, None, "share", "interval_seconds must be a finite number >= 0, not -0.5"),
        (1.0, 1.0, math.inf, "share", "idle_watts must be a finite number >= 0, not inf"),
        (1.0, 1.0, None, "evenly", "unknown idle policy 'evenly'; known: share, none"),
    ],
)
def test_impossible_inputs_are_the_callers_bug(
    energy: float, seconds: float, idle: float | None, policy: str, message: str
) -> None:
    with pytest.raises(ValueError) as raised:
        attribute_gpu_interval(energy, seconds, idle, [], {}, idle_policy=policy)  # type: ignore[arg-type]
    assert str(raised.value) == message


def test_the_idle_baseline_is_the_lowest_power_seen_with_no_process() -> None:
    assert lowest_idle_watts(None, 70.0, processes=0) == 70.0
    assert lowest_idle_watts(70.0, 55.0, processes=0) == 55.0
    assert lowest_idle_watts(55.0, 80.0, processes=0) == 55.0
    assert lowest_idle_watts(55.0, 30.0, processes=1) == 55.0  # a busy interval says nothing about idle
    assert lowest_idle_watts(None, 30.0, processes=2) is None
    assert lowest_idle_watts(55.0, None, processes=0) == 55.0
    assert lowest_idle_watts(55.0, math.nan, processes=0) == 55.0


_share = st.one_of(st.none(), st.floats(min_value=-0.5, max_value=3.0, allow_nan=False))
_memory = st.one_of(st.none(), st.integers(min_value=0, max_value=80 * GIB))
_processes = st.lists(
    st.tuples(st.integers(min_value=1, max_value=40), _share, _memory), max_size=8, unique_by=lambda p: p[0]
)


@settings(max_examples=400, deadline=None)
@given(
    energy=st.floats(min_value=0.0, max_value=1e7, allow_nan=False),
    seconds=st.floats(min_value=0.0, max_value=3600.0, allow_nan=False),
    idle=st.one_of(st.none(), st.floats(min_value=0.0, max_value=1000.0, allow_nan=False)),
    raw_processes=_processes,
    grouped=st.sets(st.integers(min_value=1, max_value=40)),
    group_count=st.integers(min_value=1, max_value=3),
    policy=st.sampled_from(["share", "none"]),
)
@example(energy=1.0, seconds=1.0, idle=None, raw_processes=[(1, 0.7, None), (2, 0.7, None)],
         grouped={1, 2}, group_count=1, policy="share")  # fmt: skip
def test_every_joule_is_attributed_once_and_never_more(
    energy: float,
    seconds: float,
    idle: float | None,
    raw_processes: list[tuple[int, float | None, int | None]],
    grouped: set[int],
    group_count: int,
    policy: str,
) -> None:
    processes = [GpuProcess(pid, memory, share) for pid, share, memory in raw_processes]
    group_of = {pid: f"run-{pid % group_count}" for pid in grouped}
    result = attribute_gpu_interval(energy, seconds, idle, processes, group_of, idle_policy=policy)  # type: ignore[arg-type]
    attributed = sum(result.by_group.values())
    assert attributed + result.unattributed == pytest.approx(energy, rel=1e-9, abs=1e-12)
    assert attributed <= energy * (1 + 1e-12)  # never more than measured, but for rounding
    assert result.unattributed >= 0.0
    assert all(joules >= 0.0 for joules in result.by_group.values())
    assert all(joules >= 0.0 for joules in result.by_process.values())
    assert result.idle_joules + result.active_joules == pytest.approx(energy, rel=1e-12, abs=1e-12)
    assert set(result.by_group) == {group_of[p.pid] for p in processes if p.pid in group_of}
    assert all(0.0 <= value <= seconds for value in result.gpu_seconds.values())
    assert sum(result.gpu_seconds.values()) <= seconds * (1 + 1e-9)
    shares, _ = active_shares(processes)
    assert all(share >= 0.0 for share in shares.values())
    assert sum(shares.values()) <= 1.0 + 1e-12
