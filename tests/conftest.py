"""Shared fixtures: one Prometheus for the whole session, exporter processes per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.monitored import MonitoredNode, start_runs, wait_scraped
from tests.servers import REPO_ROOT, ExporterProcess, PrometheusServer, VictoriaMetricsServer

NODE_EXPORTER_POWERCAP = REPO_ROOT / "tests" / "fixtures" / "powercap-node_exporter"


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``$XDG_CACHE_HOME`` for the session and the processes it starts: py-cpuinfo's per-boot cache
    (experiment_impact_tracker/cpu/common.py) is written there, not in the user's ~/.cache, so tests read no file
    outside the checkout (a stale cache could hide a bug) and leave none behind."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(cache))
        yield cache


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests of the ``monitored`` node are ``serial``: its fake hardware is driven by a thread of the test process,
    which parallel workers busy on the same cores could starve (a step in which nothing moves reads as 0 W)."""
    for item in items:
        if "monitored" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.serial)


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A real Prometheus on a loopback port, shared by every integration test."""
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def victoria_metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetricsServer]:
    """A real VictoriaMetrics on a loopback port, started once for the tests that compare stores."""
    server = VictoriaMetricsServer(tmp_path_factory.mktemp("victoria-metrics"))
    yield server
    server.stop()


@dataclass(frozen=True)
class Monitored:
    """A Prometheus that scrapes a running monitored node with one finished and one active run."""

    prometheus: PrometheusServer
    node: MonitoredNode
    runs: dict[str, Any]


@pytest.fixture(scope="session")
def monitored(prometheus: PrometheusServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitored]:
    """The session Prometheus scraping a fake node with RAPL, a GPU and runs: what dashboards and rules read."""
    node = MonitoredNode(tmp_path_factory.mktemp("monitored"))
    prometheus.add_target(node.address)
    runs = start_runs(node)
    wait_scraped(prometheus.query, [run["run_id"] for run in runs.values()])
    yield Monitored(prometheus, node, runs)
    prometheus.remove_target(node.address)
    node.stop()


@pytest.fixture
def start_exporter(tmp_path: Path) -> Iterator[Callable[..., ExporterProcess]]:
    """Start ``impact-exporter`` processes with the given flags; all are stopped after the test."""
    started: list[ExporterProcess] = []

    def start(*args: str) -> ExporterProcess:
        exporter = ExporterProcess(tmp_path, args)
        started.append(exporter)
        return exporter

    yield start
    for exporter in started:
        exporter.stop()


@pytest.fixture
def node_exporter_powercap() -> Path:
    """node_exporter's powercap fixture, vendored in tests/fixtures (a sysfs root); read-only, copy it to change it."""
    return NODE_EXPORTER_POWERCAP / "sys"
