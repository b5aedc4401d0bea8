"""The collector's whole /metrics output on node_exporter's powercap fixture, against a golden file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from exporter.collector import ImpactCollector
from exporter.host import HostInfo
from exporter.runs import ProcessRef, Run
from exporter.sampler import Snapshot, SourceStatus
from exporter.sources.rapl import RaplSource
from tests.servers import require_binary

GOLDEN = Path(__file__).parent / "testdata" / "node_exporter_powercap.prom"
HOST = HostInfo(hostname="node1", cpu_model="Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", cpu_vendor="GenuineIntel",
                cpu_count=80, kernel="6.1.0-18-amd64")
RUNS = [
    Run(run_id="r1", experiment="mobilenet", set="conv32", labels={"seed": "0", "note": 'say "hi"\\n'}, uid=1000,
        user="alice", processes=(ProcessRef(4242, 1),), start_time=1700000000.0,
        energy_joules={"cpu": 812.5, "dram": 40.25}, cpu_seconds=120.5),
    Run(run_id="r2", experiment="mobilenet", set="conv64", labels={}, uid=1000, user="alice",
        processes=(ProcessRef(4343, 1),), start_time=1700000100.0, end_time=1700000200.0,
        energy_joules={"cpu": 100.0, "dram": 5.0}, cpu_seconds=10.0),
]


def render(sysfs: Path) -> str:
    zones = RaplSource(sysfs).sample().zones
    snapshot = Snapshot(
        timestamp=1700000300.0,
        samples_total=42,
        sample_duration_seconds=0.0025,
        sources={"procfs": SourceStatus(True, 0), "rapl": SourceStatus(True, 2)},
        energy_method="rapl",
        energy_zones=zones,
        unattributed_joules={"package": 1000.0, "dram": 50.0, "core": 7.0},
    )
    registry = CollectorRegistry()
    registry.register(ImpactCollector(lambda: snapshot, HOST, "1.2.3", runs=lambda: RUNS))
    return generate_latest(registry).decode()


def test_metrics_match_the_golden_file(node_exporter_powercap: Path) -> None:
    text = render(node_exporter_powercap)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()
    assert 'impact_rapl_package_joules_total{package="0"} 240422.366267' in text  # node_exporter's own figure
    assert 'impact_rapl_core_joules_total{package="0"} 118821.284256' in text


def test_golden_file_passes_promtool() -> None:
    promtool = require_binary("promtool", "apt-get install prometheus")
    lint = subprocess.run([promtool, "check", "metrics"], input=GOLDEN.read_text(), capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
