"""Tests for the RAPL source: zone discovery, counter wraparound, sampling and start-up checks.

Every sysfs tree here is made of real files (tests/fakes/powercap.py) or is node_exporter's fixture.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from impact_exporter.sources import HardwareNotFound, HardwareUnreadable, SourceError
from impact_exporter.sources.rapl import (
    RaplSource,
    counter_delta_uj,
    discover_zones,
    read_energy_uj,
)
from tests.fakes.powercap import DEFAULT_MAX_ENERGY_RANGE_UJ, FakePowercap

NOBODY = 65534
RAPL_LOGGER = "impact_exporter.sources.rapl"


class FakeClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def labels(sysfs: Path) -> list[tuple[str, str, str]]:
    """Return (directory, domain, package) of each discovered zone, in discovery order."""
    return [(zone.name, zone.domain, zone.package) for zone in discover_zones(sysfs)]


def rapl_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Return the warning messages the RAPL module logged."""
    return [r.getMessage() for r in caplog.records if r.name == RAPL_LOGGER and r.levelno == logging.WARNING]


def joules_of(sample_zones: tuple, dirname: str) -> tuple[float, float]:
    """Return (joules_total, joules_delta) of the zone called ``dirname`` in a sample."""
    (zone_energy,) = [z for z in sample_zones if z.name == dirname]
    return zone_energy.joules_total, zone_energy.joules_delta


def outcome(action: Callable[[], object]) -> str:
    """Run ``action``; return "ok" or "<ExceptionType>: <message>"."""
    try:
        action()
    except Exception as error:  # noqa: BLE001 - the test inspects whatever was raised
        return f"{type(error).__name__}: {error}"
    return "ok"


def outcome_without_root(action: Callable[[], object]) -> str:
    """Return ``outcome(action)`` as a process that is not root.

    chmod does not stop root, so as root the action runs in a forked child that drops to uid/gid 65534.
    """
    if os.geteuid() != 0:
        return outcome(action)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child must never return into pytest
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            result = outcome(action)
        except BaseException as error:  # noqa: BLE001
            result = f"child setup failed: {error!r}"
        try:
            with os.fdopen(write_fd, "w") as pipe:
                pipe.write(result)
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        result = pipe.read()
    os.waitpid(pid, 0)
    return result


@pytest.fixture
def traversable_sysfs() -> Iterator[Path]:
    """A sysfs root that uid 65534 can walk into (pytest's tmp_path is private to root)."""
    root = Path(tempfile.mkdtemp(prefix="rapl-sysfs-"))
    root.chmod(0o755)
    old_umask = os.umask(0o022)  # directories the fake creates must be traversable too
    try:
        yield root
    finally:
        os.umask(old_umask)
        shutil.rmtree(root)


# --- discovery ------------------------------------------------------------------------------------------------


def test_intel_two_socket_has_a_package_and_dram_zone_per_socket(tmp_path: Path) -> None:
    FakePowercap.intel_two_socket(tmp_path)

    zones = discover_zones(tmp_path)

    assert [(z.name, z.domain, z.package) for z in zones] == [
        ("intel-rapl:0", "package", "0"),
        ("intel-rapl:0:0", "dram", "0"),
        ("intel-rapl:1", "package", "1"),
        ("intel-rapl:1:0", "dram", "1"),
    ]
    assert zones[3].path == tmp_path / "class" / "powercap" / "intel-rapl:1:0"
    assert {z.max_energy_range_uj for z in zones} == {262143328850}


def test_amd_has_package_and_core_without_dram(tmp_path: Path) -> None:
    FakePowercap.amd(tmp_path)

    assert labels(tmp_path) == [("intel-rapl:0", "package", "0"), ("intel-rapl:0:0", "core", "0")]


def test_laptop_subzones_and_psys_labelled_by_zone_index(tmp_path: Path) -> None:
    powercap = FakePowercap(tmp_path)
    powercap.add_zone("intel-rapl:0", "package-0")
    powercap.add_zone("intel-rapl:0:0", "core")
    powercap.add_zone("intel-rapl:0:1", "uncore")
    powercap.add_zone("intel-rapl:0:2", "dram")
    powercap.add_zone("intel-rapl:1", "psys")

    assert labels(tmp_path) == [
        ("intel-rapl:0", "package", "0"),
        ("intel-rapl:0:0", "core", "0"),
        ("intel-rapl:0:1", "uncore", "0"),
        ("intel-rapl:0:2", "dram", "0"),
        ("intel-rapl:1", "psys", "1"),
    ]


def test_package_label_comes_from_the_name_and_subzones_inherit_it(tmp_path: Path) -> None:
    powercap = FakePowercap(tmp_path)
    powercap.add_zone("intel-rapl:0", "package-1")
    powercap.add_zone("intel-rapl:0:0", "dram")
    powercap.add_zone("intel-rapl:1", "package-0")
    powercap.add_zone("intel-rapl:1:0", "dram")
    powercap.add_zone("intel-rapl:3", "package")  # no number: falls back to the zone index

    assert labels(tmp_path) == [
        ("intel-rapl:0", "package", "1"),
        ("intel-rapl:0:0", "dram", "1"),
        ("intel-rapl:1", "package", "0"),
        ("intel-rapl:1:0", "dram", "0"),
        ("intel-rapl:3", "package", "3"),
    ]


def test_zones_sort_by_number_not_text(tmp_path: Path) -> None:
    powercap = FakePowercap(tmp_path)
    powercap.add_zone("intel-rapl:10", "package-10")
    powercap.add_zone("intel-rapl:2", "package-2")
    powercap.add_zone("intel-rapl:2:10", "core")
    powercap.add_zone("intel-rapl:2:9", "dram")

    assert [name for name, _, _ in labels(tmp_path)] == [
        "intel-rapl:2",
        "intel-rapl:2:9",
        "intel-rapl:2:10",
        "intel-rapl:10",
    ]


def test_mmio_duplicates_of_a_package_are_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    powercap = FakePowercap.amd(tmp_path)
    powercap.add_zone("intel-rapl-mmio:0", "package-0")

    assert labels(tmp_path) == [("intel-rapl:0", "package", "0"), ("intel-rapl:0:0", "core", "0")]
    assert rapl_warnings(caplog) == []


def test_two_entries_for_one_directory_make_one_zone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    powercap = FakePowercap(tmp_path)
    powercap.add_zone("intel-rapl:0", "package-0")
    powercap.add_alias("intel-rapl:1", of="intel-rapl:0")

    assert labels(tmp_path) == [("intel-rapl:0", "package", "0")]
    assert rapl_warnings(caplog) == []


@pytest.mark.parametrize(
    "odd_name",
    ["foo", "package-0-die-1", "package 0", "dram 0", "DRAM", "package-x", "pâckage-0", "package-٣", "", "core\x00"],
)
def test_unknown_zone_name_is_skipped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, odd_name: str
) -> None:
    powercap = FakePowercap(tmp_path)
    powercap.add_zone("intel-rapl:0", "package-0")
    odd_dir = powercap.add_zone("intel-rapl:1", odd_name)

    assert labels(tmp_path) == [("intel-rapl:0", "package", "0")]
    (warning,) = rapl_warnings(caplog)
    assert str(odd_dir) in warning
    assert "unknown zone name" in warning


@pytest.mark.parametrize(
    ("dirname", "name"),
    [("intel-rapl:1", "dram"), ("intel-rapl:1", "core"), ("intel-rapl:0:1", "package-0"), ("intel-rapl:0:1", "psys")],
)
def test_zone_in_the_wrong_place_for_its_name_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, dirname: str, name: str
) -> None:
    powercap = FakePowercap(tmp_path)
    powercap.add_zone("intel-rapl:0", "package-0")
    powercap.add_zone(dirname, name)

    assert labels(tmp_path) == [("intel-rapl:0", "package", "0")]
    (warning,) = rapl_warnings(caplog)
    assert dirname in warning


def test_subzone_of_a_skipped_package_is_skipped_too(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    powercap = FakePowercap(tmp_path)
    powercap.add_zone("intel-rapl:0", "package-0-die-1")
    powercap.add_zone("intel-rapl:0:0", "dram")
    powercap.add_zone("intel-rapl:1:0", "dram")  # its parent intel-rapl:1 does not exist at all

    assert labels(tmp_path) == []
    warnings = rapl_warnings(caplog)
    assert len(warnings) == 3
    assert "intel-rapl:0:0" in warnings[1] and "parent zone intel-rapl:0" in warnings[1]
    assert "intel-rapl:1:0" in warnings[2] and "parent zone intel-rapl:1" in warnings[2]


def test_unreadable_name_file_is_skipped_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    powercap = FakePowercap.amd(tmp_path)
    broken = powercap.add_zone("intel-rapl:1", "package-1")
    (broken / "name").unlink()
    (broken / "name").mkdir()  # reading it fails even for root, unlike chmod 000

    assert labels(tmp_path) == [("intel-rapl:0", "package", "0"), ("intel-rapl:0:0", "core", "0")]
    (warning,) = rapl_warnings(caplog)
    assert str(broken) in warning and "cannot read name" in warning


def test_missing_name_file_is_skipped_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    powercap = FakePowercap(tmp_path)
    broken = powercap.add_zone("intel-rapl:0", "package-0")
    (broken / "name").unlink()

    assert labels(tmp_path) == []
    (warning,) = rapl_warnings(caplog)
    assert str(broken) in warning and "cannot read name" in warning


def test_name_that_is_not_utf8_is_skipped_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    powercap = FakePowercap(tmp_path)
    broken = powercap.add_zone("intel-rapl:0", "package-0")
    (broken / "name").write_bytes(b"package-\xff\n")

    assert labels(tmp_path) == []
    assert len(rapl_warnings(caplog)) == 1


@pytest.mark.parametrize("garbage", ["", "abc", "12.5", "0x3d09", "-5", "0", "262143328850 J"])
def test_garbage_max_energy_range_is_skipped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, garbage: str
) -> None:
    powercap = FakePowercap(tmp_path)
    powercap.add_zone("intel-rapl:0", "package-0")
    broken = powercap.add_zone("intel-rapl:1", "package-1")
    (broken / "max_energy_range_uj").write_text(f"{garbage}\n")

    assert labels(tmp_path) == [("intel-rapl:0", "package", "0")]
    (warning,) = rapl_warnings(caplog)
    assert str(broken) in warning and "max_energy_range_uj" in warning


def test_missing_max_energy_range_is_skipped_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    powercap = FakePowercap(tmp_path)
    broken = powercap.add_zone("intel-rapl:0", "package-0")
    (broken / "max_energy_range_uj").unlink()

    assert labels(tmp_path) == []
    (warning,) = rapl_warnings(caplog)
    assert str(broken) in warning and "max_energy_range_uj" in warning


def test_second_zone_with_the_same_labels_is_skipped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    powercap = FakePowercap(tmp_path)
    powercap.add_zone("intel-rapl:0", "package-0")
    powercap.add_zone("intel-rapl:0:0", "dram")
    powercap.add_zone("intel-rapl:0:1", "dram")
    powercap.add_zone("intel-rapl:1", "package-0")

    assert labels(tmp_path) == [("intel-rapl:0", "package", "0"), ("intel-rapl:0:0", "dram", "0")]
    warnings = rapl_warnings(caplog)
    assert len(warnings) == 2
    assert "intel-rapl:0:1" in warnings[0] and "already reported by zone intel-rapl:0:0" in warnings[0]
    assert "intel-rapl:1" in warnings[1] and "already reported by zone intel-rapl:0" in warnings[1]


def test_malformed_zone_directory_name_is_skipped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    powercap = FakePowercap(tmp_path)
    powercap.add_zone("intel-rapl:0", "package-0")
    (tmp_path / "class" / "powercap" / "intel-rapl:x").mkdir()

    assert labels(tmp_path) == [("intel-rapl:0", "package", "0")]
    (warning,) = rapl_warnings(caplog)
    assert "intel-rapl:x" in warning


def test_missing_powercap_directory_means_no_zones(tmp_path: Path) -> None:
    assert discover_zones(tmp_path) == []
    (tmp_path / "class").mkdir()
    assert discover_zones(tmp_path) == []


def test_powercap_without_rapl_zones_means_no_zones(tmp_path: Path) -> None:
    FakePowercap(tmp_path)  # only the intel-rapl control type, as in a VM with the driver loaded

    assert discover_zones(tmp_path) == []


@settings(max_examples=60, deadline=None)
@given(name=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20))
@example(name="package-0\n")
@example(name=" psys ")
@example(name="package-0-die-1")
def test_any_zone_name_is_either_used_or_skipped_never_a_crash(name: str) -> None:
    with tempfile.TemporaryDirectory() as root:
        FakePowercap(Path(root)).add_zone("intel-rapl:0", name)

        found = labels(Path(root))

    stripped = name.strip()
    if stripped == "psys":
        assert found == [("intel-rapl:0", "psys", "0")]
    elif re.fullmatch(r"package-[0-9]+", stripped):
        assert found == [("intel-rapl:0", "package", str(int(stripped[len("package-") :])))]
    elif stripped == "package":
        assert found == [("intel-rapl:0", "package", "0")]
    else:
        assert found == []


# --- node_exporter's fixture --------------------------------------------------------------------------------


def test_first_sample_matches_node_exporter_on_its_fixture(node_exporter_powercap: Path) -> None:
    source = RaplSource(node_exporter_powercap)

    sample = source.sample()

    assert [(e.domain, e.package, e.joules_total, e.joules_delta) for e in sample.domains] == [
        ("package", "0", 240422.366267, 0.0),
        ("core", "0", 118821.284256, 0.0),
    ]


# --- read_energy_uj -----------------------------------------------------------------------------------------


def test_read_energy_uj_returns_the_counter(tmp_path: Path) -> None:
    powercap = FakePowercap.amd(tmp_path)
    powercap.set_energy_uj("intel-rapl:0:0", 118821284256)

    assert read_energy_uj(discover_zones(tmp_path)[1]) == 118821284256


@pytest.mark.parametrize(
    ("breakage", "expected_text"),
    [
        ("garbage", "does not hold an integer"),
        ("negative", "negative"),
        ("empty", "does not hold an integer"),
        ("missing", "cannot read"),
        ("directory", "cannot read"),
    ],
)
def test_read_energy_uj_failure_is_a_source_error_naming_the_file(
    tmp_path: Path, breakage: str, expected_text: str
) -> None:
    powercap = FakePowercap.amd(tmp_path)
    (zone,) = [z for z in discover_zones(tmp_path) if z.name == "intel-rapl:0:0"]
    energy_file = zone.path / "energy_uj"
    if breakage == "garbage":
        energy_file.write_text("12x\n")
    elif breakage == "negative":
        powercap.set_energy_uj("intel-rapl:0:0", -1)
    elif breakage == "empty":
        energy_file.write_text("")
    elif breakage == "missing":
        energy_file.unlink()
    else:
        energy_file.unlink()
        energy_file.mkdir()

    with pytest.raises(SourceError) as raised:
        read_energy_uj(zone)

    assert type(raised.value) is SourceError  # not HardwareUnreadable: nothing a chmod would fix
    assert str(energy_file) in str(raised.value)
    assert expected_text in str(raised.value)


def test_read_energy_uj_permission_error_is_hardware_unreadable(traversable_sysfs: Path) -> None:
    powercap = FakePowercap.amd(traversable_sysfs)
    (zone, _) = discover_zones(traversable_sysfs)
    powercap.zone_dir("intel-rapl:0").joinpath("energy_uj").resolve().chmod(0o000)

    def read_both() -> None:
        (zone.path / "name").read_text()  # control: the tree itself is readable, only energy_uj is not
        read_energy_uj(zone)

    result = outcome_without_root(read_both)

    assert result.startswith(f"{HardwareUnreadable.__name__}: "), result
    assert "intel-rapl:0/energy_uj" in result and "permission denied" in result


# --- counter_delta_uj -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prev", "cur", "max_range", "expected", "delta"),
    [
        (100, 250, 1000, None, 150),  # plain increase
        (250, 250, 1000, None, 0),  # idle
        (900, 100, 1000, None, 200),  # wrapped once: 100 to the top, 100 after
        (0, 999, 1000, None, 999),
        (999, 0, 1000, None, 1),
        (900, 100, 1000, 200.0, 200),  # expected agrees: no extra wrap
        (900, 100, 1000, 699.0, 200),  # 499 short: less than half a range, no extra wrap
        (900, 100, 1000, 701.0, 1200),  # 501 short: more than half a range, one extra wrap
        (900, 100, 1000, 2150.0, 2200),  # ~2 ranges short: two extra wraps
        (100, 250, 1000, 1100.0, 1150),  # no visible wrap, yet a whole range passed
        (100, 250, 1000, 0.0, 150),  # power dropped: expected below delta changes nothing
        (100, 250, 1000, float("nan"), 150),
        (100, 250, 1000, float("inf"), 150),
        (1500, 100, 1000, None, 0),  # impossible previous reading above the range: never negative
    ],
)
def test_counter_delta_uj(prev: int, cur: int, max_range: int, expected: float | None, delta: int) -> None:
    assert counter_delta_uj(prev, cur, max_range, expected) == delta


@settings(max_examples=300)
@given(
    max_range=st.integers(min_value=1, max_value=2**64),
    data=st.data(),
)
def test_wrapped_delta_recovers_the_energy_exactly(max_range: int, data: st.DataObject) -> None:
    prev = data.draw(st.integers(min_value=0, max_value=max_range - 1), label="prev")
    energy = data.draw(st.integers(min_value=0, max_value=max_range - 1), label="energy")

    assert counter_delta_uj(prev, (prev + energy) % max_range, max_range) == energy


@settings(max_examples=300)
@given(
    max_range=st.integers(min_value=2, max_value=2**40),
    data=st.data(),
)
def test_expected_energy_recovers_many_wraps_exactly(max_range: int, data: st.DataObject) -> None:
    prev = data.draw(st.integers(min_value=0, max_value=max_range - 1), label="prev")
    energy = data.draw(st.integers(min_value=0, max_value=50 * max_range), label="energy")
    # the power changed by up to a third of a range over the gap, and the wraps are still counted right
    error = data.draw(st.integers(min_value=-(max_range // 3), max_value=max_range // 3), label="error")

    assert counter_delta_uj(prev, (prev + energy) % max_range, max_range, float(energy + error)) == energy


@given(
    prev=st.integers(min_value=0, max_value=2**64),
    cur=st.integers(min_value=0, max_value=2**64),
    max_range=st.integers(min_value=1, max_value=2**64),
    expected=st.none() | st.floats(allow_nan=True, allow_infinity=True),
)
def test_counter_delta_uj_is_never_negative(prev: int, cur: int, max_range: int, expected: float | None) -> None:
    assert counter_delta_uj(prev, cur, max_range, expected) >= 0


@settings(max_examples=100, deadline=None)
@given(
    start=st.integers(min_value=0, max_value=999_999),
    joules=st.floats(min_value=0, max_value=0.999_999, allow_nan=False),
)
def test_fake_advance_wraps_as_counter_delta_expects(start: int, joules: float) -> None:
    with tempfile.TemporaryDirectory() as root:
        powercap = FakePowercap(Path(root))
        powercap.add_zone("intel-rapl:0", "package-0", energy_uj=start, max_energy_range_uj=1_000_000)

        powercap.advance("intel-rapl:0", joules)

        after = powercap.energy_uj("intel-rapl:0")
    assert 0 <= after < 1_000_000
    assert counter_delta_uj(start, after, 1_000_000) == round(joules * 1e6)


# --- sample ------------------------------------------------------------------------------------------------------


def test_first_sample_starts_at_the_hardware_counter(tmp_path: Path) -> None:
    powercap = FakePowercap.intel_two_socket(tmp_path)
    powercap.set_energy_uj("intel-rapl:0", 240422366267)
    powercap.set_energy_uj("intel-rapl:1:0", 17)
    source = RaplSource(tmp_path, clock=FakeClock(1234.5))

    sample = source.sample()

    assert sample.timestamp == 1234.5
    assert sample.elapsed_seconds == 0.0
    assert [(e.name, e.joules_total, e.joules_delta) for e in sample.domains] == [
        ("intel-rapl:0", 240422.366267, 0.0),
        ("intel-rapl:0:0", 0.0, 0.0),
        ("intel-rapl:1", 0.0, 0.0),
        ("intel-rapl:1:0", 0.000017, 0.0),
    ]


def test_later_samples_add_the_energy_since_the_previous_one(tmp_path: Path) -> None:
    powercap = FakePowercap.intel_two_socket(tmp_path)
    powercap.set_energy_uj("intel-rapl:0", 1_000_000_000)
    clock = FakeClock(100.0)
    source = RaplSource(tmp_path, clock=clock)
    source.sample()
    powercap.advance("intel-rapl:0", 12.345678)
    powercap.advance("intel-rapl:1:0", 3.0)
    clock.now = 102.5

    sample = source.sample()

    assert sample.elapsed_seconds == 2.5
    assert joules_of(sample.domains, "intel-rapl:0") == (1012.345678, 12.345678)
    assert joules_of(sample.domains, "intel-rapl:0:0") == (0.0, 0.0)
    assert joules_of(sample.domains, "intel-rapl:1:0") == (3.0, 3.0)


def test_counter_that_wraps_once_between_samples(tmp_path: Path) -> None:
    powercap = FakePowercap(tmp_path)
    powercap.add_zone("intel-rapl:0", "package-0", energy_uj=DEFAULT_MAX_ENERGY_RANGE_UJ - 2_000_000)
    clock = FakeClock(0.0)
    source = RaplSource(tmp_path, clock=clock)
    source.sample()
    powercap.advance("intel-rapl:0", 5.123456)
    assert powercap.energy_uj("intel-rapl:0") == 3_123_456  # the counter did wrap
    clock.now = 1.0

    (zone_energy,) = source.sample().domains

    assert zone_energy.joules_delta == 5.123456
    assert zone_energy.joules_total == 262146.452306  # 262143.328850 - 2 + 5.123456


@pytest.mark.parametrize("gap_watts", [50, 40, 60])  # steady, and a power change of 20% during the gap
def test_counter_that_wraps_twice_during_a_long_gap(tmp_path: Path, gap_watts: int) -> None:
    powercap = FakePowercap(tmp_path)
    powercap.add_zone("intel-rapl:0", "package-0", energy_uj=900_000_000, max_energy_range_uj=1_000_000_000)
    clock = FakeClock(0.0)
    source = RaplSource(tmp_path, clock=clock)
    source.sample()
    powercap.advance("intel-rapl:0", 50.0)  # 50 W for 1 s establishes the power
    clock.now = 1.0
    source.sample()
    gap_joules = gap_watts * 45  # 1800 to 2700 J: 1.8 to 2.7 ranges of 1000 J
    powercap.advance("intel-rapl:0", gap_joules)
    clock.now = 46.0

    sample = source.sample()

    (zone_energy,) = sample.domains
    assert sample.elapsed_seconds == 45.0
    assert zone_energy.joules_delta == gap_joules
    assert zone_energy.joules_total == 900.0 + 50.0 + gap_joules


def test_long_gap_before_any_interval_counts_a_single_wrap(tmp_path: Path) -> None:
    # Without a previous interval there is no power to predict from: the readings show one wrap.
    powercap = FakePowercap(tmp_path)
    powercap.add_zone("intel-rapl:0", "package-0", energy_uj=900_000_000, max_energy_range_uj=1_000_000_000)
    clock = FakeClock(0.0)
    source = RaplSource(tmp_path, clock=clock)
    source.sample()
    powercap.advance("intel-rapl:0", 2250.0)
    clock.now = 45.0

    (zone_energy,) = source.sample().domains

    assert zone_energy.joules_delta == 250.0


@pytest.mark.parametrize("breakage", ["directory", "deleted"])
def test_failed_sample_changes_nothing_and_the_next_covers_the_outage(tmp_path: Path, breakage: str) -> None:
    powercap = FakePowercap.intel_two_socket(tmp_path)
    powercap.set_energy_uj("intel-rapl:0", 5_000_000)
    clock = FakeClock(10.0)
    source = RaplSource(tmp_path, clock=clock)
    source.sample()
    powercap.advance("intel-rapl:0", 10.0)
    clock.now = 11.0
    source.sample()
    broken_file = powercap.zone_dir("intel-rapl:1:0").joinpath("energy_uj")
    broken_file.unlink()
    if breakage == "directory":
        broken_file.mkdir()
    powercap.advance("intel-rapl:0", 20.0)
    clock.now = 12.0

    with pytest.raises(SourceError, match=re.escape(str(broken_file))):
        source.sample()

    if breakage == "directory":
        broken_file.rmdir()
    powercap.set_energy_uj("intel-rapl:1:0", 0)
    powercap.advance("intel-rapl:0", 30.0)
    clock.now = 13.0
    sample = source.sample()
    assert sample.elapsed_seconds == 2.0
    assert joules_of(sample.domains, "intel-rapl:0") == (5.0 + 10.0 + 50.0, 50.0)


def test_sample_without_permission_is_hardware_unreadable(traversable_sysfs: Path) -> None:
    powercap = FakePowercap.amd(traversable_sysfs)
    source = RaplSource(traversable_sysfs)
    powercap.zone_dir("intel-rapl:0:0").joinpath("energy_uj").resolve().chmod(0o000)

    result = outcome_without_root(source.sample)

    assert result.startswith(f"{HardwareUnreadable.__name__}: "), result
    assert "intel-rapl:0:0/energy_uj" in result


def test_source_lists_the_zones_it_found(tmp_path: Path) -> None:
    FakePowercap.amd(tmp_path)

    assert [(z.domain, z.package) for z in RaplSource(tmp_path).zones] == [("package", "0"), ("core", "0")]


def test_zones_are_discovered_once(tmp_path: Path) -> None:
    powercap = FakePowercap.amd(tmp_path)
    source = RaplSource(tmp_path)
    powercap.add_zone("intel-rapl:1", "package-1")

    assert len(source.zones) == 2
    assert len(source.sample().domains) == 2


# --- check_readable -----------------------------------------------------------------------------------------


def test_check_readable_without_zones_is_hardware_not_found(tmp_path: Path) -> None:
    FakePowercap(tmp_path)

    with pytest.raises(HardwareNotFound, match=re.escape(str(tmp_path / "class" / "powercap"))):
        RaplSource(tmp_path).check_readable()


def test_check_readable_without_powercap_is_hardware_not_found(tmp_path: Path) -> None:
    with pytest.raises(HardwareNotFound, match="no RAPL zones"):
        RaplSource(tmp_path).check_readable()


def test_check_readable_passes_when_every_counter_is_readable(tmp_path: Path) -> None:
    FakePowercap.intel_two_socket(tmp_path)

    assert RaplSource(tmp_path).check_readable() is None


def test_check_readable_explains_how_to_fix_root_only_counters(traversable_sysfs: Path) -> None:
    powercap = FakePowercap.intel_two_socket(traversable_sysfs)
    source = RaplSource(traversable_sysfs)
    for dirname in ("intel-rapl:0", "intel-rapl:1:0"):
        powercap.zone_dir(dirname).joinpath("energy_uj").resolve().chmod(0o000)

    result = outcome_without_root(source.check_readable)

    assert result.startswith(f"{HardwareUnreadable.__name__}: "), result
    assert "intel-rapl:0, intel-rapl:1:0" in result  # the two unreadable zones, not the readable ones
    assert "intel-rapl:0:0" not in result
    for fix in ("root", "systemd", "deploy/systemd/impact-exporter.service", "chmod a+r", "udev", "CVE-2020-8694"):
        assert fix in result
    assert f"chmod a+r {traversable_sysfs}/class/powercap/intel-rapl:*/energy_uj" in result


def test_check_readable_reports_other_read_errors_as_source_errors(tmp_path: Path) -> None:
    powercap = FakePowercap.amd(tmp_path)
    source = RaplSource(tmp_path)
    powercap.zone_dir("intel-rapl:0").joinpath("energy_uj").write_text("garbage\n")

    with pytest.raises(SourceError, match="does not hold an integer") as raised:
        source.check_readable()
    assert type(raised.value) is SourceError
