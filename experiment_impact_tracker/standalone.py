"""Standalone measurement, as the experiment sees it: start the monitor process, read its figures, stop it.

When no impact-exporter answers, ``Run.start`` (``track_run``, ``impact-run``, ``ImpactTracker``) measures the run
itself: it starts ``python -m impact_exporter.standalone`` (exporter/standalone.py, the exporter's own sources and
attribution for this one run), which detaches from the experiment's process tree, samples every interval and
appends the run's counters to ``samples.csv`` in the run directory. Its figures arrive on a pipe after each sample;
``latest`` takes the newest without waiting, so a training loop may ask for them at every step.

A monitor that dies (killed, out of memory) is a ``MeasurementFailed`` at the next ``latest``; what it measured
until then stays in samples.csv.

``impact-run`` exports its standalone run's directory to the command as ``$IMPACT_RUN_DIR`` (with its id as
``$IMPACT_RUN_ID``), so a ``track_run`` or ``ImpactTracker`` inside the command joins that run (``JoinedRun``)
rather than start a second monitor for the same processes: as a run joins through ``$IMPACT_RUN_ID`` when an
exporter measures it.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiment_impact_tracker.errors import MeasurementFailed
from experiment_impact_tracker.rundir import CPU_SECONDS, ENERGY, GPU_SECONDS, RUN_JSON, SAMPLES_CSV

READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
READ_EVERY_SECONDS = 0.01
"""How often ``latest`` reads the monitor's pipe at most: a training loop may ask at every step (the original's
README does), and the figures change once a sample interval (0.1 s at the least)."""
RUN_DIR_ENV = "IMPACT_RUN_DIR"
"""The directory of the standalone run that ``$IMPACT_RUN_ID`` names (impact-run exports both to its command)."""
TAIL_BYTES = 8192
"""How much of the end of samples.csv a joined run reads for its latest figures (a sample is a few rows)."""


@dataclass(frozen=True)
class StandaloneOptions:
    """How a run is measured when no exporter answers: the sample interval, the roots of sysfs and procfs (a
    container's host mounts, or a test's fake trees), the CPU and GPU sources as the exporter's ``--cpu.source``
    and ``--gpu.source`` name them, and ``listen_address`` (``[HOST]:PORT``) to serve the run's /metrics on."""

    sample_interval_seconds: float = 1.0
    sysfs: str = "/sys"
    procfs: str = "/proc"
    cpu_source: str = "auto"
    gpu_source: str = "auto"
    listen_address: str | None = None

    def flags(self) -> list[str]:
        """The monitor's command-line flags for these options."""
        flags = [
            f"--sample-interval={self.sample_interval_seconds}",
            f"--path.sysfs={self.sysfs}",
            f"--path.procfs={self.procfs}",
            f"--cpu.source={self.cpu_source}",
            f"--gpu.source={self.gpu_source}",
        ]
        if self.listen_address:
            flags.append(f"--web.listen-address={self.listen_address}")
        return flags


class StandaloneMonitor:
    """One running monitor process and the pipes to it."""

    def __init__(self, process: subprocess.Popen[bytes], ready: dict[str, Any], run_dir: Path, rest: bytes) -> None:
        self._process = process
        self.ready = ready
        self.run_dir = run_dir
        self.pid: int = ready["monitor_pid"]
        self.measured_by: str = ready["measured_by"]
        self.methods: dict[str, str] = ready["methods"]
        self.hosts: list[dict[str, Any]] = ready["hosts"]
        self.notes: list[str] = ready["notes"]
        self._latest: dict[str, Any] = ready["run"]
        self._final: dict[str, Any] | None = None
        self._buffer = rest
        self._gone = False
        self._next_read = 0.0
        self._out = process.stdout.fileno() if process.stdout else -1

    @classmethod
    def start(
        cls, pid: int, run_dir: Path, run: dict[str, Any], options: StandaloneOptions | None = None
    ) -> StandaloneMonitor:
        """Start measuring ``pid`` and its descendants as ``run`` (run_id, experiment, set, labels, user) into
        ``run_dir``, once the monitor's baseline sample is taken; MeasurementFailed when it cannot measure."""
        options = options or StandaloneOptions()
        command = [
            sys.executable,
            "-m",
            "impact_exporter.standalone",
            f"--pid={pid}",
            f"--run-dir={run_dir.resolve()}",
            f"--run={json.dumps(run)}",
            *options.flags(),
        ]
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True, close_fds=True
        )
        process.wait()  # the first process exits at once, leaving the detached monitor (exporter/standalone.py)
        line, rest = _first_line(process, READY_TIMEOUT_SECONDS)
        event = _decoded(line)
        if event.get("event") != "ready":
            _close(process)
            reason = event.get("error") or "it exited before it was ready"
            raise MeasurementFailed(f"the standalone monitor cannot measure: {reason}")
        return cls(process, event, run_dir, rest)

    def latest(self) -> dict[str, Any]:
        """The run's figures as of the monitor's latest sample (the exporter API's run object), without waiting;
        MeasurementFailed when the monitor is gone."""
        if self._final is not None:
            return self._final
        now = time.monotonic()
        if now >= self._next_read:
            self._drain()
            self._next_read = now + READ_EVERY_SECONDS
        if self._gone:
            raise MeasurementFailed(
                f"the standalone monitor (pid {self.pid}) stopped measuring the run: it was killed or failed; "
                f"what it measured until then is in {self.run_dir / 'samples.csv'}"
            )
        return self._latest

    def stop(self) -> dict[str, Any]:
        """Take a last sample, end the run and return its final figures (the run as it was last seen when the
        monitor is gone)."""
        if self._final is not None:
            return self._final
        try:
            if self._process.stdin:
                self._process.stdin.write(b"stop\n")
                self._process.stdin.flush()
        except OSError:
            pass  # it has ended already: its final line, if any, is in the pipe
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while not self._gone and self._final is None and time.monotonic() < deadline:
            select.select([self._out], [], [], max(0.0, deadline - time.monotonic()))
            self._drain()
        _close(self._process)
        if self._final is None:
            raise MeasurementFailed(
                f"the standalone monitor (pid {self.pid}) ended without its final figures; what it measured is in "
                f"{self.run_dir / 'samples.csv'}"
            )
        return self._final

    def _drain(self) -> None:
        """Read what the monitor wrote since, keeping the newest figures; notes its end."""
        while True:
            try:
                chunk = os.read(self._out, 65536)
            except BlockingIOError:
                break
            if not chunk:
                self._gone = True
                break
            self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            event = _decoded(line)
            if event.get("event") in ("sample", "final"):
                self._latest = event["run"]
            if event.get("event") == "final":
                self._final = event["run"]


class JoinedRun:
    """A standalone run this process joined (impact-run's, named by ``$IMPACT_RUN_DIR`` and ``$IMPACT_RUN_ID``): the
    monitor that measures it belongs to the process that started it, so its figures are read from the run's
    directory (the last sample's rows of samples.csv, run.json's end)."""

    def __init__(self, run_dir: Path, record: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.record = record
        self.measured_by: str = record.get("measured_by") or "standalone"
        self._latest: dict[str, Any] = {}
        self._size = -1

    @classmethod
    def find(cls, environ: Mapping[str, str], run_id: str | None, pid: int) -> JoinedRun | None:
        """The active standalone run of ``$IMPACT_RUN_DIR`` when it is ``run_id`` and measures ``pid`` (its root or a
        descendant of its root); None otherwise (no such run: the caller measures its own)."""
        directory = environ.get(RUN_DIR_ENV)
        if not directory or not run_id:
            return None
        try:
            record = json.loads((Path(directory) / RUN_JSON).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("run_id") != run_id or record.get("end_time") is not None:
            return None
        root = record.get("pid")
        if not isinstance(root, int) or not measured_by_roots(pid, [root]):
            return None
        return cls(Path(directory), record)

    def latest(self) -> dict[str, Any]:
        """The run's figures as of the monitor's latest sample, in the shape of the exporter API's run object
        (``status`` "finished" once run.json has its end); MeasurementFailed when its files cannot be read."""
        try:
            size = (self.run_dir / SAMPLES_CSV).stat().st_size
            if size != self._size:
                self._latest = last_sample(_tail(self.run_dir / SAMPLES_CSV, TAIL_BYTES))
                self._size = size
                self.record = json.loads((self.run_dir / RUN_JSON).read_text())
        except (OSError, ValueError) as error:
            raise MeasurementFailed(
                f"cannot read the figures of run {self.record.get('run_id')} in {self.run_dir}: {error}"
            ) from error
        finished = self.record.get("end_time") is not None
        return {
            "run_id": self.record.get("run_id"),
            "experiment": self.record.get("experiment"),
            "set": self.record.get("set", ""),
            "labels": self.record.get("labels", {}),
            "status": "finished" if finished else "active",
            "start_time": self.record.get("start_time"),
            "end_time": self.record.get("end_time"),
            "sources_up": {},
            **self._latest,
        }


def last_sample(text: str) -> dict[str, Any]:
    """The figures of the last complete sample in the end of a samples.csv (``metric,instance,component,timestamp,
    value`` rows): energy_joules by component, cpu_seconds, gpu_seconds and last_sample_time."""
    lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]  # the last may be half written
    rows = [line.split(",") for line in lines if line.count(",") == 4 and not line.startswith("metric,")]
    if not rows:
        return {"energy_joules": {}, "cpu_seconds": 0.0, "gpu_seconds": 0.0, "last_sample_time": None}
    last = rows[-1][3]
    sample = [row for row in rows if row[3] == last]
    energy = {component: float(value) for metric, _, component, _, value in sample if metric == ENERGY}
    figures = {metric: float(value) for metric, _, _, _, value in sample if metric != ENERGY}
    return {
        "energy_joules": energy,
        "cpu_seconds": figures.get(CPU_SECONDS, 0.0),
        "gpu_seconds": figures.get(GPU_SECONDS, 0.0),
        "last_sample_time": float(last),
    }


def _tail(path: Path, size: int) -> str:
    with path.open("rb") as file:
        file.seek(max(0, file.seek(0, os.SEEK_END) - size))
        return file.read().decode("utf-8", "replace")


def measured_by_roots(pid: int, roots: Collection[int]) -> bool:
    """Whether ``pid`` is one of ``roots`` or descends from one (a run measures its roots' descendants)."""
    import psutil

    if pid in roots:
        return True
    try:
        return any(parent.pid in roots for parent in psutil.Process(pid).parents())
    except psutil.Error:
        return False


def _first_line(process: subprocess.Popen[bytes], timeout: float) -> tuple[bytes, bytes]:
    """The monitor's first line (b"" when it ends or says nothing within ``timeout``) and what followed it, read
    from the pipe's descriptor, which stays non-blocking from then on."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    os.set_blocking(fd, False)
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data and time.monotonic() < deadline:
        select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not chunk:
            break
        data += chunk
    line, _, rest = data.partition(b"\n")
    return line, rest


def _decoded(line: bytes) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


def _close(process: subprocess.Popen[bytes]) -> None:
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
