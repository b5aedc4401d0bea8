"""The estimate source: utilisation-driven energy on a fake /proc, TDP resolution, and the RAPL-shaped output.

Every procfs tree here is made of real files (tests/fakes/procfs.py); the pure parts are tested on literal text.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from impact_exporter.ledger import Ledger
from impact_exporter.run import RunKey
from impact_exporter.sampler import Sampler
from impact_exporter.sources import HardwareNotFound, SourceError
from impact_exporter.sources.energy import DomainEnergy, EnergyDomain, EnergyReading
from impact_exporter.sources.estimate import (
    BYTES_PER_GIB,
    TABLE_COLUMNS,
    EstimateSource,
    TdpRow,
    lookup_tdp,
    package_watts,
    parse_cpuinfo_packages,
    parse_tdp_table,
    resolve_tdp,
    tdp_table,
    utilisation,
)
from impact_exporter.sources.procfs import CpuTimes
from tests.fakes.procfs import FakeProc

RUN = RunKey(0, "run")

GOLD_6248 = "Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz"


class FakeClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cpuinfo(model: str, physical_ids: list[int] | None = None, cpus: int = 2) -> str:
    """A /proc/cpuinfo with ``cpus`` processors of ``model``, the i-th in package ``physical_ids[i]`` if given."""
    blocks = []
    for cpu in range(cpus):
        lines = [f"processor\t: {cpu}", "vendor_id\t: GenuineIntel", f"model name\t: {model}"]
        if physical_ids is not None:
            lines.append(f"physical id\t: {physical_ids[cpu]}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def joules(sample: EnergyReading, domain: str = "package") -> tuple[float, float]:
    """(joules_total, joules_delta) of the zone of ``domain``."""
    (zone_energy,) = [z for z in sample.domains if z.domain == domain]
    return zone_energy.joules_total, zone_energy.joules_delta


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path / "proc")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# --- the model, pure -----------------------------------------------------------------------------------------------


def test_utilisation_is_busy_over_busy_plus_idle_of_the_interval() -> None:
    assert utilisation(CpuTimes(10.0, 100.0), CpuTimes(13.0, 101.0)) == 0.75
    assert utilisation(CpuTimes(10.0, 100.0), CpuTimes(10.0, 100.0)) == 0.0, "no ticks passed: idle"
    assert utilisation(CpuTimes(10.0, 100.0), CpuTimes(9.0, 99.0)) == 0.0, "counters going back never go negative"


def test_package_watts_runs_from_idle_to_tdp() -> None:
    assert package_watts(100.0, 0.1, 0.0) == 10.0
    assert package_watts(100.0, 0.1, 0.5) == 55.0
    assert package_watts(100.0, 0.1, 1.0) == 100.0


def test_packages_are_distinct_physical_ids_and_default_to_one() -> None:
    assert parse_cpuinfo_packages(cpuinfo(GOLD_6248, [0, 0, 1, 1], cpus=4)) == 2
    assert parse_cpuinfo_packages(cpuinfo(GOLD_6248, [0, 0], cpus=2)) == 1
    assert parse_cpuinfo_packages(cpuinfo(GOLD_6248, cpus=4)) == 1
    assert parse_cpuinfo_packages("") == 1


# --- the TDP table -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "watts"),
    [
        (GOLD_6248, 150),
        ("Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz", 205),
        ("Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz", 150),
        ("Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz", 125),
        ("Intel(R) Xeon(R) Platinum 8180 CPU @ 2.50GHz", 205),
        ("Intel(R) Xeon(R) Platinum 8280 CPU @ 2.70GHz", 205),
        ("Intel(R) Xeon(R) Platinum 8380 CPU @ 2.30GHz", 270),
        ("Intel(R) Xeon(R) Platinum 8480+", 350),
        ("Intel(R) Xeon(R) CPU E5-2680 v3 @ 2.50GHz", 120),
        ("Intel(R) Xeon(R) CPU E5-2698 v4 @ 2.20GHz", 135),
        ("Intel(R) Core(TM) i9-9900K CPU @ 3.60GHz", 95),
        ("Intel(R) Core(TM) i9-9900KF CPU @ 3.60GHz", 95),
        ("12th Gen Intel(R) Core(TM) i9-12900K", 125),
        ("AMD EPYC 7742 64-Core Processor", 225),
        ("AMD EPYC 7763 64-Core Processor", 280),
        ("AMD EPYC 7543 32-Core Processor", 225),
        ("AMD EPYC 7302P 16-Core Processor", 155),
        ("AMD EPYC 9654 96-Core Processor", 360),
        ("AMD Ryzen 9 5950X 16-Core Processor", 105),
        ("AMD Ryzen Threadripper 3970X 32-Core Processor", 280),
        ("amd epyc 7742 64-core processor", 225),
    ],
)
def test_the_bundled_table_knows_common_cpus_and_exactly_one_row_matches(model: str, watts: float) -> None:
    table = tdp_table()
    assert [row.tdp_watts for row in table if row.pattern.search(model)] == [watts]


@pytest.mark.parametrize(
    "model",
    [
        "Intel(R) Xeon(R) CPU E5-2680 0 @ 2.70GHz",  # Sandy Bridge, not in the table: not mistaken for v3/v4
        "Intel(R) Xeon(R) Gold 62480 CPU",
        "AMD EPYC 77420 Processor",
        "Neoverse-N1",
        "unknown",
    ],
)
def test_the_bundled_table_does_not_match_other_cpus(model: str) -> None:
    assert lookup_tdp(model, tdp_table()) is None


def test_every_bundled_row_has_a_source_and_a_plausible_tdp() -> None:
    table = tdp_table()
    assert 30 <= len(table) <= 60
    for row in table:
        assert row.source and 0 < row.tdp_watts <= 400 and row.cores > 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pattern,tdp_watts,source\nX,1,s\n", "columns"),
        ("pattern,tdp_watts,cores,source\n(,100,4,s\n", "line 2"),
        ("pattern,tdp_watts,cores,source\nX,0,4,s\n", "implausible"),
        ("pattern,tdp_watts,cores,source\nX,nan,4,s\n", "implausible"),
        ("pattern,tdp_watts,cores,source\nX,100,0,s\n", "cores"),
        ("pattern,tdp_watts,cores,source\nX,100,4, \n", "source"),
        ("pattern,tdp_watts,cores,source\nX,100,4,s\nx,90,4,s\n", "twice"),
    ],
)
def test_a_bad_table_is_rejected_with_its_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_tdp_table(text)


def test_resolve_tdp_uses_the_first_matching_row_times_packages_else_the_default() -> None:
    table = (TdpRow(re.compile("Model A", re.IGNORECASE), 80.0, 8, "Vendor page"),)
    one = resolve_tdp(cpuinfo("Model A", [0, 0]), table)
    assert (one.watts, one.source) == (80.0, "table: Model A (Vendor page)")
    two = resolve_tdp(cpuinfo("model a", [0, 1]), table)
    assert (two.watts, two.source) == (160.0, "table: model a (Vendor page), 80 W x 2 packages")
    other = resolve_tdp(cpuinfo("Model B", cpus=6), table)
    assert (other.watts, other.source) == (60.0, "default 10 W per logical CPU x 6")
    assert TABLE_COLUMNS == ["pattern", "tdp_watts", "cores", "source"]


# --- resolving the TDP of a fake machine ---------------------------------------------------------------------------


def test_tdp_comes_from_the_table_for_a_known_model(proc: FakeProc) -> None:
    (proc.root / "cpuinfo").write_text(cpuinfo(GOLD_6248))
    source = EstimateSource(proc.procfs())
    assert source.tdp_watts == 150.0
    assert source.tdp_source == f"table: {GOLD_6248} (Intel ARK)"


def test_the_fake_machines_default_cpuinfo_is_an_epyc_7742(proc: FakeProc) -> None:
    source = EstimateSource(proc.procfs())
    assert source.tdp_watts == 225.0
    assert source.tdp_source == "table: AMD EPYC 7742 64-Core Processor (AMD product page)"


def test_a_two_socket_machine_has_twice_the_table_tdp(proc: FakeProc) -> None:
    (proc.root / "cpuinfo").write_text(cpuinfo(GOLD_6248, [0, 0, 1, 1], cpus=4))
    source = EstimateSource(proc.procfs())
    assert source.tdp_watts == 300.0
    assert source.tdp_source == f"table: {GOLD_6248} (Intel ARK), 150 W x 2 packages"


def test_an_unknown_cpu_gets_10_watts_per_logical_cpu(proc: FakeProc) -> None:
    (proc.root / "cpuinfo").write_text(cpuinfo("Some Future CPU 9000", cpus=6))
    source = EstimateSource(proc.procfs())
    assert source.tdp_watts == 60.0
    assert source.tdp_source == "default 10 W per logical CPU x 6"


def test_an_explicit_tdp_wins_and_needs_no_cpuinfo(proc: FakeProc) -> None:
    (proc.root / "cpuinfo").unlink()
    source = EstimateSource(proc.procfs(), tdp_watts=42)
    assert source.tdp_watts == 42.0
    assert source.tdp_source == "--cpu.tdp-watts"


def test_without_cpuinfo_and_without_an_explicit_tdp_construction_fails(proc: FakeProc) -> None:
    (proc.root / "cpuinfo").unlink()
    with pytest.raises(HardwareNotFound, match="cpuinfo"):
        EstimateSource(proc.procfs())


@pytest.mark.parametrize("bad", [0, -5.0, math.nan, math.inf, "100", True])
def test_an_invalid_tdp_is_a_value_error_naming_the_flag(proc: FakeProc, bad: object) -> None:
    with pytest.raises(ValueError, match="--cpu.tdp-watts"):
        EstimateSource(proc.procfs(), tdp_watts=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan])
def test_an_invalid_idle_fraction_is_a_value_error(proc: FakeProc, bad: float) -> None:
    with pytest.raises(ValueError, match="idle fraction"):
        EstimateSource(proc.procfs(), tdp_watts=100, idle_fraction=bad)


@pytest.mark.parametrize("bad", [0, -1.0, math.inf])
def test_an_invalid_dram_figure_is_a_value_error(proc: FakeProc, bad: float) -> None:
    with pytest.raises(ValueError, match="DRAM"):
        EstimateSource(proc.procfs(), tdp_watts=100, dram_watts_per_gib=bad)


# --- sampling ------------------------------------------------------------------------------------------------------


def test_domains_are_package_then_dram(proc: FakeProc) -> None:
    source = EstimateSource(proc.procfs(), tdp_watts=100)
    assert source.name == "estimate"
    assert source.domains == (EnergyDomain("estimate:package", "package", "0"),)
    with_dram = EstimateSource(proc.procfs(), tdp_watts=100, dram_watts_per_gib=0.4)
    assert [(z.name, z.domain, z.package) for z in with_dram.domains] == [
        ("estimate:package", "package", "0"),
        ("estimate:dram", "dram", "0"),
    ]


def test_the_first_sample_is_a_zero_baseline(proc: FakeProc, clock: FakeClock) -> None:
    sample = EstimateSource(proc.procfs(), tdp_watts=100, clock=clock).sample()
    assert isinstance(sample, EnergyReading)
    assert (sample.timestamp, sample.elapsed_seconds) == (1000.0, 0.0)
    assert all(isinstance(z, DomainEnergy) for z in sample.domains)
    assert joules(sample) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("busy_ticks", "idle_ticks", "expected_joules"),
    [
        (100, 100, 2 * (10 + 90 * 0.5)),  # 50%: 110 J
        (0, 200, 2 * 10),  # idle: only the idle fraction of TDP
        (200, 0, 2 * 100),  # flat out: TDP
        (0, 0, 2 * 10),  # no ticks passed: counted as idle
    ],
)
def test_energy_over_an_interval_follows_utilisation(
    proc: FakeProc, clock: FakeClock, busy_ticks: int, idle_ticks: int, expected_joules: float
) -> None:
    source = EstimateSource(proc.procfs(), tdp_watts=100, idle_fraction=0.1, clock=clock)
    source.sample()
    proc.advance(busy_ticks=busy_ticks, idle_ticks=idle_ticks)
    clock.now += 2.0
    sample = source.sample()
    assert sample.elapsed_seconds == 2.0
    assert joules(sample) == (expected_joules, expected_joules)


def test_totals_accumulate_interval_by_interval(proc: FakeProc, clock: FakeClock) -> None:
    source = EstimateSource(proc.procfs(), tdp_watts=100, idle_fraction=0.2, clock=clock)
    source.sample()
    proc.advance(busy_ticks=300, idle_ticks=100)  # 75%: 20 + 80 * 0.75 = 80 W
    clock.now += 1.0
    assert joules(source.sample()) == (80.0, 80.0)
    proc.advance(busy_ticks=0, idle_ticks=400)  # idle: 20 W
    clock.now += 3.0
    assert joules(source.sample()) == (140.0, 60.0)


def test_dram_is_watts_per_gib_of_used_memory(proc: FakeProc, clock: FakeClock) -> None:
    kib_per_gib = BYTES_PER_GIB // 1024
    (proc.root / "meminfo").write_text(f"MemTotal: {16 * kib_per_gib} kB\nMemAvailable: {12 * kib_per_gib} kB\n")
    source = EstimateSource(proc.procfs(), tdp_watts=100, dram_watts_per_gib=0.5, clock=clock)
    assert joules(source.sample(), "dram") == (0.0, 0.0)
    clock.now += 2.0
    sample = source.sample()
    assert joules(sample, "dram") == (4.0, 4.0)  # 2 s * 0.5 W/GiB * 4 GiB used
    assert joules(sample) == (20.0, 20.0)


def test_a_broken_stat_fails_the_whole_sample_and_the_next_one_covers_the_outage(
    proc: FakeProc, clock: FakeClock
) -> None:
    source = EstimateSource(proc.procfs(), tdp_watts=100, clock=clock)
    source.sample()
    (proc.root / "stat").write_text("cpu  1 2\n")  # too few columns
    clock.now += 1.0
    with pytest.raises(SourceError, match="stat"):
        source.sample()
    (proc.root / "stat").unlink()
    (proc.root / "stat").mkdir()  # unreadable even for root
    with pytest.raises(SourceError):
        source.sample()
    (proc.root / "stat").rmdir()
    proc.advance(busy_ticks=200, idle_ticks=0)  # rewrites stat: 100% since the last good sample
    clock.now += 1.0
    sample = source.sample()
    assert sample.elapsed_seconds == 2.0
    assert joules(sample) == (200.0, 200.0)


def test_a_broken_meminfo_fails_the_package_zone_too(proc: FakeProc, clock: FakeClock) -> None:
    source = EstimateSource(proc.procfs(), tdp_watts=100, dram_watts_per_gib=1.0, clock=clock)
    source.sample()
    saved = (proc.root / "meminfo").read_text()
    (proc.root / "meminfo").write_text("nothing here\n")
    proc.advance(busy_ticks=100, idle_ticks=0)
    clock.now += 1.0
    with pytest.raises(SourceError, match="meminfo"):
        source.sample()
    (proc.root / "meminfo").write_text(saved)
    clock.now += 1.0
    sample = source.sample()
    assert sample.elapsed_seconds == 2.0
    assert joules(sample)[1] == 200.0, "the failed sample did not consume the busy ticks"


def test_check_readable_reports_a_missing_or_broken_stat(proc: FakeProc) -> None:
    source = EstimateSource(proc.procfs(), tdp_watts=100, dram_watts_per_gib=1.0)
    source.check_readable()
    (proc.root / "meminfo").write_text("nothing here\n")
    with pytest.raises(SourceError, match="meminfo"):
        source.check_readable()
    (proc.root / "stat").write_text("no cpu line\n")
    with pytest.raises(SourceError, match="stat"):
        source.check_readable()
    (proc.root / "stat").unlink()
    with pytest.raises(HardwareNotFound):
        source.check_readable()


def test_joules_total_never_decreases(proc: FakeProc, clock: FakeClock) -> None:
    source = EstimateSource(proc.procfs(), tdp_watts=65, dram_watts_per_gib=0.3, clock=clock)
    steps = [(0, 0, 0.0), (50, 50, 1.0), (0, 0, 0.5), (400, 0, 0.0), (7, 93, 10.0), (1, 0, 0.001)]
    previous = [0.0, 0.0]
    deltas = [0.0, 0.0]
    for busy, idle, seconds in steps:
        proc.advance(busy_ticks=busy, idle_ticks=idle)
        clock.now += seconds
        sample = source.sample()
        for i, zone in enumerate(sample.domains):
            assert zone.joules_delta >= 0
            assert zone.joules_total >= previous[i]
            deltas[i] += zone.joules_delta
            previous[i] = zone.joules_total
    assert previous == pytest.approx(deltas, rel=1e-12)


def test_the_sampler_attributes_estimated_energy_like_rapl(proc: FakeProc, clock: FakeClock) -> None:
    proc.spawn(4242, ppid=1, start=1000)
    source = EstimateSource(proc.procfs(), tdp_watts=100, idle_fraction=0.1, clock=clock)
    ledger = Ledger()
    ledger.track(RUN, (4242,))
    sampler = Sampler(proc.procfs(), energy=source, ledger=ledger)  # type: ignore[arg-type]
    sampler.sample_once()
    proc.advance(busy_ticks=100, idle_ticks=100, running={4242: 100})  # the run is all the busy time
    clock.now += 2.0
    snapshot = sampler.sample_once()
    assert ledger.totals()[RUN].energy_joules["package"] == pytest.approx(110.0)
    assert [z.name for z in snapshot.energy_domains] == ["estimate:package"]
