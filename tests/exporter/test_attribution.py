"""Attribution: the split follows usage shares and conserves every joule measured."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from impact_exporter.attribution import GroupShareBasis, attribute_interval, usage_shares

GIB = 2**30


def test_package_split_by_cpu_share_and_dram_by_memory_share() -> None:
    result = attribute_interval(
        {"package": 40.0, "dram": 6.0},
        {
            "a": GroupShareBasis(cpu_seconds=1.0, memory_bytes=4 * GIB),
            "b": GroupShareBasis(cpu_seconds=0.5, memory_bytes=2 * GIB),
        },
        system_busy_cpu_seconds=2.0,
        total_memory_bytes=16 * GIB,
    )
    assert result.by_group["a"]["package"] == pytest.approx(20.0)
    assert result.by_group["b"]["package"] == pytest.approx(10.0)
    assert result.unattributed["package"] == pytest.approx(10.0)
    assert result.by_group["a"]["dram"] == pytest.approx(1.5)
    assert result.by_group["b"]["dram"] == pytest.approx(0.75)
    assert result.unattributed["dram"] == pytest.approx(3.75)


def test_dram_is_not_subtracted_from_package() -> None:
    """The seed subtracted DRAM from package power although DRAM is its own RAPL domain."""
    result = attribute_interval(
        {"package": 30.0, "dram": 10.0},
        {"only": GroupShareBasis(cpu_seconds=1.0, memory_bytes=0)},
        system_busy_cpu_seconds=1.0,
        total_memory_bytes=GIB,
    )
    assert result.by_group["only"]["package"] == pytest.approx(30.0)
    assert result.by_group["only"]["dram"] == 0.0


def test_shares_over_one_are_scaled_down_not_over_attributed() -> None:
    assert usage_shares({"a": 3.0, "b": 1.0}, total=2.0) == {"a": 0.75, "b": 0.25}


def test_no_busy_time_attributes_nothing() -> None:
    result = attribute_interval(
        {"package": 5.0},
        {"a": GroupShareBasis(cpu_seconds=0.0, memory_bytes=0)},
        system_busy_cpu_seconds=0.0,
        total_memory_bytes=GIB,
    )
    assert result.by_group["a"]["package"] == 0.0
    assert result.unattributed["package"] == 5.0


def test_psys_and_unknown_domains_stay_unattributed() -> None:
    result = attribute_interval(
        {"psys": 12.0},
        {"a": GroupShareBasis(cpu_seconds=1.0, memory_bytes=GIB)},
        system_busy_cpu_seconds=1.0,
        total_memory_bytes=GIB,
    )
    assert result.by_group["a"] == {}
    assert result.unattributed == {"psys": 12.0}


usage = st.floats(min_value=-1.0, max_value=1e6, allow_nan=False)
joules = st.floats(min_value=0.0, max_value=1e7, allow_nan=False)


@given(
    energy=st.dictionaries(st.sampled_from(["package", "dram", "core", "uncore", "psys"]), joules),
    groups=st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.builds(GroupShareBasis, cpu_seconds=usage, memory_bytes=usage),
        max_size=20,
    ),
    busy=st.floats(min_value=-1.0, max_value=1e6, allow_nan=False),
    memory=st.floats(min_value=0.0, max_value=1e13, allow_nan=False),
)
def test_attributed_plus_unattributed_equals_measured(
    energy: dict[str, float], groups: dict[str, GroupShareBasis], busy: float, memory: float
) -> None:
    result = attribute_interval(energy, groups, system_busy_cpu_seconds=busy, total_memory_bytes=memory)
    for domain, measured in energy.items():
        given_out = [result.by_group[g].get(domain, 0.0) for g in groups]
        assert all(j >= 0.0 for j in given_out)
        assert result.unattributed[domain] >= 0.0
        assert math.isclose(sum(given_out) + result.unattributed[domain], measured, rel_tol=1e-9, abs_tol=1e-9)
        assert sum(given_out) <= measured * (1 + 1e-9) + 1e-12
