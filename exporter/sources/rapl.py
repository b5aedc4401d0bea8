"""RAPL energy counters from the Linux powercap interface (``<sysfs>/class/powercap``).

The kernel's ``intel_rapl`` driver (also used for AMD Zen) exposes one directory per zone: top-level zones
``intel-rapl:N`` (a CPU package, or ``psys`` for the whole platform) and subzones ``intel-rapl:N:M`` (``dram``,
``core``, ``uncore``). Each has a cumulative ``energy_uj`` counter that wraps at ``max_energy_range_uj``.

This module finds the zones and turns the wrapping counters into monotonic joule totals, the same numbers
node_exporter reports as ``node_rapl_<domain>_joules_total``. It keeps only the previous reading per zone.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from impact_exporter.sources import HardwareNotFound, HardwareUnreadable, SourceError
from impact_exporter.sources.energy import DomainEnergy, EnergyDomain, EnergyReading

logger = logging.getLogger(__name__)

UJ_PER_JOULE = 1_000_000

# ASCII digits only: a str pattern's \d would also accept other scripts' digits, which int() then parses.
_ZONE_DIRNAME = re.compile(r"intel-rapl:([0-9]+)(?::([0-9]+))?")
_PACKAGE_NAME = re.compile(r"package(?:-([0-9]+))?")
_TOP_LEVEL_DOMAINS = frozenset({"package", "psys"})
_SUBZONE_DOMAINS = frozenset({"dram", "core", "uncore"})

SYSTEMD_UNIT = "deploy/systemd/impact-exporter.service"
RAPL_TMPFILES = "deploy/systemd/impact-exporter-rapl.conf"
RAPL_UDEV_RULE = "deploy/systemd/90-impact-exporter-rapl.rules"


@dataclass(frozen=True)
class RaplZone(EnergyDomain):
    """One powercap zone: its labels (``name`` is the sysfs directory name, e.g. "intel-rapl:0:1") and where its
    counter lives."""

    path: Path  # the zone directory
    max_energy_range_uj: int  # the counter wraps to 0 after this value


class _SkipZone(Exception):
    """Internal: why a zone directory cannot be used; discovery logs it once and moves on."""


@dataclass(frozen=True)
class _ZoneDir:
    """A ``intel-rapl:N[:M]`` entry of class/powercap with its parsed indices."""

    path: Path
    top_index: int
    sub_index: int | None

    @property
    def sort_key(self) -> tuple[int, int]:
        """Parents (sub_index None) sort before their subzones, and zones by number (2 before 10)."""
        return (self.top_index, -1 if self.sub_index is None else self.sub_index)


@dataclass(frozen=True)
class _State:
    """What one successful sample leaves behind for the next: all tuples are in ``RaplSource.zones`` order."""

    timestamp: float
    energy_uj: tuple[int, ...]  # raw counter values
    total_uj: tuple[int, ...]  # monotonic totals, kept in integers so they stay exact
    power_uw: tuple[float | None, ...]  # average power of the interval that ended here (None: no interval yet)


def discover_zones(sysfs: Path) -> list[RaplZone]:
    """Return the usable RAPL zones under ``<sysfs>/class/powercap``, parents first, by zone number.

    A zone that cannot be labelled or read sensibly is skipped with one warning (never an exception), so one
    odd zone costs only its own metrics. ``intel-rapl-mmio:*`` zones are ignored: they duplicate a package.
    Raises HardwareUnreadable only when class/powercap itself cannot be listed.
    """
    powercap = sysfs / "class" / "powercap"
    if not powercap.is_dir():
        return []
    zones: list[RaplZone] = []
    real_paths: set[Path] = set()
    package_label_by_index: dict[int, str] = {}
    zone_by_labels: dict[tuple[str, str], RaplZone] = {}
    for zone_dir in _zone_dirs(powercap):
        real_path = zone_dir.path.resolve()
        if real_path in real_paths:
            logger.debug("RAPL zone %s is the same directory as an earlier zone; ignored", zone_dir.path)
            continue
        real_paths.add(real_path)
        try:
            zone = _zone_from_dir(zone_dir, package_label_by_index)
            _check_labels_unique(zone, zone_by_labels)
        except _SkipZone as why:
            logger.warning("skipping RAPL zone %s: %s", zone_dir.path, why)
            continue
        if zone.domain == "package":
            package_label_by_index[zone_dir.top_index] = zone.package
        zone_by_labels[(zone.domain, zone.package)] = zone
        zones.append(zone)
    return zones


def _zone_dirs(powercap: Path) -> list[_ZoneDir]:
    """Return the ``intel-rapl:N[:M]`` entries of class/powercap, sorted so parents come first."""
    zone_dirs: list[_ZoneDir] = []
    try:
        entries = list(powercap.iterdir())
    except OSError as error:
        raise HardwareUnreadable(f"cannot list RAPL zones in {powercap}: {error}") from error
    for entry in entries:
        if not entry.name.startswith("intel-rapl:"):
            continue  # the `intel-rapl` control type, intel-rapl-mmio duplicates, other control types
        match = _ZONE_DIRNAME.fullmatch(entry.name)
        if match is None:
            logger.warning("skipping RAPL zone %s: directory name is not intel-rapl:N or intel-rapl:N:M", entry)
            continue
        sub_index = None if match.group(2) is None else int(match.group(2))
        zone_dirs.append(_ZoneDir(entry, int(match.group(1)), sub_index))
    return sorted(zone_dirs, key=lambda zone_dir: zone_dir.sort_key)


def _zone_from_dir(zone_dir: _ZoneDir, package_label_by_index: dict[int, str]) -> RaplZone:
    """Return the zone described by ``zone_dir``'s files; raise _SkipZone saying why it is unusable."""
    zone_name = _read_zone_file(zone_dir.path / "name")
    domain, package_in_name = _domain_from_zone_name(zone_name)
    if zone_dir.sub_index is None:
        if domain not in _TOP_LEVEL_DOMAINS:
            raise _SkipZone(f"a top-level zone named {zone_name!r} is not a package or psys")
        package = package_in_name if package_in_name is not None else str(zone_dir.top_index)
    else:
        if domain not in _SUBZONE_DOMAINS:
            raise _SkipZone(f"a subzone named {zone_name!r} is not dram, core or uncore")
        if zone_dir.top_index not in package_label_by_index:
            raise _SkipZone(f"its parent zone intel-rapl:{zone_dir.top_index} is not a usable package zone")
        package = package_label_by_index[zone_dir.top_index]
    max_range_uj = _parse_max_range_uj(_read_zone_file(zone_dir.path / "max_energy_range_uj"))
    return RaplZone(zone_dir.path.name, domain, package, zone_dir.path, max_range_uj)


def _read_zone_file(path: Path) -> str:
    """Return the stripped text of a small zone file; raise _SkipZone if it cannot be read as text."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, ValueError) as error:  # ValueError: UnicodeDecodeError
        raise _SkipZone(f"cannot read {path.name}: {error}") from error


def _domain_from_zone_name(zone_name: str) -> tuple[str, str | None]:
    """Return (domain, package number from ``package-N`` or None) for a zone's ``name``; _SkipZone if unknown."""
    package_match = _PACKAGE_NAME.fullmatch(zone_name)
    if package_match is not None:
        number = package_match.group(1)
        return "package", None if number is None else str(int(number))
    if zone_name in _TOP_LEVEL_DOMAINS or zone_name in _SUBZONE_DOMAINS:
        return zone_name, None
    raise _SkipZone(f"unknown zone name {zone_name!r}")


def _parse_max_range_uj(text: str) -> int:
    """Return ``max_energy_range_uj`` as a positive integer; _SkipZone otherwise (wrap arithmetic needs it)."""
    try:
        max_range_uj = int(text)
    except ValueError as error:
        raise _SkipZone(f"max_energy_range_uj is not an integer: {text!r}") from error
    if max_range_uj <= 0:
        raise _SkipZone(f"max_energy_range_uj is not positive: {max_range_uj}")
    return max_range_uj


def _check_labels_unique(zone: RaplZone, zone_by_labels: dict[tuple[str, str], RaplZone]) -> None:
    """Raise _SkipZone if an earlier zone has the same labels: two series with one name would be ambiguous."""
    earlier = zone_by_labels.get((zone.domain, zone.package))
    if earlier is not None:
        raise _SkipZone(f"domain {zone.domain!r} package {zone.package!r} is already reported by zone {earlier.name}")


def read_energy_uj(zone: RaplZone) -> int:
    """Return the zone's raw ``energy_uj`` counter.

    Raises HardwareUnreadable on a permission error (root-only counters) and SourceError, naming the file, on
    any other read error or content that is not a non-negative integer. It runs for every zone at every sample,
    so it reads with ``os.open``/``os.read`` on a string path, much cheaper than ``Path.read_text``.
    """
    path = f"{zone.path}/energy_uj"
    try:
        text = _read_counter_text(path)
    except PermissionError as error:
        raise HardwareUnreadable(f"cannot read {path}: permission denied") from error
    except (OSError, ValueError) as error:  # ValueError: UnicodeDecodeError
        raise SourceError(f"cannot read {path}: {error}") from error
    try:
        energy_uj = int(text.strip())
    except ValueError as error:
        raise SourceError(f"{path} does not hold an integer: {text!r}") from error
    if energy_uj < 0:
        raise SourceError(f"{path} holds a negative value: {energy_uj}")
    return energy_uj


def _read_counter_text(path: str) -> str:
    """The text of a counter file, in one read: a counter is a few bytes, and sysfs gives a whole attribute at once."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096).decode("utf-8")
    finally:
        os.close(fd)


def counter_delta_uj(prev_uj: int, cur_uj: int, max_range_uj: int, expected_uj: float | None = None) -> int:
    """Return the energy between two readings of a counter that wraps to 0 after ``max_range_uj``.

    A smaller current reading means the counter wrapped once. A counter can also wrap several times during a
    long gap, which the readings alone cannot show: ``expected_uj`` (what the previous interval's power
    predicts for this one) adds whole ranges when it exceeds the single-wrap delta by at least half a range.
    Never negative.
    """
    if cur_uj >= prev_uj:
        delta_uj = cur_uj - prev_uj
    else:
        delta_uj = max(0, max_range_uj - prev_uj + cur_uj)
    return delta_uj + max_range_uj * _extra_wraps(delta_uj, max_range_uj, expected_uj)


def _extra_wraps(delta_uj: int, max_range_uj: int, expected_uj: float | None) -> int:
    """Return how many whole ranges the counter most likely wrapped beyond what ``delta_uj`` shows (>= 0)."""
    if expected_uj is None or max_range_uj <= 0 or not math.isfinite(expected_uj):
        return 0
    missing_uj = expected_uj - delta_uj
    if missing_uj < max_range_uj / 2:
        return 0
    return max(0, round(missing_uj / max_range_uj))


class RaplSource:
    """Reads all RAPL zones of one machine and keeps their joule totals monotonic across counter wraps.

    Zones are discovered once, at construction. ``sample()`` is all-or-nothing: a failed read leaves the
    previous reading in place, so the next successful sample's delta covers the outage.
    """

    name = "rapl"  # also the method label of its readings: measured by RAPL

    def __init__(self, sysfs: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self._sysfs = sysfs
        self._clock = clock
        self._zones = tuple(discover_zones(sysfs))
        self._state: _State | None = None

    @property
    def zones(self) -> tuple[RaplZone, ...]:
        """The zones found at construction, in the order ``sample()`` reports them."""
        return self._zones

    def check_readable(self) -> None:
        """Raise unless there are zones and this process may read them; meant for start-up, to fail early.

        Raises HardwareNotFound when there are no zones, HardwareUnreadable (saying how to fix it) when a
        counter is root-only, and SourceError for other read errors.
        """
        powercap = self._sysfs / "class" / "powercap"
        if not self._zones:
            raise HardwareNotFound(
                f"no RAPL zones under {powercap} (no intel_rapl driver loaded, or a VM without RAPL)"
            )
        unreadable: list[RaplZone] = []
        for zone in self._zones:
            try:
                read_energy_uj(zone)
            except HardwareUnreadable:
                unreadable.append(zone)
        if unreadable:
            raise HardwareUnreadable(_permission_advice(powercap, unreadable))

    def sample(self) -> EnergyReading:
        """Read every zone and return their wrap-corrected energies; raise (state untouched) if any zone cannot be
        read.

        The first sample starts each total at the hardware counter (like node_exporter), so a restarted
        exporter continues where the counter is; later samples add the wrap-corrected delta.
        """
        energy_uj = tuple(read_energy_uj(zone) for zone in self._zones)
        timestamp = self._clock()
        previous = self._state
        if previous is None:
            elapsed = 0.0
            deltas_uj = tuple(0 for _ in energy_uj)
            self._state = _State(timestamp, energy_uj, energy_uj, tuple(None for _ in energy_uj))
        else:
            elapsed = timestamp - previous.timestamp
            deltas_uj = self._deltas_uj(previous, energy_uj, elapsed)
            self._state = _State(
                timestamp,
                energy_uj,
                tuple(total + delta for total, delta in zip(previous.total_uj, deltas_uj, strict=True)),
                tuple(delta / elapsed if elapsed > 0 else None for delta in deltas_uj),
            )
        return EnergyReading(
            timestamp=timestamp,
            elapsed_seconds=elapsed,
            domains=tuple(
                DomainEnergy.of(zone, total_uj / UJ_PER_JOULE, delta_uj / UJ_PER_JOULE, self.name, measured=True)
                for zone, total_uj, delta_uj in zip(self._zones, self._state.total_uj, deltas_uj, strict=True)
            ),
        )

    def _deltas_uj(self, state: _State, energy_uj: tuple[int, ...], elapsed: float) -> tuple[int, ...]:
        """Return each zone's energy since ``state``, using the previous interval's power to count extra wraps."""
        return tuple(
            counter_delta_uj(
                prev,
                cur,
                zone.max_energy_range_uj,
                None if power_uw is None else power_uw * elapsed,
            )
            for zone, prev, cur, power_uw in zip(self._zones, state.energy_uj, energy_uj, state.power_uw, strict=True)
        )


def _permission_advice(powercap: Path, unreadable: list[RaplZone]) -> str:
    """Return the start-up error for root-only counters: what is wrong, why, and the ways to fix it."""
    names = ", ".join(zone.name for zone in unreadable)
    return (
        f"cannot read energy_uj of RAPL zones {names} under {powercap}: permission denied. "
        "Since the PLATYPUS power side channel (CVE-2020-8694) kernels let only root read energy_uj. "
        "Fix it in one of three ways: make the counters readable by a group that only the exporter is in, with "
        f"the shipped systemd-tmpfiles rule {RAPL_TMPFILES} (group impact-rapl; the udev rule {RAPL_UDEV_RULE} "
        f"applies it again when the powercap driver loads) and the shipped systemd unit ({SYSTEMD_UNIT}), "
        "which runs the exporter in that group; run impact-exporter as root; "
        f"or make the counters readable to every local user, which reopens that side channel: "
        f"`sudo chmod a+r {powercap}/intel-rapl:*/energy_uj` (until reboot)."
    )
