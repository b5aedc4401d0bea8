"""Standalone measurement's cost: CPU seconds per hour of the monitor process, next to CodeCarbon's tracker, and
the original experiment-impact-tracker's overhead check (tests/test_overhead.py: a script's wall time untracked over
tracked, which it required to be above 0.99).

One busy process (a numpy loop) is measured over the same window by the standalone monitor (``track_run`` with no
exporter, 1 s samples, real /proc and sysfs: RAPL where readable, else the estimate) and by one CodeCarbon
``OfflineEmissionsTracker`` (measure_power_secs=1) in its own process; both processes' CPU seconds are scaled to an
hour. Then the ported myapp script (tests/experiment_impact_tracker/test_standalone.py MYAPP) runs tracked and
untracked (without the tracker's calls), alternately, and the ratio of the total wall times is printed: for a short
run (``--steps``, ``--repeats`` pairs) and for a run of about ``--long-seconds`` (``--long-repeats`` pairs, steps
calibrated on the short runs). The first tracked run finds py-cpuinfo's per-boot cache empty
(experiment_impact_tracker/cpu/common.py), as the first run after a reboot does; its time is printed apart and left
out of the ratios.

    python -m benchmarks.standalone [--seconds 60] [--steps 20000] [--repeats 3] [--long-seconds 60]
        [--long-repeats 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from benchmarks.common import machine_description, process_cpu_seconds
from benchmarks.overhead import CodeCarbon, codecarbon_available
from tests.experiment_impact_tracker.test_standalone import MYAPP

BUSY = """
import sys, time
from experiment_impact_tracker import track_run
with track_run("benchmark", logdir=sys.argv[1]) as run:
    print(run._monitor.pid, flush=True)
    sys.stdin.readline()
"""


def monitor_cpu_per_hour(seconds: float, workdir: Path, with_codecarbon: bool) -> tuple[float, float | None]:
    """CPU-s/h of the standalone monitor and of CodeCarbon over the same ``seconds``."""
    env = {**os.environ, "IMPACT_EXPORTER": f"unix://{workdir}/none.sock"}
    tracked = subprocess.Popen(
        [sys.executable, "-c", BUSY, str(workdir / "run")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    monitor = int(tracked.stdout.readline())
    codecarbon = CodeCarbon() if with_codecarbon else None
    try:
        time.sleep(3.0)
        before = process_cpu_seconds(monitor)
        cc_before = process_cpu_seconds(codecarbon.process.pid) if codecarbon else 0.0
        started = time.monotonic()
        time.sleep(seconds)
        window = time.monotonic() - started
        used = process_cpu_seconds(monitor) - before
        cc_used = process_cpu_seconds(codecarbon.process.pid) - cc_before if codecarbon else None
    finally:
        if codecarbon is not None:
            codecarbon.stop()
        tracked.communicate("\n", timeout=60)
    return used * 3600 / window, None if cc_used is None else cc_used * 3600 / window


def script_seconds(workdir: Path, steps: int, tracked: bool) -> float:
    """Wall time of one run of the ported myapp script (its user cache, py-cpuinfo's, in ``workdir``)."""
    env = {**os.environ, "IMPACT_EXPORTER": f"unix://{workdir}/none.sock", "XDG_CACHE_HOME": str(workdir / "cache")}
    code = textwrap.dedent(MYAPP)
    if not tracked:  # the original's untracked run: the same script without the tracker's calls
        code = code.replace("tracker.launch_impact_monitor()", "None")
        code = code.replace("tracker.get_latest_info_and_check_for_errors()", "None")
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", code, str(workdir / f"exp-{tracked}"), str(steps)],
        check=True,
        capture_output=True,
        env=env,
        cwd=workdir,
    )
    return time.monotonic() - started


def overhead_ratio(workdir: Path, steps: int, repeats: int) -> tuple[float, float]:
    """Total wall time of ``repeats`` tracked and untracked runs, alternated so that load drifts hit both alike."""
    tracked = untracked = 0.0
    for _ in range(repeats):
        tracked += script_seconds(workdir, steps, True)
        untracked += script_seconds(workdir, steps, False)
    return tracked, untracked


def print_ratio(name: str, steps: int, tracked: float, untracked: float, repeats: int) -> None:
    print(
        f"myapp {name}, {steps} steps x{repeats}: tracked {tracked:.2f} s, untracked {untracked:.2f} s, "
        f"untracked/tracked {untracked / tracked:.3f} (the original required > 0.99), "
        f"tracked - untracked {(tracked - untracked) / repeats:+.2f} s a run"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.standalone", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement window (default: 60)")
    parser.add_argument("--steps", type=int, default=20000, help="myapp steps of a short run (default: 20000)")
    parser.add_argument("--repeats", type=int, default=3, help="short myapp runs each way (default: 3)")
    parser.add_argument("--long-seconds", type=float, default=60.0, help="a long myapp run's length (default: 60)")
    parser.add_argument("--long-repeats", type=int, default=3, help="long myapp runs each way (default: 3)")
    parser.add_argument("--no-codecarbon", action="store_true", help="measure the monitor alone")
    args = parser.parse_args(argv)
    with_codecarbon = not args.no_codecarbon
    if with_codecarbon and not codecarbon_available():
        parser.error("CodeCarbon is not installed: pip install -e '.[bench]', or pass --no-codecarbon")
    print(f"# standalone monitor at 1 Hz, {args.seconds:.0f} s; {machine_description()}")
    with tempfile.TemporaryDirectory(prefix="iet-standalone-") as workdir:
        monitor, codecarbon = monitor_cpu_per_hour(args.seconds, Path(workdir), with_codecarbon)
        print(f"standalone monitor: {monitor:.1f} CPU-s/h ({monitor / 36:.3f}% of a core)")
        if codecarbon is not None:
            print(
                f"CodeCarbon OfflineEmissionsTracker: {codecarbon:.1f} CPU-s/h; "
                f"monitor/CodeCarbon {monitor / codecarbon:.2f}x"
            )
        cold = script_seconds(Path(workdir), args.steps, True)
        print(f"myapp, first tracked run of the boot (py-cpuinfo not cached yet): {cold:.2f} s")
        tracked, untracked = overhead_ratio(Path(workdir), args.steps, args.repeats)
        print_ratio("short", args.steps, tracked, untracked, args.repeats)
        long_steps = max(args.steps, round(args.steps * args.long_seconds / (untracked / args.repeats)))
        tracked, untracked = overhead_ratio(Path(workdir), long_steps, args.long_repeats)
        print_ratio(f"of about {args.long_seconds:.0f} s", long_steps, tracked, untracked, args.long_repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
