"""What every benchmark needs: a real exporter process, a fake RAPL tree fed at constant power, and the machine.

Only hardware is faked (tests/fakes), as in the test suite; the exporter, its sockets and /proc are real.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import psutil

from experiment_impact_tracker import ExporterClient
from tests.fakes.powercap import FakePowercap

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_ZONE, DRAM_ZONE = "intel-rapl:0", "intel-rapl:0:0"
PACKAGE_WATTS, DRAM_WATTS = 40.0, 6.0


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy and return that; RuntimeError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Terminate ``process`` and wait for it; kill it if it has not exited after ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, nearest-rank: a value that was actually observed."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` (all its threads) so far."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def fake_rapl(sysfs: Path) -> FakePowercap:
    """A one-package powercap tree (package and DRAM zones) under ``sysfs``."""
    powercap = FakePowercap(sysfs)
    powercap.add_zone(PACKAGE_ZONE, "package-0", energy_uj=1_000_000)
    powercap.add_zone(DRAM_ZONE, "dram", energy_uj=1_000_000)
    return powercap


class PowerFeeder(threading.Thread):
    """Advances a fake RAPL tree at constant package and DRAM power until stopped, as the hardware would."""

    def __init__(self, powercap: FakePowercap, step_seconds: float = 0.1) -> None:
        super().__init__(daemon=True, name="power-feeder")
        self._powercap = powercap
        self._step = step_seconds
        self._stopping = threading.Event()

    def run(self) -> None:
        last = time.monotonic()
        while not self._stopping.wait(self._step):
            now = time.monotonic()
            self._powercap.advance(PACKAGE_ZONE, PACKAGE_WATTS * (now - last))
            self._powercap.advance(DRAM_ZONE, DRAM_WATTS * (now - last))
            last = now

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=5)


class Exporter:
    """``python -m impact_exporter`` with a private state directory and API socket, its log kept in ``workdir``."""

    LISTENING = re.compile(r"listening on (\S+),")

    def __init__(self, workdir: Path, args: Sequence[str], launcher: Sequence[str] = ("-m", "impact_exporter")) -> None:
        """Start it with ``args``; ``launcher`` replaces ``-m impact_exporter`` (gpu_exporter.py adds a GPU)."""
        workdir.mkdir(parents=True, exist_ok=True)
        socket_dir = Path(tempfile.mkdtemp(prefix="iet-bench-"))  # sun_path is short: keep it out of workdir
        self.socket_path = socket_dir / "api.sock"
        self.log_file = workdir / "exporter.log"
        command = [
            sys.executable,
            *launcher,
            "--web.listen-address=127.0.0.1:0",
            f"--api.socket={self.socket_path}",
            f"--state-dir={workdir / 'state'}",
            "--log.level=info",
            *args,
        ]
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        self.address = wait_for(self._listening_address, 60, "the exporter to listen")
        self.url = f"http://{self.address}"
        wait_for(self.socket_path.exists, 10, "the exporter's API socket")

    def _listening_address(self) -> str | None:
        if self.process.poll() is not None:
            raise RuntimeError(f"the exporter exited with {self.process.returncode}: {self.log()[-2000:]}")
        match = self.LISTENING.search(self.log())
        return match.group(1) if match else None

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def client(self, timeout: float = 60.0) -> ExporterClient:
        """A run API client on the exporter's Unix socket."""
        return ExporterClient(f"unix://{self.socket_path}", timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.socket_path.unlink(missing_ok=True)


def machine_description() -> str:
    """CPU model, logical CPUs, memory, kernel and Python: the machine a figure came from."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = psutil.virtual_memory().total / 2**30
    return (
        f"{model}, {os.cpu_count()} logical CPUs, {memory_gib:.0f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )
