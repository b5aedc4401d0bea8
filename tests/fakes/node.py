"""A fake machine for end-to-end tests: powercap and procfs trees the test drives, read by a real exporter.

The run's process (PID) uses a known share of the machine's busy CPU time and of its memory, so the energy
the exporter must attribute to it is known exactly: share x the energy written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from experiment_impact_tracker import ExporterClient
from tests.fakes.powercap import FakePowercap
from tests.fakes.procfs import PAGE, FakeProc
from tests.servers import short_socket_path

PID = 4242
PACKAGE, DRAM = "intel-rapl:0", "intel-rapl:0:0"
PACKAGE_WATTS, DRAM_WATTS = 40.0, 6.0
STEP_SECONDS = 0.01  # fine steps: a sample that lands between two files of a step skews little
BUSY_TICKS_PER_STEP = 10  # ten busy cores at 100 ticks per second each
RUN_TICKS_PER_STEP = 5  # the run's process: half of the busy time
MEMORY_SHARE = 0.25


@dataclass
class Node:
    """One fake machine: its powercap and procfs trees, the energy written so far, and its exporter."""

    root: Path
    powercap: FakePowercap = field(init=False)
    proc: FakeProc = field(init=False)
    socket_path: Path = field(default_factory=short_socket_path)
    package_joules: float = 0.0
    dram_joules: float = 0.0

    def __post_init__(self) -> None:
        self.powercap = FakePowercap(self.root / "sys")
        self.powercap.add_zone(PACKAGE, "package-0", energy_uj=3_000_000)
        self.powercap.add_zone(DRAM, "dram", energy_uj=4_000_000)
        self.proc = FakeProc(self.root / "proc", hostname=self.root.name)
        memory_kib = int(16318480 * MEMORY_SHARE)  # of MemTotal; RSS by default, PSS with --collector.memory=pss
        self.proc.spawn(PID, 1, start=5000, uid=0, pss_kib=memory_kib, rss_pages=memory_kib * 1024 // PAGE)

    def flags(self, *extra: str) -> tuple[str, ...]:
        return (
            f"--path.sysfs={self.powercap.sysfs}",
            f"--path.procfs={self.proc.root}",
            "--sample-interval=0.25",
            f"--api.socket={self.socket_path}",
            *extra,
        )

    def client(self) -> ExporterClient:
        return ExporterClient(f"unix://{self.socket_path}")

    def drive(self, seconds: float, run_ticks_per_step: int = RUN_TICKS_PER_STEP, steps_of: int = 1) -> None:
        """Run the machine at constant power, the run's process using ``run_ticks_per_step`` of every
        BUSY_TICKS_PER_STEP busy ticks (half, by default). ``steps_of`` fine steps are written as one: coarser
        steps cost a loaded machine far fewer file writes over a long drive."""
        step_seconds = STEP_SECONDS * steps_of
        steps = round(seconds / step_seconds)
        for _ in range(steps):
            time.sleep(step_seconds)
            self.powercap.advance(PACKAGE, PACKAGE_WATTS * step_seconds)
            self.powercap.advance(DRAM, DRAM_WATTS * step_seconds)
            self.proc.advance(BUSY_TICKS_PER_STEP * steps_of, 0, running={PID: run_ticks_per_step * steps_of})
        self.package_joules += PACKAGE_WATTS * step_seconds * steps
        self.dram_joules += DRAM_WATTS * step_seconds * steps
