"""The run API and the sampler under load: many concurrent clients, many runs, one real exporter process.

Runs are registered on real ``sleep`` processes, one run at a time on each (a process counts in one run at a
time), so the exporter reads the real /proc for every group; only RAPL is a fake tree. Figures are printed
(``pytest -s``) as well as checked against generous bounds: speed goals belong in benchmarks/, these tests check
that nothing breaks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from experiment_impact_tracker.client import ExporterClient
from tests.fakes.powercap import FakePowercap
from tests.servers import ExporterProcess, PrometheusServer, wait_for

pytestmark = pytest.mark.integration

CLIENTS = 200
RUNS = 5000
ACTIVE_RUNS = 1000
SAMPLE_INTERVAL = 1.0
MIB = 2**20


class Sleepers:
    """ACTIVE_RUNS long-lived ``sleep`` processes that carry the runs, children of one shell (quicker to start than
    one at a time)."""

    def __init__(self) -> None:
        script = f"for i in $(seq {ACTIVE_RUNS}); do sleep 600 & done; echo started; wait"
        self.shell = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE)
        assert self.shell.stdout is not None and self.shell.stdout.readline() == b"started\n"
        self.pids = [child.pid for child in psutil.Process(self.shell.pid).children()]
        assert len(self.pids) == ACTIVE_RUNS

    def kill(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.shell.wait()


@pytest.fixture
def sleepers() -> Iterator[Sleepers]:
    processes = Sleepers()
    yield processes
    processes.kill()


@pytest.fixture
def loaded_exporter(tmp_path: Path, start_exporter: Callable[..., ExporterProcess]) -> Callable[[str], ExporterProcess]:
    """An exporter sampling every SAMPLE_INTERVAL seconds that keeps finished runs for ``retain``."""
    powercap = FakePowercap(tmp_path / "sys")
    powercap.add_zone("intel-rapl:0", "package-0", energy_uj=1_000_000)

    def start(retain: str) -> ExporterProcess:
        return start_exporter(
            f"--path.sysfs={powercap.sysfs}", f"--sample-interval={SAMPLE_INTERVAL}", f"--runs.retain-finished={retain}"
        )

    return start


def in_parallel(clients: int, jobs: list[Callable[[ExporterClient], Any]], exporter: ExporterProcess) -> list[Any]:
    """Run ``jobs`` on ``clients`` threads, each with its own client of the exporter's socket; results in order.
    A job's exception is returned as its result, so that every failure is seen, not just the first."""

    def job_on_own_client(job: Callable[[ExporterClient], Any]) -> Any:
        try:
            return job(ExporterClient(f"unix://{exporter.socket_path}", timeout=120))
        except Exception as failure:  # noqa: BLE001 (every failure is reported by the test)
            return failure

    with ThreadPoolExecutor(max_workers=clients) as pool:
        return list(pool.map(job_on_own_client, jobs))


def failures(results: list[Any]) -> list[str]:
    return [repr(result) for result in results if isinstance(result, Exception)]


def stored_runs(exporter: ExporterProcess, experiment: str) -> dict[str, float | None]:
    """run_id -> end_time of the experiment's runs in the exporter's SQLite store, read through a read-only handle."""
    state_dir = next(arg for arg in exporter.args if arg.startswith("--state-dir=")).split("=", 1)[1]
    with sqlite3.connect(f"file:{state_dir}/runs.sqlite?mode=ro", uri=True) as db:
        rows = db.execute("SELECT run_id, end_time FROM runs WHERE experiment = ?", (experiment,)).fetchall()
    return dict(rows)


def exporter_figures(exporter: ExporterProcess) -> dict[str, Any]:
    """One scrape of /metrics: how long it took, its size, the sampler's figures and the runs it shows."""
    started = time.perf_counter()
    text = requests.get(f"{exporter.url}/metrics", timeout=60).text
    seconds = time.perf_counter() - started
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("impact_exporter_")
    }
    return {
        "scrape_seconds": seconds,
        "bytes": len(text),
        "samples_total": samples["impact_exporter_samples_total"],
        "sample_duration": samples["impact_exporter_sample_duration_seconds"],
        "sample_age": time.time() - samples["impact_exporter_last_sample_timestamp_seconds"],
        "run_series": text.count("\nimpact_run_info{"),
    }


def test_200_clients_start_and_stop_5000_runs_and_none_is_lost(
    prometheus: PrometheusServer,
    loaded_exporter: Callable[[str], ExporterProcess],
    sleepers: Sleepers,
    record_property: Callable[[str, object], None],
) -> None:
    exporter = loaded_exporter("5s")  # each finished run stays in /metrics for five scrapes of Prometheus
    prometheus.add_target(exporter.address, {"test": "load"})
    experiment = f"load-{uuid.uuid4().hex[:8]}"

    def client_work(index: int) -> Callable[[ExporterClient], list[tuple[dict, dict]]]:
        def work(client: ExporterClient) -> list[tuple[dict, dict]]:
            pairs = []
            for seq in range(RUNS // CLIENTS):
                labels = {"client": str(index), "seq": str(seq)}
                run = client.start_run(experiment, labels=labels, pid=sleepers.pids[index])
                pairs.append((run, client.stop_run(run["run_id"])))
            return pairs

        return work

    try:
        process = psutil.Process(exporter.process.pid)
        cpu_before, started = sum(process.cpu_times()[:2]), time.perf_counter()
        results = in_parallel(CLIENTS, [client_work(index) for index in range(CLIENTS)], exporter)
        seconds, cpu = time.perf_counter() - started, sum(process.cpu_times()[:2]) - cpu_before
        assert failures(results) == []
        pairs = [pair for result in results for pair in result]
        figures = {
            "seconds": round(seconds, 1),
            "requests_per_second": round(2 * len(pairs) / seconds),
            "exporter_cpu_seconds": round(cpu, 1),
            "samples": exporter_figures(exporter)["samples_total"],
            "rss_mib": round(process.memory_info().rss / MIB),
        }
        for name, figure in figures.items():
            record_property(name, figure)
        print(f"\n{CLIENTS} clients started and stopped {len(pairs)} runs: {figures}")
        for index, result in enumerate(results):
            for seq, (run, stopped) in enumerate(result):  # each answer is about the caller's own run
                assert run["labels"] == stopped["labels"] == {"client": str(index), "seq": str(seq)}
                assert (stopped["run_id"], stopped["status"]) == (run["run_id"], "finished")
                assert stopped["end_time"] >= run["start_time"]
        run_ids = {run["run_id"] for run, _ in pairs}
        assert len(run_ids) == RUNS

        stored = stored_runs(exporter, experiment)
        assert set(stored) == run_ids
        assert all(end_time is not None for end_time in stored.values())

        seen = f'last_over_time(impact_run_info{{instance="{exporter.address}",experiment="{experiment}"}}[10m])'
        wait_for(
            lambda: len(prometheus.query(f"group by (run_id) ({seen})")) >= RUNS,
            30,
            "Prometheus to have scraped every run",
        )
        assert {series["metric"]["run_id"] for series in prometheus.query(f"group by (run_id) ({seen})")} == run_ids
        up = float(prometheus.query(f'avg_over_time(up{{instance="{exporter.address}"}}[10m])')[0]["value"][1])
        record_property("scrapes_succeeded", round(up, 2))
        print(f"Prometheus saw all {RUNS} runs; {up:.0%} of its scrapes (every 1 s, 1 s timeout) succeeded")
        assert exporter.process.poll() is None
    finally:
        prometheus.remove_target(exporter.address)


def test_1000_active_runs_keep_the_sampler_on_time_and_memory_bounded_and_then_leave_metrics(
    loaded_exporter: Callable[[str], ExporterProcess],
    sleepers: Sleepers,
    record_property: Callable[[str, object], None],
) -> None:
    exporter = loaded_exporter("3s")
    process = psutil.Process(exporter.process.pid)
    rss_idle = process.memory_info().rss
    experiment = f"active-{uuid.uuid4().hex[:8]}"

    def start(index: int) -> Callable[[ExporterClient], str]:
        return lambda client: client.start_run(experiment, pid=sleepers.pids[index])["run_id"]

    run_ids = in_parallel(50, [start(index) for index in range(ACTIVE_RUNS)], exporter)
    assert failures(run_ids) == []
    first = exporter_figures(exporter)
    cpu_before, started = sum(process.cpu_times()[:2]), time.perf_counter()
    time.sleep(5 * SAMPLE_INTERVAL)
    cpu, seconds = sum(process.cpu_times()[:2]) - cpu_before, time.perf_counter() - started
    later = exporter_figures(exporter)
    rss_loaded = process.memory_info().rss
    samples = later["samples_total"] - first["samples_total"]
    print(
        f"\n{ACTIVE_RUNS} active runs: {samples:.0f} samples in {seconds:.1f} s using {cpu:.2f} CPU-s, the last "
        f"took {later['sample_duration'] * 1000:.0f} ms; a scrape took {later['scrape_seconds'] * 1000:.0f} ms for "
        f"{later['bytes'] / MIB:.1f} MiB; the last sample was {later['sample_age']:.1f} s old; "
        f"RSS {rss_idle / MIB:.0f} MiB idle, {rss_loaded / MIB:.0f} MiB loaded"
    )
    figures = {
        "samples_in_5_s": samples,
        "cpu_seconds_per_sample": round(cpu / max(samples, 1), 3),
        "scrape_ms": round(later["scrape_seconds"] * 1000),
        "metrics_mib": round(later["bytes"] / MIB, 2),
        "rss_idle_mib": round(rss_idle / MIB),
        "rss_loaded_mib": round(rss_loaded / MIB),
    }
    for name, figure in figures.items():
        record_property(name, figure)
    assert later["run_series"] == ACTIVE_RUNS
    # On time: a sample needs well under its interval of CPU, and the sampler did not stall. Its wall-clock pace
    # is printed, not checked: on a shared 2-core machine its thread may wait seconds for a core.
    assert cpu / max(samples, 1) < 0.5 * SAMPLE_INTERVAL
    assert samples >= 2
    assert later["scrape_seconds"] < 5.0
    assert rss_loaded < 300 * MIB

    sleepers.kill()  # every run ends by itself at the next sample (stopping is test_200_clients...'s)
    ended = time.monotonic()
    gone = wait_for(lambda: (f := exporter_figures(exporter))["run_series"] == 0 and f, 30, "runs to leave /metrics")
    left_after, rss_after = time.monotonic() - ended, process.memory_info().rss
    record_property("left_metrics_after_seconds", round(left_after, 1))
    record_property("rss_after_retention_mib", round(rss_after / MIB))
    print(
        f"runs left /metrics {left_after:.1f} s after their processes ended (retention 3 s); "
        f"/metrics {gone['bytes'] / 1024:.0f} KiB, RSS {rss_after / MIB:.0f} MiB"
    )
    assert left_after > 3.0 - SAMPLE_INTERVAL  # kept for the retention time, counted from the last sample seen
    assert rss_after < 300 * MIB
    stored = stored_runs(exporter, experiment)
    assert set(stored) == set(run_ids)
    assert all(end_time is not None for end_time in stored.values())
