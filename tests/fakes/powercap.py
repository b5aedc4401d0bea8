"""A writer of real powercap sysfs trees, for tests that read RAPL zones from files.

The layout follows the kernel's: each zone's files live under
``<sysfs>/devices/virtual/powercap/<control type>/<parent zone>/<zone>`` and ``<sysfs>/class/powercap`` holds
one symlink per zone (and per control type), flat. Counters wrap exactly as the kernel's do::

    powercap = FakePowercap.intel_two_socket(tmp_path)
    powercap.advance("intel-rapl:0", joules=12.5)
    RaplSource(tmp_path).sample()
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

from impact_exporter.sources.procfs import ProcFS
from tests.fakes.procfs import TICKS

UJ_PER_JOULE = 1_000_000
DEFAULT_MAX_ENERGY_RANGE_UJ = 262143328850  # what recent Intel packages report


class FakePowercap:
    """A powercap tree under ``sysfs`` whose zones tests create and whose counters tests move."""

    def __init__(self, sysfs: Path) -> None:
        self.sysfs = sysfs
        self.powercap = sysfs / "class" / "powercap"
        self.devices = sysfs / "devices" / "virtual" / "powercap"
        self.powercap.mkdir(parents=True, exist_ok=True)
        self._ensure_control_type("intel-rapl")

    def zone_dir(self, dirname: str) -> Path:
        """Return the zone's path as discovery sees it: ``<sysfs>/class/powercap/<dirname>``."""
        return self.powercap / dirname

    def add_zone(
        self,
        dirname: str,
        name: str,
        energy_uj: int = 0,
        max_energy_range_uj: int = DEFAULT_MAX_ENERGY_RANGE_UJ,
    ) -> Path:
        """Create zone ``dirname`` (e.g. "intel-rapl:0:1") with its ``name`` file and counter; return its path.

        A subzone's directory nests in its parent's, as in the kernel, whether or not the parent was added.
        """
        control_type = dirname.split(":", 1)[0]
        self._ensure_control_type(control_type)
        device_dir = self.devices / control_type / _nested_zone_path(dirname)
        device_dir.mkdir(parents=True)
        _write(device_dir / "name", f"{name}\n")
        _write(device_dir / "max_energy_range_uj", f"{max_energy_range_uj}\n")
        _write(device_dir / "enabled", "1\n")
        _write(device_dir / "energy_uj", f"{energy_uj}\n")
        self.powercap.joinpath(dirname).symlink_to(os.path.relpath(device_dir, self.powercap))
        return self.zone_dir(dirname)

    def add_alias(self, dirname: str, of: str) -> Path:
        """Add a second class/powercap entry ``dirname`` that links to zone ``of``'s directory."""
        alias = self.powercap / dirname
        alias.symlink_to(os.path.relpath(self.zone_dir(of).resolve(), self.powercap))
        return alias

    def set_energy_uj(self, dirname: str, value: int) -> None:
        """Set the zone's counter atomically, so a concurrent reader sees the old or the new value, never half."""
        zone_dir = self.zone_dir(dirname).resolve()
        fd, temp_name = tempfile.mkstemp(dir=zone_dir, prefix=".energy_uj.")
        try:
            with os.fdopen(fd, "w") as temp:
                temp.write(f"{value}\n")
            os.chmod(temp_name, 0o644)
            os.replace(temp_name, zone_dir / "energy_uj")
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise

    def energy_uj(self, dirname: str) -> int:
        """Return the zone's current counter."""
        return int(self.zone_dir(dirname).joinpath("energy_uj").read_text())

    def max_energy_range_uj(self, dirname: str) -> int:
        """Return the value at which the zone's counter wraps to 0."""
        return int(self.zone_dir(dirname).joinpath("max_energy_range_uj").read_text())

    def advance(self, dirname: str, joules: float) -> None:
        """Add ``joules`` to the zone's counter, wrapping as the kernel does.

        Exact in integer microjoules: for energy below one range, ``counter_delta_uj(before, after, max_range)``
        is ``round(joules * 1e6)``. Larger energy wraps the counter several times, as in a long scrape gap.
        """
        added_uj = round(joules * UJ_PER_JOULE)
        if added_uj < 0:
            raise ValueError(f"energy counters only grow; cannot add {joules} J")
        max_range_uj = self.max_energy_range_uj(dirname)
        self.set_energy_uj(dirname, (self.energy_uj(dirname) + added_uj) % max_range_uj)

    @classmethod
    def intel_two_socket(cls, sysfs: Path) -> FakePowercap:
        """A two-socket Intel server: a package zone per socket, each with a dram subzone."""
        powercap = cls(sysfs)
        powercap.add_zone("intel-rapl:0", "package-0")
        powercap.add_zone("intel-rapl:0:0", "dram")
        powercap.add_zone("intel-rapl:1", "package-1")
        powercap.add_zone("intel-rapl:1:0", "dram")
        return powercap

    @classmethod
    def amd(cls, sysfs: Path) -> FakePowercap:
        """An AMD Zen machine: one package zone with a core subzone and no dram."""
        powercap = cls(sysfs)
        powercap.add_zone("intel-rapl:0", "package-0")
        powercap.add_zone("intel-rapl:0:0", "core")
        return powercap

    def _ensure_control_type(self, control_type: str) -> None:
        """Create the control type directory (``enabled`` = 1) and its class/powercap link, once."""
        control_dir = self.devices / control_type
        if control_dir.exists():
            return
        control_dir.mkdir(parents=True)
        _write(control_dir / "enabled", "1\n")
        self.powercap.joinpath(control_type).symlink_to(os.path.relpath(control_dir, self.powercap))


def _nested_zone_path(dirname: str) -> Path:
    """Return ``intel-rapl:0/intel-rapl:0:1`` for ``intel-rapl:0:1``: a subzone sits inside its parent."""
    parts = dirname.split(":")
    return Path(*(":".join(parts[:end]) for end in range(2, len(parts) + 1)))


def _write(path: Path, text: str) -> None:
    """Write a zone file readable by everyone (the kernel's energy_uj is root-only; tests may chmod it)."""
    path.write_text(text)
    path.chmod(0o644)


class PowerDriver(threading.Thread):
    """Advances the fake counters at constant power and keeps the ground truth: joules written per zone."""

    def __init__(
        self, powercap: FakePowercap, watts: dict[str, float], seconds: float, step_seconds: float = 0.05
    ) -> None:
        super().__init__(daemon=True)
        self.step_seconds = step_seconds
        self.powercap = powercap
        self.watts = watts
        self.seconds = seconds
        self.joules = {zone: 0.0 for zone in watts}
        self.wraps = {zone: 0 for zone in watts}

    def run(self) -> None:
        started = last = time.monotonic()
        while last - started < self.seconds:
            time.sleep(self.step_seconds)
            now = time.monotonic()
            for zone, watts in self.watts.items():
                before = self.powercap.energy_uj(zone)
                joules = round(watts * (now - last) * 1e6) / 1e6
                self.powercap.advance(zone, joules)
                self.joules[zone] += joules
                self.wraps[zone] += self.powercap.energy_uj(zone) < before
            last = now


TICK_JOULES = 0.01
"""BusyTickPower's joules per busy CPU tick of the machine: 1 W per busy core."""


class BusyTickPower(threading.Thread):
    """Writes a fake package counter as TICK_JOULES per busy tick of the real machine (its /proc/stat), every
    10 ms, until ``stopped`` is set: for tests of real processes, whose share of the machine's busy time a test
    cannot set. A run's exact energy is then TICK_JOULES per tick of its own, however loaded the machine is."""

    def __init__(self, powercap: FakePowercap, zone: str) -> None:
        super().__init__(daemon=True)
        self.powercap = powercap
        self.zone = zone
        self.procfs = ProcFS(Path("/proc"))
        self.stopped = threading.Event()
        self.start_ticks = self.busy_ticks()

    def busy_ticks(self) -> float:
        return self.procfs.cpu_times().busy_seconds * TICKS

    def run(self) -> None:
        while not self.stopped.wait(0.01):
            joules = (self.busy_ticks() - self.start_ticks) * TICK_JOULES
            self.powercap.set_energy_uj(self.zone, round(1e6 + joules * 1e6))
