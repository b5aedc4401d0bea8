"""Runs shorter than one sample interval, end to end: a real exporter sampling every second, a real Prometheus,
and the reporter's figures.

A run's root is usually reaped by its launcher (impact-run, a shell, a test) before the run is stopped, so the
exporter never sees the root's last CPU time in /proc/<pid>; it reads it from the launcher's cutime instead. On
the fake node the ground truth is exact: the run's process uses half of the machine's busy CPU time, so by the
formula of docs/attribution.md it gets half the package energy written while it ran, that is its CPU seconds
times PACKAGE_WATTS / (BUSY_TICKS_PER_STEP / STEP_TICKS) watts per busy core.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fakes.node import BUSY_TICKS_PER_STEP, PACKAGE, PACKAGE_WATTS, RUN_TICKS_PER_STEP, STEP_SECONDS, Node
from tests.fakes.powercap import PowerDriver
from tests.fakes.procfs import TICKS
from tests.servers import REPO_ROOT, ExporterProcess, PrometheusServer, reported_run, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.serial]  # serial: CPU shares and timings need the cores

LAUNCHER, SHORT = 4000, 4300  # the process that starts the run's command and waits for it; the command
RUN_SECONDS = 0.3


def wait_until_final_scraped(prometheus: PrometheusServer, run_id: str, joules: float) -> None:
    """Wait until Prometheus holds the run's final cpu energy, scraped three times: the samples must show the
    scrape interval (a report made on the first sample alone assumes Prometheus' default of 15 s)."""
    selector = f'impact_run_energy_joules_total{{run_id="{run_id}",component="cpu"}}'

    def scraped() -> bool:
        result = prometheus.query(selector)
        if not result or abs(float(result[0]["value"][1]) - joules) > 1e-6:
            return False
        return sum(abs(value - joules) < 1e-6 for _, value in prometheus.samples(selector, "1m")) >= 3

    wait_for(scraped, 15, f"prometheus to scrape the final energy of {run_id}")


def test_a_run_shorter_than_one_sample_interval_gets_its_cpu_time_and_its_share_of_the_package_energy(
    tmp_path: Path, prometheus: PrometheusServer, start_exporter: Callable[..., ExporterProcess]
) -> None:
    node = Node(tmp_path / "node1")
    node.proc.spawn(LAUNCHER, 1, start=7000, uid=os.getuid(), comm="impact-run")
    exporter = start_exporter(*node.flags("--sample-interval=1"))
    prometheus.add_target(exporter.address)
    run_id = f"short-{uuid.uuid4().hex[:8]}"
    node.proc.spawn(SHORT, LAUNCHER, start=7100, uid=os.getuid(), utime=7, comm="python")  # 7 ticks before the run
    node.client().start_run("short", pid=SHORT, run_id=run_id)

    step_seconds = 3 * STEP_SECONDS  # coarse steps: few file writes, so a loaded machine keeps the run short
    steps = round(RUN_SECONDS / step_seconds)
    for _ in range(steps):  # the machine runs only this command: half of its busy time is the command's
        time.sleep(step_seconds)
        node.powercap.advance(PACKAGE, PACKAGE_WATTS * step_seconds)
        node.proc.advance(3 * BUSY_TICKS_PER_STEP, 0, running={SHORT: 3 * RUN_TICKS_PER_STEP})
    node.proc.reap(SHORT)  # it exits and the launcher waits for it, then stops the run
    final = node.client().stop_run(run_id)

    cpu_seconds = steps * 3 * RUN_TICKS_PER_STEP / TICKS
    package_joules = PACKAGE_WATTS * step_seconds * steps
    watts_per_busy_core = PACKAGE_WATTS / (BUSY_TICKS_PER_STEP / (STEP_SECONDS * TICKS))
    assert final["cpu_seconds"] == pytest.approx(cpu_seconds, rel=1e-9)
    wait_until_final_scraped(prometheus, run_id, final["energy_joules"]["cpu"])

    figures = reported_run(prometheus, run_id)
    assert figures["cpu_hours"] * 3600 == pytest.approx(cpu_seconds, rel=1e-9)
    assert figures["energy_joules"]["cpu"] == pytest.approx(cpu_seconds * watts_per_busy_core, rel=0.1)
    assert figures["energy_joules"]["cpu"] == pytest.approx(0.5 * package_joules, rel=0.1)
    assert figures["sample_interval_seconds"] == pytest.approx(1.0, rel=0.1)  # Prometheus scrapes every second
    # a peak needs one whole interval inside the run (0.3 s of driving, unless a loaded machine stretched it)
    assert (figures["peak_power_watts"] is None) == (figures["duration_seconds"] < figures["sample_interval_seconds"])
    assert figures["coverage"] == 1.0
    assert figures["average_power_watts"] == pytest.approx(figures["total_joules"] / figures["duration_seconds"])


BUSY = """
    import os, time
    end = time.monotonic() + {seconds}
    while time.monotonic() < end:
        pass
    times = os.times()
    print(times.user + times.system, flush=True)
"""


def test_impact_run_of_a_real_0_3_s_busy_command_reports_its_cpu_time_and_energy(
    tmp_path: Path, prometheus: PrometheusServer, start_exporter: Callable[..., ExporterProcess]
) -> None:
    node = Node(tmp_path / "node1")  # its powercap tree only: the processes are the real ones
    exporter = start_exporter(f"--path.sysfs={node.powercap.sysfs}", f"--api.socket={node.socket_path}")
    prometheus.add_target(exporter.address)
    run_id = f"impact-run-{uuid.uuid4().hex[:8]}"
    driver = PowerDriver(node.powercap, {PACKAGE: PACKAGE_WATTS}, seconds=3.0, step_seconds=0.01)
    driver.start()
    command = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiment_impact_tracker",
            "--experiment=short",
            f"--run-id={run_id}",
            "--strict",
            f"--exporter=unix://{node.socket_path}",
            "--",
            sys.executable,
            "-c",
            textwrap.dedent(BUSY.format(seconds=RUN_SECONDS)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert command.returncode == 0, command.stderr
    used = float(command.stdout)
    driver.join()
    final = node.client().stop_run(run_id)  # impact-run stopped it already: this returns it unchanged
    assert final["status"] == "finished"
    wait_until_final_scraped(prometheus, run_id, final["energy_joules"]["cpu"])

    figures = reported_run(prometheus, run_id)
    assert used > 0.05, "the command did not run"
    # from exec to exit: what the command counted itself, plus the interpreter's shutdown after it printed
    assert used * (1 - 1e-9) <= figures["cpu_hours"] * 3600 <= used * 1.1 + 0.05  # 1e-9: float rounding
    # The real machine's other load shares the package energy too, so only bounds hold here; the fake node's
    # test above checks the share.
    assert 0 < figures["energy_joules"]["cpu"] <= sum(driver.joules.values())
    assert (figures["peak_power_watts"] is None) == (figures["duration_seconds"] < figures["sample_interval_seconds"])
    assert figures["coverage"] == 1.0
