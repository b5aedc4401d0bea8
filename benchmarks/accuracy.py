"""Attribution accuracy: per-run energy from the real exporter against the ground truth the scenario wrote.

Each scenario drives a fake machine (tests/fakes: a procfs tree and a RAPL tree) in steps of 50 ms while the
real exporter (``python -m impact_exporter``, sampling every 0.25 s) reads it and runs are started and stopped through
its socket. In each step the scenario says how much energy the package and DRAM used and which process used
which share of the busy CPU time, so a run's true energy is the sum over steps of its share times the energy.

    python -m benchmarks.accuracy [--seconds 6]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import Exporter, machine_description
from tests.fakes.powercap import FakePowercap
from tests.fakes.procfs import FakeProc

STEP = 0.05
BUSY_TICKS = 20  # per step: four busy CPUs at 100 ticks per second
MEM_TOTAL_KIB = 16318480  # tests/fakes/procfs.py MEMINFO
PACKAGE, DRAM = "intel-rapl:0", "intel-rapl:0:0"


@dataclass
class Step:
    """One step of a scenario: package and DRAM watts, and each process's ticks of the BUSY_TICKS busy ones."""

    package_watts: float
    dram_watts: float
    ticks: dict[int, int] = field(default_factory=dict)


@dataclass
class Machine:
    """The fake machine, its exporter, and the ground truth per run: joules per component while it was active."""

    proc: FakeProc
    powercap: FakePowercap
    exporter: Exporter
    runs: dict[str, tuple[int, ...]] = field(default_factory=dict)  # active run -> its processes (pids)
    truth: dict[str, dict[str, float]] = field(default_factory=dict)
    measured: dict[str, dict[str, float]] = field(default_factory=dict)

    def start(self, run_id: str, root: int, *members: int) -> None:
        self.exporter.client().start_run("accuracy", pid=root, run_id=run_id)
        self.runs[run_id] = (root, *members)
        self.truth[run_id] = {"cpu": 0.0, "dram": 0.0}

    def stop(self, run_id: str) -> None:
        self.measured[run_id] = self.exporter.client().stop_run(run_id)["energy_joules"]
        del self.runs[run_id]

    def step(self, step: Step) -> None:
        time.sleep(STEP)
        package, dram = step.package_watts * STEP, step.dram_watts * STEP
        self.powercap.advance(PACKAGE, package)
        self.powercap.advance(DRAM, dram)
        self.proc.advance(BUSY_TICKS, 0, running=step.ticks)
        for run_id, pids in self.runs.items():
            ticks = sum(step.ticks.get(pid, 0) for pid in pids)
            memory = sum(self.proc.processes[pid].pss_kib or 0 for pid in pids if pid in self.proc.processes)
            self.truth[run_id]["cpu"] += package * ticks / BUSY_TICKS
            self.truth[run_id]["dram"] += dram * memory / MEM_TOTAL_KIB


def machine(workdir: Path, max_energy_range_uj: int | None = None) -> Machine:
    proc = FakeProc(workdir / "proc", hostname="accuracy")
    powercap = FakePowercap(workdir / "sys")
    zone_range = {"max_energy_range_uj": max_energy_range_uj} if max_energy_range_uj else {}
    powercap.add_zone(PACKAGE, "package-0", energy_uj=1_000_000, **zone_range)
    powercap.add_zone(DRAM, "dram", energy_uj=1_000_000, **zone_range)
    exporter = Exporter(
        workdir / "exporter",
        [
            f"--path.procfs={proc.root}",
            f"--path.sysfs={powercap.sysfs}",
            "--cpu.source=rapl",
            "--gpu.source=none",
            "--sample-interval=0.25",
        ],
    )
    return Machine(proc, powercap, exporter)


def steady(m: Machine, steps: int) -> None:
    """One run using half the busy CPU time at constant power."""
    m.proc.spawn(4242, 1, start=5000, uid=0, pss_kib=MEM_TOTAL_KIB // 4)
    m.start("steady", 4242)
    for _ in range(steps):
        m.step(Step(40.0, 6.0, {4242: BUSY_TICKS // 2}))
    m.stop("steady")


def bursts(m: Machine, steps: int) -> None:
    """A run that alternates one second of near-full load at 60 W with one second of light load at 15 W."""
    m.proc.spawn(4242, 1, start=5000, uid=0, pss_kib=MEM_TOTAL_KIB // 8)
    m.start("bursts", 4242)
    for number in range(steps):
        busy = (number * STEP) % 2.0 < 1.0
        m.step(Step(60.0 if busy else 15.0, 6.0, {4242: BUSY_TICKS - 2 if busy else 2}))
    m.stop("bursts")


def short_children(m: Machine, steps: int) -> None:
    """A run whose root forks a child every step; each child runs three steps and is reaped by the root."""
    m.proc.spawn(4242, 1, start=5000, uid=0, pss_kib=MEM_TOTAL_KIB // 16)
    m.start("children", 4242)
    alive: list[int] = []
    for number in range(steps):
        child = 20000 + number
        m.proc.spawn(child, 4242, start=6000 + number, uid=0)
        alive.append(child)
        m.runs["children"] = (4242, *alive)
        m.step(Step(40.0, 6.0, {4242: 2, **{pid: 4 for pid in alive}}))
        if len(alive) == 3:
            m.proc.reap(alive.pop(0))
    m.stop("children")


def wraps(m: Machine, steps: int) -> None:
    """The steady run on counters that wrap every 0.75 s (a 30 J range at 40 W), three samples apart."""
    steady(m, steps)


def overlapping(m: Machine, steps: int) -> None:
    """Run A for the first two thirds, run B for the last two thirds: each shares the middle third."""
    m.proc.spawn(4242, 1, start=5000, uid=0, pss_kib=MEM_TOTAL_KIB // 4)
    m.proc.spawn(4343, 1, start=5100, uid=0, pss_kib=MEM_TOTAL_KIB // 8)
    third = steps // 3
    m.start("overlap-a", 4242)
    for number in range(steps):
        if number == third:
            m.start("overlap-b", 4343)
        if number == 2 * third:
            m.stop("overlap-a")
        ticks = {4242: 8 if number < 2 * third else 0, 4343: 6 if number >= third else 0}
        m.step(Step(50.0, 6.0, ticks))
    m.stop("overlap-b")


SCENARIOS: dict[str, tuple[Callable[[Machine, int], None], int | None]] = {
    "steady load": (steady, None),
    "bursts": (bursts, None),
    "many short children": (short_children, None),
    "counter wraps": (wraps, 30_000_000),
    "two overlapping runs": (overlapping, None),
}


def error_percent(measured: float, truth: float) -> float:
    return 100.0 * (measured - truth) / truth if truth else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each scenario (default: 6)")
    args = parser.parse_args(argv)
    steps = round(args.seconds / STEP)
    print(f"# attribution accuracy, {args.seconds:.0f} s per scenario; {machine_description()}")
    print(f"{'scenario':<22} {'run':<10} {'cpu truth J':>12} {'cpu error':>10} {'dram truth J':>13} {'dram error':>11}")
    for name, (scenario, zone_range) in SCENARIOS.items():
        with tempfile.TemporaryDirectory(prefix="iet-accuracy-") as workdir:
            m = machine(Path(workdir), zone_range)
            try:
                scenario(m, steps)
            finally:
                m.exporter.stop()
        for run_id, truth in m.truth.items():
            measured = m.measured[run_id]
            print(
                f"{name:<22} {run_id:<10} {truth['cpu']:>12.2f} "
                f"{error_percent(measured.get('cpu', 0.0), truth['cpu']):>+9.2f}% {truth['dram']:>13.2f} "
                f"{error_percent(measured.get('dram', 0.0), truth['dram']):>+10.2f}%"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
