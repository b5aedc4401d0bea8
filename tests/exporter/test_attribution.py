"""Attribution: the split follows usage shares and conserves every joule measured."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from impact_exporter.attribution import GroupShareBasis, attribute_interval, usage_shares
from impact_exporter.groups import ProcessGroups
from tests.fakes.procfs import FakeProc

GIB = 2**30
VICTIM, LAUNCHER, ATTACK_ROOT, OLD_CHILD = 100, 200, 210, 220


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


def test_one_owners_excess_leaves_the_share_of_an_owner_below_the_level_as_it_is() -> None:
    """Claims of 0.5 + 5.0 of 2.0 busy seconds: the level is 1.5; the victim keeps 0.5 / 2.0, the attacker the rest,
    split among its groups in proportion (plain scaling would leave the victim 0.5 / 5.5)."""
    shares = usage_shares(
        {"victim": 0.5, "attack-0": 4.0, "attack-1": 1.0},
        total=2.0,
        owners={"victim": "65534", "attack-0": "40002", "attack-1": "40002"},
    )
    assert shares == pytest.approx({"victim": 0.25, "attack-0": 0.6, "attack-1": 0.15})


def test_owners_who_all_claim_more_than_the_level_are_cut_to_it() -> None:
    shares = usage_shares({"a": 1.1, "b": 3.0, "c": 0.2}, total=2.0, owners={"a": "1", "b": "2", "c": "3"})
    assert shares == pytest.approx({"a": 0.45, "b": 0.45, "c": 0.1})


def test_a_launcher_that_reaps_an_old_child_with_its_run_s_root_cannot_shrink_another_owners_share(
    tmp_path: Path,
) -> None:
    """The attacker's launcher reaps its run's root and, in the same interval, a child outside every run that used
    100 s of CPU before: the launcher's cutime rise, which gives the root its last moments, gives the run those
    100 s too (docs/attribution.md). The victim's share stays its CPU time over the machine's busy time."""
    fake = FakeProc(tmp_path / "proc")
    fake.spawn(VICTIM, 1, start=100, uid=65534)
    fake.spawn(LAUNCHER, 1, start=200, uid=40002)
    fake.spawn(ATTACK_ROOT, LAUNCHER, start=210, uid=40002)
    fake.spawn(OLD_CHILD, LAUNCHER, start=220, uid=40002, utime=10_000)
    groups = ProcessGroups(fake.procfs())
    roots = {"victim": (VICTIM,), "attack": (ATTACK_ROOT,)}
    groups.sample(roots)
    fake.advance(busy_ticks=200, idle_ticks=0, running={VICTIM: 100, ATTACK_ROOT: 50, OLD_CHILD: 50})
    fake.reap(ATTACK_ROOT)
    fake.reap(OLD_CHILD)

    usage = groups.sample(roots)
    assert usage["attack"].cpu_seconds > 100.0, "the over-claim this guards against"
    bases = {
        "victim": GroupShareBasis(usage["victim"].cpu_seconds, 0, owner="65534"),
        "attack": GroupShareBasis(usage["attack"].cpu_seconds, 0, owner="40002"),
    }
    result = attribute_interval({"package": 40.0}, bases, system_busy_cpu_seconds=2.0, total_memory_bytes=GIB)
    assert result.by_group["victim"]["package"] == pytest.approx(40.0 * 1.0 / 2.0)
    assert result.by_group["attack"]["package"] + result.unattributed["package"] == pytest.approx(20.0)


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
        st.builds(GroupShareBasis, cpu_seconds=usage, memory_bytes=usage, owner=st.sampled_from(["", "1", "2"])),
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


@given(
    claims=st.dictionaries(
        st.text(min_size=1, max_size=4), st.tuples(st.floats(min_value=0.0, max_value=1e6), st.sampled_from("abcd"))
    ),
    total=st.floats(min_value=1e-3, max_value=1e6),
)
def test_an_owner_claiming_no_more_than_an_equal_part_keeps_its_share_whatever_the_others_claim(
    claims: dict[str, tuple[float, str]], total: float
) -> None:
    shares = usage_shares(
        {g: amount for g, (amount, _) in claims.items()}, total, {g: o for g, (_, o) in claims.items()}
    )
    by_owner: dict[str, float] = {}
    for amount, owner in claims.values():
        by_owner[owner] = by_owner.get(owner, 0.0) + amount
    for group, (amount, owner) in claims.items():
        if by_owner[owner] * len(by_owner) <= total:
            assert math.isclose(shares[group], amount / total, rel_tol=1e-9, abs_tol=1e-15)
    assert sum(shares.values()) <= 1 + 1e-9
