"""The standalone monitor: one run measured without an exporter, by the exporter's own sources and attribution.

When no impact-exporter answers, ``track_run``, ``impact-run`` and ``ImpactTracker`` start this module as a process
of its own (experiment_impact_tracker/standalone.py starts and talks to it). It reads the same sources the exporter
reads (RAPL where readable, else the estimate; NVIDIA GPUs through NVML, which needs no root), attributes each
interval with the same sampler and ledger, and so measures the run's share of the machine exactly as an exporter
would, for this one run. After every sample it appends the run's counters to ``samples.csv`` in the run directory,
in the archive format of ``impact-report archive`` (reporter/runs.py)::

    metric,instance,component,timestamp,value
    impact_run_energy_joules_total,node1,cpu,1700000001.02,12.5

so the reporter reads the run offline, and a crash or ``kill -9`` of the experiment loses nothing measured: the
monitor is not the experiment's descendant (it detaches at start, so its own CPU time is not billed to the run), and
its rows are in the file once written.

The protocol on its standard streams, one JSON object a line: it writes ``{"event": "ready", ...}`` (what measures:
methods, hosts, notes such as "RAPL cannot be used") or ``{"event": "error", "error": ...}``, then
``{"event": "sample", "run": {...}}`` after each sample (the run object of the exporter's API; dropped when nobody
reads), and ``{"event": "final", "run": {...}}`` when it ends. It ends on a line ``stop`` on its input, at the end
of its input (the experiment is gone), or when the run's processes are all gone; then it samples once more, writes
the final figures into run.json, and exits. ``--web.listen-address`` serves the run's ``/metrics`` (the exporter's
collector; needs the exporter's extra) while it runs.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import select
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from experiment_impact_tracker.rundir import (
    CPU_SECONDS,
    ENERGY,
    GPU_SECONDS,
    RUN_JSON,
    SAMPLES_CSV,
    WORK_JSONL,
    WORK_UNITS_TOTAL,
    read_run_dir,
    write_json_atomic,
)
from impact_exporter.host import HostInfo, read_host_info
from impact_exporter.ledger import Ledger
from impact_exporter.run import MAX_WORK_UNITS, WORK_UNITS, ProcessRef, Run, RunKey, run_object, settled_run
from impact_exporter.sampler import GPU, Sampler, Snapshot
from impact_exporter.sources import SourceError
from impact_exporter.sources.opening import CPU_SOURCES, GPU_SOURCES, open_cpu_energy, open_gpus
from impact_exporter.sources.procfs import ProcFS

log = logging.getLogger("impact_exporter")

EXIT_FAILED = 1


@dataclass(frozen=True)
class MonitorSettings:
    """What to measure and how: the run, its root process, where its samples go, the sources' roots."""

    pid: int
    run_dir: Path
    run_id: str
    experiment: str
    set: str
    labels: dict[str, str]
    user: str
    sample_interval_seconds: float = 1.0
    sysfs: Path = Path("/sys")
    procfs: Path = Path("/proc")
    cpu_source: str = "auto"
    gpu_source: str = "auto"
    listen_address: str | None = None


def measured_by(sources: Sequence[str]) -> str:
    """How run.json and every report name this mode: "standalone (rapl, nvml)", with the sources that measured the
    run's energy (short: the appendix prints it in a column of a third of a paper column)."""
    return f"standalone ({', '.join(sources) or 'CPU time only'})"


def sample_rows(run: Run, instance: str, timestamp: float) -> str:
    """The run's counters at one sample as samples.csv lines: energy per component, CPU time, and GPU time when
    the run has GPU energy (the exporter exposes the same series, exporter/collector.py)."""
    rows = [
        f"{ENERGY},{instance},{component},{timestamp!r},{joules!r}\n" for component, joules in run.energy_joules.items()
    ]
    rows.append(f"{CPU_SECONDS},{instance},,{timestamp!r},{run.cpu_seconds!r}\n")
    if GPU in run.energy_joules:
        rows.append(f"{GPU_SECONDS},{instance},,{timestamp!r},{run.gpu_seconds!r}\n")
    rows += [
        f"{WORK_UNITS_TOTAL},{instance},{unit},{timestamp!r},{count!r}\n" for unit, count in run.work_units.items()
    ]
    return "".join(rows)


class WorkFile:
    """The units of work a run's processes appended to its WORK_JSONL (``run.add_work``), read as they come.

    A line that is not an object of known units with whole counts from 0 is left out with one warning: the file
    is the run's own processes' (its owner's), and a bad line must not stop the measurement.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self._partial = b""
        self._warned = False

    def new_units(self) -> dict[str, int]:
        """The units appended since the last call, summed per unit."""
        try:
            with open(self._path, "rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return {}
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        units: dict[str, int] = {}
        for line in lines:
            for unit, count in self._parsed(line).items():
                units[unit] = units.get(unit, 0) + count
        return units

    def _parsed(self, line: bytes) -> dict[str, int]:
        try:
            reported = json.loads(line)
        except ValueError:
            reported = None
        valid = isinstance(reported, dict) and all(
            unit in WORK_UNITS and type(count) is int and 0 <= count <= MAX_WORK_UNITS
            for unit, count in reported.items()
        )
        if valid:
            return reported
        if not self._warned:
            self._warned = True
            log.warning("%s: a line that is not units of work is left out: %.80r", self._path, line)
        return {}


def host_record(host: HostInfo, instance: str, gpus: Sequence[str]) -> dict[str, Any]:
    """The host as an archive's run.json lists it (reporter/runs.py Host)."""
    return {
        "instance": instance,
        "hostname": host.hostname,
        "cpu_model": host.cpu_model,
        "cpu_vendor": host.cpu_vendor,
        "cpu_count": str(host.cpu_count),
        "kernel": host.kernel,
        "gpus": list(gpus),
    }


class Notes(logging.Handler):
    """Collects what the sources say while they are chosen ("RAPL cannot be used: ..."), for the ready line."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class Monitor:
    """The sampler and ledger of one run, with its samples file and its settled run."""

    def __init__(self, settings: MonitorSettings, nvml: ModuleType | None = None) -> None:
        """Open the sources (SourceError or ValueError when they cannot work here) and take the baseline sample."""
        self.settings = settings
        procfs = ProcFS(settings.procfs)
        notes = Notes()
        log.addHandler(notes)
        log.propagate = False  # the experiment prints the notes, as its own warnings
        try:
            energy = open_cpu_energy(settings.cpu_source, settings.sysfs, procfs)
            self.gpu = open_gpus(settings.gpu_source, nvml=nvml)
        finally:
            log.removeHandler(notes)
            log.propagate = True
        self.notes = notes.lines
        root = procfs.process(settings.pid)
        if root is None:
            raise ValueError(f"process {settings.pid} does not exist (in {settings.procfs})")
        self.ledger = Ledger()
        self.key = RunKey(os.getuid(), settings.run_id)
        self.sampler = Sampler(
            procfs, energy=energy, ledger=self.ledger, interval_seconds=settings.sample_interval_seconds, gpu=self.gpu
        )
        self.ledger.track(self.key, [settings.pid])
        snapshot = self.sampler.sample_once()
        self.run = Run(
            run_id=settings.run_id,
            experiment=settings.experiment,
            set=settings.set,
            labels=settings.labels,
            uid=self.key.uid,
            user=settings.user,
            processes=(ProcessRef(root.pid, root.start_ticks),),
            start_time=snapshot.timestamp,
        )
        self.host = read_host_info(settings.procfs)
        self.instance = self.host.hostname or socket.gethostname()
        sources = [reading.method for reading in snapshot.energy_domains[:1]]
        if self.gpu is not None:
            sources.append(self.gpu.name)
        self.methods = {"cpu": sources[0]} if energy is not None else {}
        if energy is not None and any(reading.domain == "dram" for reading in snapshot.energy_domains):
            self.methods["dram"] = sources[0]
        if self.gpu is not None:
            self.methods["gpu"] = snapshot.gpu_energy_method or self.gpu.name
        self.measured_by = measured_by(sources)
        self._work = WorkFile(settings.run_dir / WORK_JSONL)
        self._samples = os.open(settings.run_dir / SAMPLES_CSV, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._settle(snapshot)

    def ready(self) -> dict[str, Any]:
        """The ready line: what measures, on which host, and what the experiment should be told."""
        gpus = [f"{gpu.name} (driver {gpu.driver_version or 'unknown'})" for gpu in self.gpu.gpus] if self.gpu else []
        return {
            "event": "ready",
            "run": self.run_object(),
            "measured_by": self.measured_by,
            "methods": self.methods,
            "hosts": [host_record(self.host, self.instance, gpus)],
            "notes": self.notes,
            "monitor_pid": os.getpid(),
        }

    def sample(self) -> Run:
        """Sample every source once, settle the run and append its counters to samples.csv."""
        return self._settle(self.sampler.sample_once())

    def _settle(self, snapshot: Snapshot) -> Run:
        if units := self._work.new_units():
            counted = dict(self.run.work_units)
            for unit, count in units.items():
                counted[unit] = min(counted.get(unit, 0) + count, MAX_WORK_UNITS)
            self.run = replace(self.run, work_units=counted)
        if self.run.active:
            self.run = settled_run(
                self.run, self.ledger.totals().get(self.key), self.ledger.measured(), snapshot.timestamp
            )
        os.write(self._samples, sample_rows(self.run, self.instance, snapshot.timestamp).encode())
        return self.run

    def finish(self, reason: str) -> Run:
        """Sample a last time, end the run and record its final figures in run.json; the final run."""
        self.sample()
        if self.run.active:
            self.run = replace(self.run, end_time=self.sampler.snapshot.timestamp)
        os.close(self._samples)
        path = self.settings.run_dir / RUN_JSON
        try:
            record = read_run_dir(path)
        except Exception:  # noqa: BLE001 (a run.json the experiment never wrote: write ours alone)
            record = {"experiment": self.run.experiment}
        write_json_atomic(
            path,
            {
                **record,
                "end_time": self.run.end_time,
                "final": self.run_object(),
                "end_reason": reason,
                "measured_by": self.measured_by,
                "methods": self.methods,
            },
        )
        return self.run

    def run_object(self) -> dict[str, Any]:
        return run_object(self.run, self.sampler.snapshot)


def serve_metrics(monitor: Monitor, address: str) -> None:
    """Serve the run's /metrics on ``[HOST]:PORT`` from a thread: the exporter's collector over the monitor's
    snapshot and run, so a Prometheus scrapes it as it would an exporter."""
    from experiment_impact_tracker.extras import require_extra

    require_extra("the standalone monitor's /metrics", "exporter", ["prometheus_client"])
    from prometheus_client import start_http_server
    from prometheus_client.registry import CollectorRegistry

    from impact_exporter import __version__
    from impact_exporter.cli import parse_listen_address
    from impact_exporter.collector import ImpactCollector

    host, port = parse_listen_address(address)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(
        ImpactCollector(lambda: monitor.sampler.snapshot, monitor.host, __version__, lambda: [monitor.run])
    )
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        raise ValueError(f"cannot serve /metrics on {address}: {error.strerror or error}") from error


def detach() -> None:
    """Leave the experiment's process tree: fork, and let the first process exit at once, so this one is adopted by
    init (or the session's subreaper) and its CPU time is never counted in the run it measures."""
    if os.fork() != 0:
        os._exit(0)


class Commands:
    """The monitor's input: ``stop`` lines, and its end when the experiment has gone."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = b""

    def wait(self, timeout: float) -> str | None:
        """ "stop" (a stop line), "eof" (the input's end: the experiment is gone), or None when ``timeout`` passed
        with nothing to do."""
        ready, _, _ = select.select([self._fd], [], [], max(0.0, timeout))
        if not ready:
            return None
        chunk = os.read(self._fd, 4096)
        if not chunk:
            return "eof"
        self._buffer += chunk
        return "stop" if b"stop\n" in self._buffer else None


def say(event: dict[str, Any], out: io.TextIOBase, drop_when_full: bool = False) -> None:
    """Write one line of the protocol; a sample line is dropped when the experiment reads none (a full pipe)."""
    try:
        out.write(json.dumps(event) + "\n")
        out.flush()
    except BlockingIOError:
        if not drop_when_full:
            raise
    except BrokenPipeError:
        pass


def monitor_loop(monitor: Monitor, commands: Commands, out: io.TextIOBase, clock: Callable[[], float]) -> str:
    """Sample every interval until a stop, the input's end or the run's end; the reason, in words."""
    interval = monitor.settings.sample_interval_seconds
    due = clock() + interval
    while True:
        command = commands.wait(due - clock())
        if command == "stop":
            return "stopped"
        if command == "eof":
            return "the experiment's process that started the monitor is gone"
        if clock() < due:
            continue
        due = max(due + interval, clock())
        run = monitor.sample()
        if not run.active:
            return "the run's processes are all gone"
        say({"event": "sample", "run": monitor.run_object()}, out, drop_when_full=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m impact_exporter.standalone",
        description="Measure one run without an exporter (started by track_run, impact-run and ImpactTracker).",
    )
    parser.add_argument("--pid", type=int, required=True, help="the run's root process")
    parser.add_argument("--run-dir", type=Path, required=True, help="where run.json and samples.csv are")
    parser.add_argument("--run", required=True, help="JSON: run_id, experiment, set, labels, user")
    parser.add_argument("--sample-interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--path.sysfs", dest="sysfs", type=Path, default=Path("/sys"))
    parser.add_argument("--path.procfs", dest="procfs", type=Path, default=Path("/proc"))
    parser.add_argument("--cpu.source", dest="cpu_source", choices=CPU_SOURCES, default="auto")
    parser.add_argument("--gpu.source", dest="gpu_source", choices=GPU_SOURCES, default="auto")
    parser.add_argument("--web.listen-address", dest="listen_address", help="serve the run's /metrics here")
    return parser


def parse_settings(argv: Sequence[str] | None) -> MonitorSettings:
    args = build_parser().parse_args(argv)
    run = json.loads(args.run)
    return MonitorSettings(
        pid=args.pid,
        run_dir=args.run_dir,
        run_id=run["run_id"],
        experiment=run["experiment"],
        set=run.get("set") or "",
        labels=dict(run.get("labels") or {}),
        user=run.get("user") or "",
        sample_interval_seconds=args.sample_interval,
        sysfs=args.sysfs,
        procfs=args.procfs,
        cpu_source=args.cpu_source,
        gpu_source=args.gpu_source,
        listen_address=args.listen_address,
    )


def main(argv: Sequence[str] | None = None, nvml: ModuleType | None = None) -> int:
    """Entry point of ``python -m impact_exporter.standalone``; ``nvml`` replaces the pynvml module."""
    settings = parse_settings(argv)
    detach()
    logging.basicConfig(level=logging.WARNING, format="impact monitor: warning: %(message)s", force=True)
    out = sys.stdout
    try:
        monitor = Monitor(settings, nvml)
        if settings.listen_address:
            serve_metrics(monitor, settings.listen_address)
    except (SourceError, ValueError, OSError) as error:
        say({"event": "error", "error": str(error)}, out)
        return EXIT_FAILED
    except Exception as error:  # a bug: the experiment must still hear why, not only "it exited"
        say({"event": "error", "error": f"{type(error).__name__}: {error}"}, out)
        raise
    say(monitor.ready(), out)
    os.set_blocking(out.fileno(), False)
    reason = monitor_loop(monitor, Commands(sys.stdin.fileno()), out, time.monotonic)
    monitor.finish(reason)
    os.set_blocking(out.fileno(), True)
    say({"event": "final", "run": monitor.run_object(), "reason": reason}, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
