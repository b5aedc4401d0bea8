"""impact-report against a fake Prometheus API that behaves as Thanos, Mimir and VictoriaMetrics do where a real
Prometheus here cannot: answer warnings and partial responses, a per-day series index, a query-length limit and
a required tenant header.

Each run is a node's series written by the test: 10 W on the CPU for 60 s, scraped every 5 s, so its energy is
600 J exactly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from impact_reporter.prometheus import PrometheusClient
from tests.reporter.fake_prometheus import FakePrometheus, FakeSeries
from tests.servers import REPO_ROOT

DAY = 1_795_996_800  # 2026-11-30T00:00:00Z
WATTS, SECONDS, SCRAPE = 10.0, 60, 5
JOULES = WATTS * SECONDS


def run_series(run_id: str, start: float, *, instance: str = "node1:9100", user: str = "alice") -> list[FakeSeries]:
    """The series an exporter exports for one run, as scraped every SCRAPE s until 30 s after it ended."""
    end = start + SECONDS
    times = [start + k * SCRAPE for k in range((SECONDS + 30) // SCRAPE + 1)]
    identity = {"run_id": run_id, "user": user, "instance": instance, "job": "impact"}

    def series(name: str, value: Any, **labels: str) -> FakeSeries:
        return FakeSeries({"__name__": name, **identity, **labels}, [(t, float(value(t))) for t in times])

    return [
        series("impact_run_info", lambda t: 1, experiment="exp", set="a"),
        series("impact_run_start_time_seconds", lambda t: start),
        series("impact_run_end_time_seconds", lambda t: end),
        series("impact_run_active", lambda t: t <= end),
        series("impact_run_energy_joules_total", lambda t: WATTS * (min(t, end) - start), component="cpu"),
        series("impact_run_cpu_seconds_total", lambda t: min(t, end) - start),
    ]


def report(server: FakePrometheus, *args: str, start: float = DAY, end: float = DAY + 86399) -> tuple[int, Any, str]:
    """Run ``impact-report runs --format=json`` in a child process: exit code, parsed stdout, stderr."""
    command = [sys.executable, "-m", "impact_reporter", "runs", "--format=json", f"--prometheus={server.url}"]
    command += [f"--start={start}", f"--end={end}", "--carbon-intensity=100", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    return result.returncode, json.loads(result.stdout) if result.returncode == 0 else None, result.stderr


@pytest.fixture
def two_runs() -> Iterator[list[FakeSeries]]:
    """Run "early" at 01:00 and run "late" at 05:00 of the same day."""
    yield run_series("early", DAY + 3600) + run_series("late", DAY + 5 * 3600)


def joules_of(listed: Any) -> dict[str, float]:
    return {run["run_id"]: run["total_joules"] for run in listed["runs"]}


def test_the_fake_api_serves_a_whole_report(two_runs: list[FakeSeries]) -> None:
    with FakePrometheus(two_runs) as server:
        code, listed, stderr = report(server)
    assert code == 0, stderr
    assert joules_of(listed) == {"early": JOULES, "late": JOULES}
    assert [run["duration_seconds"] for run in listed["runs"]] == [SECONDS, SECONDS]


def test_discovery_keeps_only_runs_with_samples_inside_the_window(two_runs: list[FakeSeries]) -> None:
    """A /api/v1/series that answers for the whole day names run "early" too; the report of 04:00-06:00 has
    only run "late", and exits 0."""
    with FakePrometheus(two_runs, series_whole_day=True) as server:
        named = PrometheusClient(server.url).series(["impact_run_info"], DAY + 4 * 3600, DAY + 6 * 3600)
        code, listed, stderr = report(server, start=DAY + 4 * 3600, end=DAY + 6 * 3600)
    assert sorted(labels["run_id"] for labels in named) == ["early", "late"]
    assert code == 0, stderr
    assert joules_of(listed) == {"late": JOULES}


def test_a_window_with_no_run_inside_says_so(two_runs: list[FakeSeries]) -> None:
    with FakePrometheus(two_runs, series_whole_day=True) as server:
        code, _, stderr = report(server, start=DAY + 7 * 3600, end=DAY + 8 * 3600)
    assert code == 1
    assert "no run matches any run between" in stderr
