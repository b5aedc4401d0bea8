"""Reporter at a lab's scale (issue #19): 10,000 runs over 30 days at 15 s scrapes, backfilled into VictoriaMetrics
and Prometheus, then ``impact-report runs`` and ``appendix --no-pdf`` over the month, beside the same for 30 runs.

The lab has 16 nodes (``node-01:9877`` ... ``node-16:9877``, job ``impact``), each scraped every 15 s at its
own phase; nodes 1 to 6 have GPUs. Every node exports ``impact_host_info`` and ``impact_energy_source_info``
(cpu and dram by RAPL, gpu by NVML) over the whole month. A run lasts from 2 minutes to 4 hours (log-uniform),
starts at a uniformly drawn second, and runs on one node (80 %), two (12 %) or four (8 %); a run on a GPU node
has GPU energy and GPU-seconds. Each node exports, as the exporter does, the run's ``impact_run_info``
(experiment, set, user, a ``model`` label), start, end (once ended) and active gauges, and its energy (per
component) and CPU- and GPU-seconds counters, at every scrape from its start until 15 minutes after its end
(``--runs.retain-finished``). Power is a level per run and node plus seeded noise, so each run's expected
figures are direct sums over the generated seconds, and the reporter's figures are checked against them.

Run ids are random 32-hex uuids, as the client library makes them. The 30-run baseline is the experiment
``baseline-30`` among the 10,000, reported alone over the same month from the same stores, so the two rows
differ only in how many runs the report holds.

VictoriaMetrics gets the series through its JSON line import (``/api/v1/import``), Prometheus through
``promtool tsdb create-blocks-from openmetrics``. For each store and report: the reporter's wall time, its CPU
time (with its forked children's), the peak of its process tree's memory (PSS, which counts the pages forked
children share once) and the store's CPU time over the same command (``/proc``). Target: under 60 s wall and
2 GiB per report of the 10,000 runs on this 2-core machine. The reporter uses both cores (two reading threads, two
forked processes for figures and pages), so the verdict is on wall time: run the benchmark with nothing else
running on the machine.

    python -m benchmarks.reporter_scale [--runs 10000] [--days 30] [--store both|victoria-metrics|prometheus]
        [--keep DIR [--reuse]]

``--keep DIR --reuse`` reports from the data an earlier ``--keep DIR`` run left there (same ``--runs`` and
``--days``), so that a change to the reporter is measured without generating and importing it again.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import requests

from benchmarks.common import machine_description, process_cpu_seconds, stop_process, wait_for
from benchmarks.reporter import (
    REPORTER,
    SETS,
    BackfilledPrometheus,
    Timed,
    appendix_command,
    appendix_runs,
    free_port,
    reported_figures,
    run_timed,
    worst_difference,
)

JOB = "impact"
NODES = tuple(f"node-{number:02d}:9877" for number in range(1, 17))
GPU_NODES = frozenset(NODES[:6])
SCRAPE_SECONDS = 15
RETAIN_FINISHED_SECONDS = 900  # the exporter's --runs.retain-finished default
SHORTEST_RUN, LONGEST_RUN = 120, 4 * 3600
USERS = tuple(f"user{number:02d}" for number in range(12))
BASELINE_EXPERIMENT, BASELINE_RUNS = "baseline-30", 30
END_BEFORE_NOW_SECONDS = 300
TARGET_SECONDS, TARGET_BYTES = 60.0, 2 * 2**30
COUNTERS = ("cpu", "dram", "gpu", "cpu_seconds", "gpu_seconds")
COUNTER_FAMILIES = ("impact_run_energy_joules_total", "impact_run_cpu_seconds_total", "impact_run_gpu_seconds_total")
LEVELS = {"cpu": 60.0, "dram": 6.0, "gpu": 250.0, "cpu_seconds": 8.0, "gpu_seconds": 0.9}


@dataclass(frozen=True)
class LabRun:
    """One generated run: who it is, when it ran (whole unix seconds), on which nodes."""

    index: int
    run_id: str
    user: str
    experiment: str
    set: str
    start: int
    end: int
    nodes: tuple[str, ...]

    @property
    def gpu(self) -> bool:
        return self.nodes[0] in GPU_NODES

    @property
    def counters(self) -> tuple[str, ...]:
        return COUNTERS if self.gpu else ("cpu", "dram", "cpu_seconds")

    def increments(self, node: str, counter: str) -> np.ndarray:
        """What ``counter`` gains on ``node`` in each second of the run, drawn again identically on every call."""
        rng = np.random.default_rng([self.index, NODES.index(node), COUNTERS.index(counter)])
        level = LEVELS[counter] * (0.8 if self.set == "treatment" else 1.0) * (1 + 0.05 * (self.index % 7))
        return np.clip(rng.normal(level, 0.1 * level, self.end - self.start), 0.0, None)

    def scrapes(self, node: str) -> np.ndarray:
        """The node's scrape times (unix seconds) at which it exports the run: from the start until retention ends."""
        phase = NODES.index(node) % SCRAPE_SECONDS
        first = self.start + (phase - self.start) % SCRAPE_SECONDS
        return np.arange(first, self.end + RETAIN_FINISHED_SECONDS + 1, SCRAPE_SECONDS)

    def expected(self) -> dict[str, float]:
        """The figures the reporter must print for this run, summed directly from the generated seconds."""
        sums = {c: math.fsum(math.fsum(self.increments(n, c)) for n in self.nodes) for c in self.counters}
        energy = {c: sums[c] for c in ("cpu", "dram", "gpu") if c in sums}
        return {
            **{f"energy_joules.{c}": joules for c, joules in energy.items()},
            "total_joules": math.fsum(energy.values()),
            "cpu_hours": sums["cpu_seconds"] / 3600.0,
            "duration_seconds": float(self.end - self.start),
            "coverage": 1.0,
            "counter_resets": 0.0,
        }


def plan(runs: int, days: float, end: int, seed: int = 19) -> list[LabRun]:
    """``runs`` runs in the ``days`` before ``end``; the first BASELINE_RUNS form experiment BASELINE_EXPERIMENT."""
    rng = np.random.default_rng(seed)
    start = end - round(days * 86400)
    durations = np.exp(rng.uniform(math.log(SHORTEST_RUN), math.log(LONGEST_RUN), runs)).astype(int)
    planned = []
    for index, duration in enumerate(durations.tolist()):
        begin = int(rng.integers(start, end - RETAIN_FINISHED_SECONDS - duration))
        width = int(rng.choice([1, 2, 4], p=[0.8, 0.12, 0.08]))
        first = int(rng.integers(0, len(NODES) - width + 1))
        experiment = BASELINE_EXPERIMENT if index < BASELINE_RUNS else f"exp-{index % 40:02d}"
        planned.append(
            LabRun(
                index=index,
                run_id=uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | index).hex,
                user=USERS[index % len(USERS)],
                experiment=experiment,
                set=SETS[index % 2],
                start=begin,
                end=begin + duration,
                nodes=NODES[first : first + width],
            )
        )
    return planned


Emitted = tuple[str, dict[str, str], np.ndarray, np.ndarray]
"""One series: metric name, labels (without __name__), timestamps (unix seconds) and values."""


def run_series(run: LabRun, family: str | None = None) -> Iterator[Emitted]:
    """Every series the exporters of the run's nodes export for it, as they expose them (of ``family`` alone when
    given: the counters are drawn only when asked for)."""
    for node in run.nodes:
        times = run.scrapes(node)
        identity = {"instance": node, "job": JOB, "run_id": run.run_id, "user": run.user}
        info = {**identity, "experiment": run.experiment, "set": run.set, "model": f"m{run.index % 5}"}
        ones = np.ones(len(times))
        yield "impact_run_info", info, times, ones
        yield "impact_run_start_time_seconds", identity, times, ones * run.start
        ended = times >= run.end
        yield "impact_run_end_time_seconds", identity, times[ended], ones[ended] * run.end
        yield "impact_run_active", identity, times, (~ended).astype(float)
        if family is not None and family not in COUNTER_FAMILIES:
            continue
        seconds = np.minimum(times, run.end) - run.start
        for counter in run.counters:
            running = np.concatenate(([0.0], np.cumsum(run.increments(node, counter))))[seconds]
            if counter.endswith("_seconds"):
                yield f"impact_run_{counter}_total", identity, times, running
            else:
                yield "impact_run_energy_joules_total", {**identity, "component": counter}, times, running


def node_series(start: int, end: int) -> Iterator[Emitted]:
    """The per-node info series over the whole window."""
    for node in NODES:
        phase = NODES.index(node) % SCRAPE_SECONDS
        times = np.arange(start + (phase - start) % SCRAPE_SECONDS, end + 1, SCRAPE_SECONDS)
        ones = np.ones(len(times))
        host = {"instance": node, "job": JOB, "hostname": node.split(":")[0], "cpu_model": "AMD EPYC 7742 64-Core"}
        yield (
            "impact_host_info",
            {**host, "cpu_count": "128", "cpu_vendor": "AuthenticAMD", "kernel": "6.1.0"},
            times,
            ones,
        )
        methods = {"cpu": "rapl", "dram": "rapl"} | ({"gpu": "nvml-counter"} if node in GPU_NODES else {})
        for component, method in methods.items():
            labels = {"instance": node, "job": JOB, "component": component, "method": method}
            yield "impact_energy_source_info", labels, times, ones


def all_series(runs: Sequence[LabRun], start: int, end: int) -> Iterator[Emitted]:
    yield from node_series(start, end)
    for run in runs:
        yield from run_series(run)


def write_jsonl(out: TextIO, series: Iterator[Emitted]) -> int:
    """The series as VictoriaMetrics' JSON line import reads them (timestamps in ms); returns the sample count."""
    written = 0
    for name, labels, times, values in series:
        line = {
            "metric": {"__name__": name, **labels},
            "values": values.tolist(),
            "timestamps": (times * 1000).tolist(),
        }
        out.write(json.dumps(line, separators=(",", ":")))
        out.write("\n")
        written += len(times)
    return written


def write_openmetrics(out: TextIO, runs: Sequence[LabRun], start: int, end: int) -> None:
    """The series as OpenMetrics text for promtool: each family's series together, each series oldest first."""
    families = (
        "impact_host_info",
        "impact_energy_source_info",
        "impact_run_info",
        "impact_run_start_time_seconds",
        "impact_run_end_time_seconds",
        "impact_run_active",
        "impact_run_energy_joules_total",
        "impact_run_cpu_seconds_total",
        "impact_run_gpu_seconds_total",
    )
    for family in families:
        kind = "counter" if family.endswith("_total") else "gauge"
        out.write(f"# TYPE {family.removesuffix('_total')} {kind}\n")
        source = node_series(start, end) if family in families[:2] else (s for r in runs for s in run_series(r, family))
        for name, labels, times, values in source:
            if name != family:
                continue
            text = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
            out.writelines(
                f"{name}{text} {value!r} {t}\n" for t, value in zip(times.tolist(), values.tolist(), strict=True)
            )
    out.write("# EOF\n")


class Store:
    """A store on a loopback port holding the backfilled data: its URL, its process id, how to stop it."""

    name: str
    url: str
    process: subprocess.Popen[bytes]

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        stop_process(self.process, 60)

    def _launch(self, command: list[str], log: Path, ready: str) -> None:
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: self._answers(ready, log), 300, f"{self.name} to be ready")

    def _answers(self, path: str, log: Path) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited: {log.read_text()[-2000:]}")
        try:
            return requests.get(f"{self.url}{path}", timeout=2).status_code == 200
        except requests.RequestException:
            return False


class VictoriaMetrics(Store):
    """Debian's single-node VictoriaMetrics, fed through ``/api/v1/import``."""

    name = "victoria-metrics"

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("victoria-metrics")
        if binary is None:
            raise RuntimeError("victoria-metrics not found on PATH; install it with: apt-get install victoria-metrics")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        command = [binary, f"-httpListenAddr=127.0.0.1:{port}", f"-storageDataPath={workdir / 'vm-data'}"]
        self._launch([*command, "-retentionPeriod=1y", "-loggerLevel=WARN"], workdir / "vm.log", "/health")

    def load(self, jsonl: Path, samples: int) -> float:
        """Import the file and wait until every sample is searchable; the seconds it took."""
        started = time.monotonic()
        with jsonl.open("rb") as body:
            requests.post(f"{self.url}/api/v1/import", data=body, timeout=3600).raise_for_status()
        requests.get(f"{self.url}/internal/force_flush", timeout=600)
        wait_for(lambda: self._count() == samples, 300, "VictoriaMetrics to hold every imported sample", 1.0)
        return time.monotonic() - started

    def _count(self) -> int:
        query = 'sum(count_over_time({__name__=~"impact_.+"}[400d]))'
        answer = requests.get(f"{self.url}/api/v1/query", params={"query": query, "nocache": "1"}, timeout=600)
        result = answer.json()["data"]["result"]
        return int(float(result[0]["value"][1])) if result else 0


class Prometheus(Store):
    """Prometheus serving blocks made by ``promtool tsdb create-blocks-from openmetrics``."""

    name = "prometheus"

    def __init__(self, workdir: Path) -> None:
        served = BackfilledPrometheus(workdir, workdir / "prom-data")
        self.url, self.process = served.url, served.process

    @staticmethod
    def backfill(openmetrics: Path, workdir: Path) -> Timed:
        """Blocks of up to 31 days, so that promtool reads the text once or twice rather than once per 2 hours."""
        promtool = shutil.which("promtool")
        if promtool is None:
            raise RuntimeError("promtool not found on PATH; install it with: apt-get install prometheus")
        command = [promtool, "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=744h"]
        return run_timed([*command, str(openmetrics), str(workdir / "prom-data")], timeout=7200)


@dataclass(frozen=True)
class Measured:
    """One report: the reporter's own figures, the store's CPU-seconds over it, and the largest difference of its
    figures from the direct computation (with where it is)."""

    reporter: Timed
    store_cpu_seconds: float
    difference: tuple[float, str]


def measure_report(
    store: Store,
    command: list[str],
    read: Callable[[Timed], list[dict[str, Any]]],
    expected: dict[str, dict[str, float]],
) -> Measured:
    before = store.cpu_seconds()
    timed = run_timed([*REPORTER, *command], timeout=3600)
    store_cpu = store.cpu_seconds() - before
    return Measured(timed, store_cpu, largest_difference(expected, read(timed)))


def largest_difference(expected: dict[str, dict[str, float]], reported: Sequence[dict[str, Any]]) -> tuple[float, str]:
    """The largest relative difference of any reported figure from the expected one; ValueError when the runs
    reported are not the runs expected."""
    by_id = {run["run_id"]: reported_figures(run) for run in reported}
    if set(by_id) != set(expected):
        missing, extra = sorted(set(expected) - set(by_id)), sorted(set(by_id) - set(expected))
        raise ValueError(f"{len(missing)} runs missing ({missing[:3]}...), {len(extra)} extra ({extra[:3]}...)")
    return worst_difference((run_id, figures, by_id[run_id]) for run_id, figures in expected.items())


def window_flags(start: int, end: int) -> list[str]:
    return [f"--start={start - 60}", f"--end={end + 60}", "--carbon-intensity=300"]


def runs_command(url: str, start: int, end: int, experiment: str | None) -> list[str]:
    match = ["--match", f'{{experiment="{experiment}"}}'] if experiment else []
    return ["runs", "--format=json", f"--prometheus={url}", *window_flags(start, end), *match]


def report_store(store: Store, lab: Lab) -> list[str]:
    """Time both reports on 30 runs and on all of them from one store; the lines to print."""
    runs, start, end, workdir, expected = lab.runs, lab.start, lab.end, lab.workdir, lab.expected
    lines = []
    for label, experiment in ((f"{BASELINE_RUNS} runs", BASELINE_EXPERIMENT), (f"{len(runs):,} runs", None)):
        chosen = {k: v for k, v in expected.items() if experiment is None or k in _of(runs, experiment)}
        measured = measure_report(
            store, runs_command(store.url, start, end, experiment), lambda t: json.loads(t.stdout)["runs"], chosen
        )
        lines.append(_line(store.name, f"runs --format=json, {label}", measured))
        out = workdir / f"appendix-{store.name}-{len(chosen)}"
        scope = f'experiment="{experiment}",' if experiment else ""
        measured = measure_report(
            store,
            appendix_command(store.url, window_flags(start, end), scope, out),
            lambda _, path=out / "appendix.json": appendix_runs(path),
            chosen,
        )
        shutil.rmtree(out, ignore_errors=True)
        lines.append(_line(store.name, f"appendix --no-pdf, {label}", measured))
        print(lines[-2], lines[-1], sep="\n", flush=True)
    return lines


def _of(runs: Sequence[LabRun], experiment: str) -> set[str]:
    return {run.run_id for run in runs if run.experiment == experiment}


def _line(store: str, what: str, measured: Measured) -> str:
    timed = measured.reporter
    meets = timed.seconds < TARGET_SECONDS and timed.peak_pss_bytes < TARGET_BYTES
    return (
        f"{store:<16} {what:<34} {timed.seconds:6.1f} s wall {timed.cpu_seconds:6.1f} CPU-s "
        f"{timed.peak_pss_bytes / 2**20:6.0f} MiB peak PSS | store {measured.store_cpu_seconds:6.1f} CPU-s | "
        f"max rel. diff {measured.difference[0]:.1e} | {'meets' if meets else 'MISSES'} < 60 s wall, 2 GiB"
    )


MANIFEST = "manifest.json"
"""What ``--keep DIR`` holds: the window's end, the run count and days it was generated for, and which stores hold
it (with VictoriaMetrics' sample count), so that ``--reuse`` reports from the same data without generating it."""


def read_manifest(workdir: Path, runs_count: int, days: float) -> dict[str, Any]:
    """The manifest of data generated for these runs and days in ``workdir``; {} when there is none that fits."""
    try:
        manifest = json.loads((workdir / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if (manifest.get("runs"), manifest.get("days")) == (runs_count, days) else {}


def write_manifest(workdir: Path, manifest: dict[str, Any]) -> None:
    (workdir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def measure(runs_count: int, days: float, stores: Sequence[str], workdir: Path, reuse: bool = False) -> list[str]:
    """Generate and import the data (or, with ``reuse``, take what ``workdir`` holds for the same runs and days),
    then time the reports from each store."""
    manifest = read_manifest(workdir, runs_count, days) if reuse else {}
    if not manifest:
        manifest = {"runs": runs_count, "days": days, "end": int(time.time()) - END_BEFORE_NOW_SECONDS}
        for stale in ("vm-data", "prom-data"):
            shutil.rmtree(workdir / stale, ignore_errors=True)
    end = manifest["end"]
    start = end - round(days * 86400)
    runs = plan(runs_count, days, end)
    started = time.monotonic()
    expected = {run.run_id: run.expected() for run in runs}
    lines = [f"expected figures of {len(runs):,} runs computed directly in {time.monotonic() - started:.0f} s"]
    print(lines[-1], flush=True)
    lab = Lab(runs, start, end, workdir, expected)
    if "victoria-metrics" in stores:
        lines += victoria_metrics_lines(lab, manifest)
    if "prometheus" in stores:
        lines += prometheus_lines(lab, manifest)
    return lines


@dataclass(frozen=True)
class Lab:
    """The generated month: its runs, its window (unix seconds), where its data is, the runs' expected figures."""

    runs: Sequence[LabRun]
    start: int
    end: int
    workdir: Path
    expected: dict[str, dict[str, float]]


def victoria_metrics_lines(lab: Lab, manifest: dict[str, Any]) -> list[str]:
    """Import into VictoriaMetrics unless the manifest says it holds the data already; time its reports."""
    lines = []
    jsonl = lab.workdir / "import.jsonl"
    if "victoria-metrics" not in manifest:
        started = time.monotonic()
        with jsonl.open("w", buffering=1 << 20) as out:
            samples = write_jsonl(out, all_series(lab.runs, lab.start, lab.end))
        lines.append(
            f"generated {samples:,} samples ({jsonl.stat().st_size / 2**20:.0f} MiB of JSON lines) in "
            f"{time.monotonic() - started:.0f} s"
        )
        print(lines[-1], flush=True)
    store = VictoriaMetrics(lab.workdir)
    try:
        if "victoria-metrics" not in manifest:
            lines.append(f"victoria-metrics import until searchable: {store.load(jsonl, samples):.0f} s")
            jsonl.unlink()
            print(lines[-1], flush=True)
            write_manifest(lab.workdir, {**manifest, "victoria-metrics": {"samples": samples}})
            manifest["victoria-metrics"] = {"samples": samples}
        else:
            lines.append(f"victoria-metrics: reusing the {manifest['victoria-metrics']['samples']:,} samples it holds")
        lines += report_store(store, lab)
    finally:
        store.stop()
    return lines


def prometheus_lines(lab: Lab, manifest: dict[str, Any]) -> list[str]:
    """Backfill Prometheus unless the manifest says its blocks are there already; time its reports."""
    lines = []
    if "prometheus" not in manifest:
        text = lab.workdir / "backfill.om"
        started = time.monotonic()
        with text.open("w", buffering=1 << 20) as out:
            write_openmetrics(out, lab.runs, lab.start, lab.end)
        lines.append(
            f"generated {text.stat().st_size / 2**20:.0f} MiB of OpenMetrics in {time.monotonic() - started:.0f} s"
        )
        print(lines[-1], flush=True)
        backfilled = Prometheus.backfill(text, lab.workdir)
        text.unlink()
        lines.append(
            f"promtool: {backfilled.seconds:.0f} s wall, {backfilled.cpu_seconds:.0f} CPU-s, "
            f"{backfilled.peak_rss_bytes / 2**20:.0f} MiB peak RSS"
        )
        print(lines[-1], flush=True)
        manifest["prometheus"] = True
        write_manifest(lab.workdir, manifest)
    else:
        lines.append("prometheus: reusing the blocks it holds")
    store = Prometheus(lab.workdir)
    try:
        lines += report_store(store, lab)
    finally:
        store.stop()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reporter_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000, help="runs in the window (default: %(default)s)")
    parser.add_argument("--days", type=float, default=30.0, help="length of the window (default: %(default)s)")
    parser.add_argument(
        "--store",
        choices=["both", "victoria-metrics", "prometheus"],
        default="both",
        help="which store to backfill and report from (default: %(default)s)",
    )
    parser.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep it (default: a temporary one)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --keep: report from the stores' data already in DIR when it was generated for the same --runs "
        "and --days (generation and import take most of the time)",
    )
    args = parser.parse_args(argv)
    if args.reuse and not args.keep:
        parser.error("--reuse needs --keep DIR: the directory whose data to report from")
    if args.runs < BASELINE_RUNS:
        parser.error(f"--runs must be at least {BASELINE_RUNS}: the first {BASELINE_RUNS} are the baseline")
    if args.days * 86400 < 2 * (LONGEST_RUN + RETAIN_FINISHED_SECONDS):
        parser.error("--days is too short for runs of up to 4 hours")
    stores = ("victoria-metrics", "prometheus") if args.store == "both" else (args.store,)
    print(f"# reporter at a lab's scale; {machine_description()}", flush=True)
    print(f"{args.runs:,} runs over {args.days:g} days on {len(NODES)} nodes at {SCRAPE_SECONDS} s scrapes", flush=True)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        lines = measure(args.runs, args.days, stores, args.keep, args.reuse)
    else:
        with tempfile.TemporaryDirectory(prefix="iet-reporter-scale-") as workdir:
            lines = measure(args.runs, args.days, stores, Path(workdir))
    print("\n".join(["", "summary:", *lines]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
