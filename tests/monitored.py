"""A whole monitored node for tests of what sits above the exporter (dashboards, rules, reports): a fake
machine with RAPL, procfs and one NVIDIA GPU that keeps running in a background thread, read by the exporter as
shipped (in a thread of the test, so the fake NVML can be injected), with runs registered through its socket.

The machine draws constant power: package 40 W, DRAM 6 W, GPU 200 W; the run's processes use known shares of
CPU time and of the GPU, so every panel and rule has data and the figures behind them are known.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import requests

from experiment_impact_tracker import ExporterClient
from impact_exporter.cli import parse_settings, serve
from tests.fakes.node import BUSY_TICKS_PER_STEP, DRAM, DRAM_WATTS, PACKAGE, PACKAGE_WATTS, Node
from tests.fakes.nvml import GIB, FakeGpu, FakeNvml
from tests.servers import free_port, wait_for

GPU_UUID = "GPU-0000aaaa-0000-0000-0000-000000000000"
GPU_WATTS = 200.0
TRAIN_PID, OTHER_PID = 4242, 5000  # 4242 is the fake node's run process
DRIVE_STEP_SECONDS = 0.05


class LockedNvml:
    """A fake NVML behind a lock the driving thread also takes, so a sample never sees half of a step."""

    def __init__(self, nvml: FakeNvml, lock: threading.Lock) -> None:
        self._nvml, self._lock = nvml, lock

    def __getattr__(self, name: str) -> object:
        value = getattr(self._nvml, name)
        if not callable(value) or not name.startswith("nvml"):
            return value
        return partial(self._call, value)

    def _call(self, function: Callable[..., object], *args: object, **kwargs: object) -> object:
        """One NVML function called under the lock."""
        with self._lock:
            return function(*args, **kwargs)


def healthy(address: str) -> bool:
    """Whether the exporter at ``address`` answers its health check."""
    try:
        return requests.get(f"http://{address}/-/healthy", timeout=1).ok
    except requests.ConnectionError:
        return False


class MonitoredNode:
    """A fake node driven continuously until ``stop()``, with an in-process exporter reading it."""

    def __init__(self, root: Path, *extra_flags: str) -> None:
        self.node = Node(root)
        self.node.proc.spawn(OTHER_PID, 1, start=6000, uid=0, comm="other")
        self.nvml = FakeNvml(
            [
                FakeGpu(
                    GPU_UUID,
                    power_watts=GPU_WATTS,
                    utilization_percent=80,
                    processes={TRAIN_PID: 8 * GIB, OTHER_PID: 2 * GIB},
                    slices=[{TRAIN_PID: 60, OTHER_PID: 20}],
                )
            ],
            tick_seconds=DRIVE_STEP_SECONDS,
        )
        self.lock = threading.Lock()
        self.address = f"127.0.0.1:{free_port()}"
        settings = parse_settings(
            [
                f"--web.listen-address={self.address}",
                f"--state-dir={root / 'state'}",
                "--gpu.idle-watts=50",
                *self.node.flags(*extra_flags),
            ]
        )
        self._stop = threading.Event()
        self._exporter = threading.Thread(
            target=serve, args=(settings, LockedNvml(self.nvml, self.lock), self._stop), daemon=True
        )
        self._exporter.start()
        wait_for(lambda: healthy(self.address), 20, "the in-process exporter")
        self._driver = threading.Thread(target=self._drive, daemon=True)
        self._driver.start()

    def client(self) -> ExporterClient:
        return self.node.client()

    def _drive(self) -> None:
        """Advance RAPL, procfs and the GPU every step: the run's process uses half the busy CPU time."""
        while not self._stop.wait(DRIVE_STEP_SECONDS):
            self.node.powercap.advance(PACKAGE, PACKAGE_WATTS * DRIVE_STEP_SECONDS)
            self.node.powercap.advance(DRAM, DRAM_WATTS * DRIVE_STEP_SECONDS)
            ticks = round(BUSY_TICKS_PER_STEP * DRIVE_STEP_SECONDS / 0.01)
            self.node.proc.advance(ticks, 0, running={TRAIN_PID: ticks // 2})
            with self.lock:
                self.nvml.advance(DRIVE_STEP_SECONDS)

    def stop(self) -> None:
        self._stop.set()
        self._driver.join(timeout=10)
        self._exporter.join(timeout=10)


SLURM_JOB = {"run_id": "slurm-monitored-7", "labels": {"account": "physics", "partition": "gpu", "job_name": "train"}}
"""A run as the Slurm prolog names and labels a job (deploy/slurm/impact-slurm), for the panels of Slurm jobs."""


def start_runs(node: MonitoredNode, seconds: float = 3.0) -> dict[str, Any]:
    """A finished run and an active run of experiment "dashboards", both on the training process, and between
    them a finished run as a Slurm job's ("train", SLURM_JOB); returns the runs as the exporter rendered them,
    under "finished", "slurm" and "active"."""
    client = node.client()
    finished = client.start_run("dashboards", set="baseline", pid=TRAIN_PID, labels={"model": "resnet"})
    time.sleep(seconds)
    finished = client.stop_run(finished["run_id"])
    slurm = client.start_run("train", pid=TRAIN_PID, **SLURM_JOB)
    time.sleep(0.5)
    slurm = client.stop_run(slurm["run_id"])
    active = client.start_run("dashboards", set="candidate", pid=TRAIN_PID, labels={"model": "vit"})
    return {"finished": finished, "slurm": slurm, "active": active}


def wait_scraped(query: Callable[[str], list[dict[str, Any]]], run_ids: list[str], timeout: float = 30) -> None:
    """Wait until Prometheus (``query``) holds a few samples of each run's energy, enough for rate()."""
    for run_id in run_ids:
        expr = f'count_over_time(impact_run_energy_joules_total{{run_id="{run_id}"}}[1m]) >= 3'
        wait_for(lambda expr=expr: query(expr), timeout, f"prometheus to hold samples of run {run_id}")
