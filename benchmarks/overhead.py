"""Exporter overhead: CPU seconds the exporter uses per hour of monitoring at 1 Hz, next to CodeCarbon's.

For 0, 10 and 100 active runs of 10 real processes each, the real exporter (``python -m impact_exporter``, real
/proc, a fake RAPL tree fed at 40 W + 6 W) samples every second while the runs' processes loop busy for 1 ms
per second. Over the same window, CodeCarbon's ``OfflineEmissionsTracker`` (measure_power_secs=1) runs in its
own process tracking the same machine. Both processes' CPU seconds (psutil, user + system) are scaled to one
hour. Target (issue #10): at most 18 CPU-seconds per hour (0.5 % of one core) with 10 runs.

    python -m benchmarks.overhead [--seconds 60] [--runs 0 10 100]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from benchmarks.common import Exporter, PowerFeeder, fake_rapl, machine_description, process_cpu_seconds, wait_for
from benchmarks.workload import Workload

PROCESSES_PER_RUN = 10
TARGET_CPU_SECONDS_PER_HOUR = 18.0
TARGET_RUNS = 10
WARMUP_SECONDS = 3.0

CODECARBON = """
import sys, tempfile, warnings
warnings.simplefilter("ignore")
from codecarbon import OfflineEmissionsTracker
tracker = OfflineEmissionsTracker(
    country_iso_code="USA", measure_power_secs=1, save_to_file=False, log_level="error",
    output_dir=tempfile.mkdtemp(),
)
tracker.start()
print("ready", flush=True)
sys.stdin.readline()
tracker.stop()
"""


@dataclass(frozen=True)
class Overhead:
    """CPU seconds per hour of the exporter and of one CodeCarbon tracker over the same window."""

    runs: int
    window_seconds: float
    exporter_cpu_per_hour: float
    codecarbon_cpu_per_hour: float | None

    @property
    def ratio(self) -> float | None:
        """Exporter over CodeCarbon: how many times the CPU time of one CodeCarbon tracker the exporter uses."""
        if not self.codecarbon_cpu_per_hour:
            return None
        return self.exporter_cpu_per_hour / self.codecarbon_cpu_per_hour


class CodeCarbon:
    """One ``OfflineEmissionsTracker`` in its own process, started and ready to be measured."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", CODECARBON],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            self.process.kill()
            raise RuntimeError("CodeCarbon did not start: pip install -e '.[bench]' (or pip install codecarbon)")

    def stop(self) -> None:
        try:
            self.process.stdin.write("stop\n")
            self.process.stdin.flush()
            self.process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()


def codecarbon_available() -> bool:
    try:
        import codecarbon  # noqa: F401
    except ImportError:
        return False
    return True


def measure(runs: int, seconds: float, workdir: Path, with_codecarbon: bool) -> Overhead:
    """Start the exporter and ``runs`` runs of real processes, and measure CPU time over ``seconds``."""
    powercap = fake_rapl(workdir / "sys")
    feeder = PowerFeeder(powercap)
    feeder.start()
    workload = Workload(runs, PROCESSES_PER_RUN)
    flags = [f"--path.sysfs={powercap.sysfs}", "--cpu.source=rapl", "--gpu.source=none"]
    exporter = Exporter(workdir / "exporter", flags)
    codecarbon = None
    try:
        client = exporter.client()
        for number, pid in enumerate(workload.root_pids):
            client.start_run("overhead", set=f"runs-{runs}", pid=pid, run_id=f"overhead-{runs}-{number}")
        wait_for(
            lambda: all(len(_children(pid)) >= PROCESSES_PER_RUN - 1 for pid in workload.root_pids),
            60,
            "every run's processes to fork",
        )
        codecarbon = CodeCarbon() if with_codecarbon else None
        time.sleep(WARMUP_SECONDS)
        exporter_before = process_cpu_seconds(exporter.pid)
        codecarbon_before = process_cpu_seconds(codecarbon.process.pid) if codecarbon else 0.0
        started = time.monotonic()
        time.sleep(seconds)
        window = time.monotonic() - started
        exporter_used = process_cpu_seconds(exporter.pid) - exporter_before
        codecarbon_used = process_cpu_seconds(codecarbon.process.pid) - codecarbon_before if codecarbon else None
    finally:
        if codecarbon is not None:
            codecarbon.stop()
        exporter.stop()
        workload.stop()
        feeder.stop()
    per_hour = 3600.0 / window
    return Overhead(
        runs=runs,
        window_seconds=window,
        exporter_cpu_per_hour=exporter_used * per_hour,
        codecarbon_cpu_per_hour=None if codecarbon_used is None else codecarbon_used * per_hour,
    )


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []


def report(results: list[Overhead]) -> None:
    print(
        f"{'runs':>5} {'procs':>6} {'exporter CPU-s/h':>17} {'% of a core':>12} {'CodeCarbon CPU-s/h':>19} "
        f"{'exporter/CodeCarbon':>20}"
    )
    for r in results:
        codecarbon = f"{r.codecarbon_cpu_per_hour:.1f}" if r.codecarbon_cpu_per_hour is not None else "n/a"
        ratio = f"{r.ratio:.1f}x" if r.ratio is not None else "n/a"
        print(
            f"{r.runs:>5} {r.runs * PROCESSES_PER_RUN:>6} {r.exporter_cpu_per_hour:>17.1f} "
            f"{r.exporter_cpu_per_hour / 36:>11.3f}% {codecarbon:>19} {ratio:>20}"
        )
    for r in results:
        if r.runs == TARGET_RUNS:
            verdict = "meets" if r.exporter_cpu_per_hour <= TARGET_CPU_SECONDS_PER_HOUR else "MISSES"
            print(
                f"target: <= {TARGET_CPU_SECONDS_PER_HOUR:.0f} CPU-s/h with {TARGET_RUNS} runs: {verdict} it "
                f"({r.exporter_cpu_per_hour:.1f})"
            )
            if r.codecarbon_cpu_per_hour:
                print(
                    f"CodeCarbon embedded once per run ({TARGET_RUNS} trackers) would use "
                    f"{TARGET_RUNS * r.codecarbon_cpu_per_hour:.1f} CPU-s/h"
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement window per scenario (default: 60)")
    parser.add_argument("--runs", type=int, nargs="+", default=[0, 10, 100], help="active runs per scenario")
    parser.add_argument("--no-codecarbon", action="store_true", help="measure the exporter alone")
    args = parser.parse_args(argv)
    with_codecarbon = not args.no_codecarbon
    if with_codecarbon and not codecarbon_available():
        parser.error("CodeCarbon is not installed: pip install -e '.[bench]', or pass --no-codecarbon")
    print(f"# exporter overhead at 1 Hz, {args.seconds:.0f} s per scenario; {machine_description()}")
    results = []
    for runs in args.runs:
        with tempfile.TemporaryDirectory(prefix="iet-overhead-") as workdir:
            results.append(measure(runs, args.seconds, Path(workdir), with_codecarbon))
        print(f"  measured {runs} runs", flush=True)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
