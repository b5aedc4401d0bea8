"""Shared fixtures: one Prometheus for the whole session, exporter processes per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.servers import IN_CI, REPO_ROOT, ExporterProcess, PrometheusServer

NODE_EXPORTER_POWERCAP = REPO_ROOT.parent / "shared" / "fixtures" / "powercap-node_exporter"


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A real Prometheus on a loopback port, shared by every integration test."""
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"))
    yield server
    server.stop()


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
    """node_exporter's powercap fixture from ../shared (a sysfs root); read-only, copy it to change it."""
    sysfs = NODE_EXPORTER_POWERCAP / "sys"
    if not sysfs.is_dir():
        message = f"shared fixture missing: {sysfs}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return sysfs
