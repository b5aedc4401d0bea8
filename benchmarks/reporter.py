"""Reporter at scale: ``impact-report appendix`` over 24 hours of 1-second samples of 30 runs, backfilled.

The benchmark writes, as OpenMetrics text, what one exporter (instance ``node-1:9877``, job ``impact``) would
have exposed every second over the window: each run's info, start, end and active gauges and its energy (cpu,
dram) and CPU-seconds counters from its start until 15 minutes after its end (the exporter's default
retention), and the node's ``impact_host_info`` and ``impact_energy_source_info``. Each run has its own power
(a level per run plus seeded noise), two sets (``baseline``, ``treatment``) alternate, and every fifth run's
counters reset halfway (an exporter restart without its state), so the expected per-run figures are direct
sums over the generated seconds. ``promtool tsdb create-blocks-from openmetrics`` turns the text into blocks,
a Prometheus serves them, and ``impact-report appendix --no-pdf`` and ``impact-report runs --format=json``
read them in their own processes, timed, with their peak memory. Target (issue #10): the appendix in under
60 s and 1 GiB, its energies equal to the direct computation.

    python -m benchmarks.reporter [--hours 24] [--runs 30] [--concurrent 1] [--keep DIR]

``--concurrent K`` runs K runs at a time (each K times longer): ``--concurrent 30`` gives 30 runs that all span
the whole window, 30 times the samples.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import psutil
import requests

from benchmarks.common import REPO_ROOT, machine_description, stop_process, wait_for

INSTANCE, JOB = "node-1:9877", "impact"
EXPERIMENT = "bench-reporter"
SETS = ("baseline", "treatment")
COMPONENTS = ("cpu", "dram")
RETAIN_FINISHED_SECONDS = 900  # the exporter's --runs.retain-finished default
RESET_EVERY = 5  # every fifth run's counters restart from 0 halfway through it
END_BEFORE_NOW_SECONDS = 300
TARGET_SECONDS, TARGET_BYTES = 60.0, 2**30
REPORTER = (sys.executable, "-m", "impact_reporter")  # impact-report, in this interpreter
HOST_LABELS = {
    "cpu_count": "64",
    "cpu_model": "AMD EPYC 7742 64-Core Processor",
    "cpu_vendor": "AuthenticAMD",
    "hostname": "node-1",
    "kernel": "6.1.0",
}


@dataclass(frozen=True)
class PlannedRun:
    """One generated run: who it is, when it ran (whole unix seconds) and the figures it must report."""

    index: int
    run_id: str
    set: str
    start: int
    end: int
    seed: int
    energy_joules: dict[str, float] = field(default_factory=dict)  # direct sums of the per-second energy
    cpu_seconds: float = 0.0

    @property
    def reset_at(self) -> int | None:
        """Seconds after the start at which the counters restart from 0, or None."""
        return (self.end - self.start) // 2 if self.index % RESET_EVERY == 0 else None

    def increments(self, counter: str) -> np.ndarray:
        """What counter ``counter`` (a component, or "cpu_seconds") gains in each second of the run.

        Drawn from a generator seeded by the run and the counter, so they can be drawn again while writing
        each metric family without keeping every run's arrays in memory.
        """
        rng = np.random.default_rng([self.seed, self.index, (*COMPONENTS, "cpu_seconds").index(counter)])
        seconds = self.end - self.start
        treatment = 0.8 if self.set == "treatment" else 1.0
        level = {"cpu": 25.0 + self.index % 7, "dram": 3.0 + 0.1 * (self.index % 5), "cpu_seconds": 4.0}[counter]
        return np.clip(rng.normal(level * treatment, 0.1 * level, seconds), 0.0, None)

    def counter_values(self, counter: str) -> np.ndarray:
        """The counter's exposed value at each second from the start to the end (inclusive), resets included."""
        gains = np.concatenate(([0.0], self.increments(counter)))
        if self.reset_at is None:
            return np.cumsum(gains)
        cut = self.reset_at
        # The counter restarted from 0 just after the sample at cut - 1 and counted everything since.
        return np.concatenate((np.cumsum(gains[:cut]), np.cumsum(gains[cut:])))


@dataclass(frozen=True)
class Dataset:
    """The generated window [start, end] (unix seconds) and its runs."""

    start: int
    end: int
    runs: tuple[PlannedRun, ...]


def plan(hours: float, runs: int, concurrent: int, end: int, seed: int = 10) -> Dataset:
    """``runs`` runs over the ``hours`` before ``end``, ``concurrent`` at a time, back to back, with the figures
    each must report computed directly from its per-second increments."""
    window = round(hours * 3600)
    slots = math.ceil(runs / concurrent)
    length = window // slots
    start = end - window
    planned = []
    for index in range(runs):
        begin = start + (index // concurrent) * length
        run = PlannedRun(index, f"bench-{index:03d}", SETS[index % 2], begin, begin + length, seed)
        energy = {component: math.fsum(run.increments(component)) for component in COMPONENTS}
        planned.append(replace(run, energy_joules=energy, cpu_seconds=math.fsum(run.increments("cpu_seconds"))))
    return Dataset(start, end, tuple(planned))


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{name}="{value}"' for name, value in sorted(labels.items())) + "}"


def _node_labels(**labels: str) -> str:
    return _labels(instance=INSTANCE, job=JOB, **labels)


def _exported_until(run: PlannedRun, dataset: Dataset) -> int:
    return min(run.end + RETAIN_FINISHED_SECONDS, dataset.end)


def _write_series(out: TextIO, name: str, labels: str, times: range, values: Sequence[float]) -> int:
    """One series' samples, oldest first; returns how many were written."""
    prefix = f"{name}{labels} "
    out.writelines(f"{prefix}{value!r} {t}\n" for t, value in zip(times, values, strict=True))
    return len(values)


def _run_counter(out: TextIO, run: PlannedRun, dataset: Dataset, name: str, counter: str, **labels: str) -> int:
    values = run.counter_values(counter).tolist()
    values += [values[-1]] * (_exported_until(run, dataset) - run.end)
    times = range(run.start, run.start + len(values))
    return _write_series(out, name, _node_labels(run_id=run.run_id, **labels), times, values)


def _run_gauge(out: TextIO, run: PlannedRun, dataset: Dataset, name: str, labels: str) -> int:
    """A run gauge over the seconds it is exported: info, start, end (once ended) and active."""
    until = _exported_until(run, dataset)
    if name == "impact_run_end_time_seconds":
        times = range(run.end, until + 1)
        return _write_series(out, name, labels, times, [float(run.end)] * len(times))
    times = range(run.start, until + 1)
    if name == "impact_run_active":
        values = [1.0 if t < run.end else 0.0 for t in times]
    elif name == "impact_run_start_time_seconds":
        values = [float(run.start)] * len(times)
    else:
        values = [1.0] * len(times)
    return _write_series(out, name, labels, times, values)


def write_openmetrics(path: Path, dataset: Dataset) -> int:
    """Write the dataset as OpenMetrics text, one family after another and each series oldest first, streaming
    (one run's arrays at a time); returns the number of samples written."""
    written = 0
    window = range(dataset.start, dataset.end + 1)
    with path.open("w", buffering=1 << 20) as out:
        out.write("# TYPE impact_host info\n")
        written += _write_series(out, "impact_host_info", _node_labels(**HOST_LABELS), window, [1.0] * len(window))
        out.write("# TYPE impact_energy_source_info gauge\n")
        for component in COMPONENTS:
            labels = _node_labels(component=component, method="rapl")
            written += _write_series(out, "impact_energy_source_info", labels, window, [1.0] * len(window))
        for name in (
            "impact_run_info",
            "impact_run_start_time_seconds",
            "impact_run_end_time_seconds",
            "impact_run_active",
        ):
            out.write(f"# TYPE {name} gauge\n")
            for run in dataset.runs:
                extra = {"experiment": EXPERIMENT, "set": run.set, "user": "bench", "seed": str(run.index)}
                labels = _node_labels(run_id=run.run_id, **(extra if name == "impact_run_info" else {}))
                written += _run_gauge(out, run, dataset, name, labels)
        out.write("# TYPE impact_run_energy_joules counter\n")
        for run in dataset.runs:
            for component in COMPONENTS:
                written += _run_counter(
                    out, run, dataset, "impact_run_energy_joules_total", component, component=component
                )
        out.write("# TYPE impact_run_cpu_seconds counter\n")
        for run in dataset.runs:
            written += _run_counter(out, run, dataset, "impact_run_cpu_seconds_total", "cpu_seconds")
        out.write("# EOF\n")
    return written


@dataclass(frozen=True)
class Timed:
    """A finished child process: its wall time, its CPU time (user + system, with its children's), the peak RSS
    of the largest of them, the peak of their memory together (PSS summed over the process and its children,
    which counts the pages forked children share once), and what it printed."""

    seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    stdout: str
    peak_pss_bytes: int = 0


def run_timed(command: Sequence[str], timeout: float = 1800.0) -> Timed:
    """Run ``command`` to completion; its wall time, CPU time and peak RSS (from wait4) and the peak PSS of its
    process tree (sampled every 0.1 s), RuntimeError if it fails."""
    started = time.monotonic()
    peak_pss = 0
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, cwd=REPO_ROOT)
        deadline = started + timeout
        sampled = 0.0
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
            if time.monotonic() - sampled >= 0.1:
                peak_pss, sampled = max(peak_pss, tree_pss_bytes(process.pid)), time.monotonic()
            time.sleep(0.02)
        seconds = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... exited with {process.returncode}: {stderr[-2000:]}")
    return Timed(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, stdout, peak_pss)


def tree_pss_bytes(pid: int) -> int:
    """The PSS of a process and its descendants together (0 for what has exited meanwhile)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_full_info().pss
        except psutil.Error:
            continue
    return total


def backfill(openmetrics: Path, data_dir: Path) -> Timed:
    """``promtool tsdb create-blocks-from openmetrics`` of the file into ``data_dir``."""
    promtool = shutil.which("promtool")
    if promtool is None:
        raise RuntimeError("promtool not found on PATH; install it with: apt-get install prometheus")
    return run_timed(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", "--quiet", str(openmetrics), str(data_dir)]
    )


KEEP_OLD_BLOCKS = ("--storage.tsdb.retention.time=3650d",)
"""What a Prometheus serving backfilled data needs: the blocks are in the past, keep them however old."""


class BackfilledPrometheus:
    """A Prometheus on a loopback port serving the blocks in ``data_dir``, scraping nothing."""

    def __init__(self, workdir: Path, data_dir: Path) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus not found on PATH; install it with: apt-get install prometheus")
        config = workdir / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 15s\n")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log_file = workdir / "prometheus.log"
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={data_dir}",
                    *KEEP_OLD_BLOCKS,
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._ready, 120, "prometheus to load the blocks")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited: {self.log_file.read_text()[-2000:]}")
        try:
            return requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def stop(self) -> None:
        stop_process(self.process, 30)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def window_flags(dataset: Dataset) -> list[str]:
    """``--start``/``--end`` around the generated window, as a user would give them."""
    return [f"--start={dataset.start - 60}", f"--end={dataset.end + 60}"]


def appendix_args(prometheus_url: str, dataset: Dataset, out: Path) -> list[str]:
    """``impact-report`` arguments of ``appendix --no-pdf`` for both sets of the experiment, treatment compared
    with baseline."""
    return appendix_command(prometheus_url, window_flags(dataset), f'experiment="{EXPERIMENT}",', out)


def appendix_command(url: str, window: Sequence[str], scope: str, out: Path) -> list[str]:
    """``impact-report`` arguments of ``appendix --no-pdf`` over ``window`` (flags) for both SETS, each set's
    ``--match`` with ``scope`` (matchers, each followed by a comma; "" for every run), treatment compared with
    baseline."""
    matches = [arg for name in SETS for arg in ("--match", f'{{{scope}set="{name}"}}')]
    return [
        "appendix",
        "--no-pdf",
        f"--prometheus={url}",
        *window,
        "--experiment-set-names",
        *SETS,
        *matches,
        "--compare",
        SETS[1],
        SETS[0],
        f"--out={out}",
    ]


def runs_args(prometheus_url: str, dataset: Dataset) -> list[str]:
    """``impact-report`` arguments of ``runs --format=json`` for every generated run."""
    return [
        "runs",
        "--format=json",
        f"--prometheus={prometheus_url}",
        *window_flags(dataset),
        "--match",
        f'{{experiment="{EXPERIMENT}"}}',
    ]


def expected_figures(run: PlannedRun) -> dict[str, float]:
    """The figures the reporter must print for ``run``, computed directly from the generated seconds."""
    figures = {f"energy_joules.{c}": joules for c, joules in run.energy_joules.items()}
    figures |= {
        "total_joules": math.fsum(run.energy_joules.values()),
        "cpu_hours": run.cpu_seconds / 3600.0,
        "duration_seconds": float(run.end - run.start),
        "coverage": 1.0,
        "counter_resets": 0.0 if run.reset_at is None else 1.0,
    }
    return figures


def reported_figures(run: dict[str, Any]) -> dict[str, float]:
    """The same figures from one run object of appendix.json or ``runs --format=json``."""
    figures = {f"energy_joules.{c}": float(joules) for c, joules in run["energy_joules"].items()}
    for key in ("total_joules", "cpu_hours", "duration_seconds", "coverage", "counter_resets"):
        figures[key] = float(run[key])
    return figures


def max_relative_difference(dataset: Dataset, reported: Sequence[dict[str, Any]]) -> tuple[float, str]:
    """The largest relative difference between reported and expected figures over every run, and where it is;
    ValueError when a run is missing or extra, or a figure is missing."""
    by_id = {run["run_id"]: run for run in reported}
    if set(by_id) != {run.run_id for run in dataset.runs}:
        raise ValueError(f"reported runs {sorted(by_id)} are not the generated ones")
    return worst_difference(
        (run.run_id, expected_figures(run), reported_figures(by_id[run.run_id])) for run in dataset.runs
    )


def worst_difference(runs: Iterable[tuple[str, Mapping[str, float], Mapping[str, float]]]) -> tuple[float, str]:
    """Over (run id, expected figures, reported figures): the largest relative difference and where it is;
    ValueError when a run's reported figures are not the expected ones."""
    worst, where = 0.0, "none"
    for run_id, expected, got in runs:
        if set(expected) != set(got):
            raise ValueError(f"run {run_id}: reported {sorted(got)}, expected {sorted(expected)}")
        for key, value in expected.items():
            difference = abs(got[key] - value) / max(abs(value), 1e-300)
            if difference > worst or where == "none":
                worst, where = difference, f"{run_id} {key}: {got[key]!r} vs {value!r}"
    return worst, where


def appendix_runs(appendix_json: Path) -> list[dict[str, Any]]:
    """Every run object of an appendix.json, over all sets; ValueError if a run failed."""
    document = json.loads(appendix_json.read_text())
    failed = [f for s in document["sets"] for f in s["failed_runs"]]
    if failed:
        raise ValueError(f"runs failed in the appendix: {failed}")
    return [run for s in document["sets"] for run in s["runs"]]


@dataclass(frozen=True)
class Result:
    samples: int
    text_bytes: int
    generate_seconds: float
    backfill: Timed
    prometheus_start_seconds: float
    appendix: Timed
    appendix_difference: tuple[float, str]
    runs: Timed
    runs_difference: tuple[float, str]


def measure(hours: float, runs: int, concurrent: int, workdir: Path) -> Result:
    dataset = plan(hours, runs, concurrent, end=int(time.time()) - END_BEFORE_NOW_SECONDS)
    text = workdir / "backfill.om"
    started = time.monotonic()
    samples = write_openmetrics(text, dataset)
    generate_seconds = time.monotonic() - started
    text_bytes = text.stat().st_size
    print(f"  generated {samples:,} samples ({text_bytes / 2**20:.0f} MiB) in {generate_seconds:.1f} s", flush=True)
    data_dir = workdir / "data"
    shutil.rmtree(data_dir, ignore_errors=True)  # a kept directory's blocks from an earlier run would add up
    backfilled = backfill(text, data_dir)
    text.unlink()
    print(f"  promtool: {_timed(backfilled)}", flush=True)
    started = time.monotonic()
    prometheus = BackfilledPrometheus(workdir, data_dir)
    prometheus_start = time.monotonic() - started
    try:
        out = workdir / "appendix"
        appendix = run_timed([*REPORTER, *appendix_args(prometheus.url, dataset, out)])
        appendix_difference = max_relative_difference(dataset, appendix_runs(out / "appendix.json"))
        listed = run_timed([*REPORTER, *runs_args(prometheus.url, dataset)])
        runs_difference = max_relative_difference(dataset, json.loads(listed.stdout)["runs"])
    finally:
        prometheus.stop()
    return Result(
        samples,
        text_bytes,
        generate_seconds,
        backfilled,
        prometheus_start,
        appendix,
        appendix_difference,
        listed,
        runs_difference,
    )


def _timed(timed: Timed) -> str:
    return f"{timed.seconds:.1f} s wall, {timed.cpu_seconds:.1f} CPU-s, {timed.peak_rss_bytes / 2**20:.0f} MiB peak RSS"


def report(result: Result, hours: float, runs: int, concurrent: int) -> None:
    print(
        f"{runs} runs ({concurrent} at a time) over {hours:g} h at 1 s: {result.samples:,} samples, "
        f"{result.text_bytes / 2**20:.0f} MiB of OpenMetrics"
    )
    print(f"generate: {result.generate_seconds:.1f} s")
    print(f"promtool tsdb create-blocks-from openmetrics: {_timed(result.backfill)}")
    print(f"prometheus ready on the blocks: {result.prometheus_start_seconds:.1f} s")
    for name, timed, (difference, where) in (
        ("impact-report appendix --no-pdf", result.appendix, result.appendix_difference),
        ("impact-report runs --format=json", result.runs, result.runs_difference),
    ):
        print(
            f"{name}: {_timed(timed)}; max relative difference from the direct computation {difference:.1e} ({where})"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (other work on this machine slows wall times)")
    fast = result.appendix.seconds < TARGET_SECONDS and result.appendix.peak_rss_bytes < TARGET_BYTES
    exact = result.appendix_difference[0] <= 1e-9 and result.runs_difference[0] <= 1e-9
    print(
        f"target: appendix < {TARGET_SECONDS:.0f} s and < 1 GiB: {'meets' if fast else 'MISSES'} it; "
        f"figures equal the direct computation (1e-9): {'yes' if exact else 'NO'}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reporter", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=24.0, help="length of the generated window (default: 24)")
    parser.add_argument("--runs", type=int, default=30, help="runs in the window (default: 30)")
    parser.add_argument(
        "--concurrent",
        type=int,
        default=1,
        help="runs at a time, each this many times longer (default: 1, back to back)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="work in DIR and keep the blocks and appendix there (default: a temporary directory)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or not 1 <= args.concurrent <= args.runs:
        parser.error("--runs must be at least 1 and --concurrent between 1 and --runs")
    if args.hours * 3600 < 2 * math.ceil(args.runs / args.concurrent):
        parser.error("--hours is too short: each run needs at least 2 seconds")
    print(f"# reporter on backfilled data; {machine_description()}")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = measure(args.hours, args.runs, args.concurrent, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="iet-reporter-") as workdir:
            result = measure(args.hours, args.runs, args.concurrent, Path(workdir))
    report(result, args.hours, args.runs, args.concurrent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
