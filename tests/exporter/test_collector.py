"""The collector's whole /metrics output against golden files: RAPL on node_exporter's powercap fixture, and GPUs
through a fake NVML with estimated CPU energy."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from impact_exporter.collector import RUN_FAMILIES, ImpactCollector
from impact_exporter.exposition import encode
from impact_exporter.host import HostInfo
from impact_exporter.ledger import Ledger
from impact_exporter.run import ProcessRef, Run, StartRequest
from impact_exporter.runs import RunRegistry
from impact_exporter.sampler import Sampler, Snapshot, SourceStatus
from impact_exporter.sources.estimate import EstimateSource
from impact_exporter.sources.nvml import NvmlSource
from impact_exporter.sources.procfs import MEMORY_PSS
from impact_exporter.sources.rapl import RaplSource
from impact_exporter.store import RunStore
from tests.fakes.nvml import GIB, FakeGpu, FakeNvml
from tests.fakes.procfs import FakeProc
from tests.servers import require_binary

GOLDEN = Path(__file__).parent / "testdata" / "node_exporter_powercap.prom"
HOST = HostInfo(
    hostname="node1",
    cpu_model="Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz",
    cpu_vendor="GenuineIntel",
    cpu_count=80,
    kernel="6.1.0-18-amd64",
)
RUNS = [
    Run(
        run_id="r1",
        experiment="mobilenet",
        set="conv32",
        labels={"seed": "0", "note": 'say "hi"\\n'},
        uid=1000,
        user="alice",
        processes=(ProcessRef(4242, 1),),
        start_time=1700000000.0,
        energy_joules={"cpu": 812.5, "dram": 40.25},
        cpu_seconds=120.5,
        work_units={"samples": 4096, "steps": 64},
    ),
    Run(
        run_id="r2",
        experiment="mobilenet",
        set="conv64",
        labels={},
        uid=1000,
        user="alice",
        processes=(ProcessRef(4343, 1),),
        start_time=1700000100.0,
        end_time=1700000200.0,
        energy_joules={"cpu": 100.0, "dram": 5.0},
        cpu_seconds=10.0,
    ),
]


def snapshot_of(sysfs: Path) -> Snapshot:
    domains = RaplSource(sysfs).sample().domains
    return Snapshot(
        timestamp=1700000300.0,
        samples_total=42,
        sample_duration_seconds=0.0025,
        sources={"procfs": SourceStatus(True, 0), "rapl": SourceStatus(True, 2)},
        energy_domains=domains,
        unattributed_joules={"package": 1000.0, "dram": 50.0, "core": 7.0},
    )


def render(sysfs: Path) -> str:
    snapshot = snapshot_of(sysfs)
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


def test_metrics_path_writes_the_golden_file(node_exporter_powercap: Path) -> None:
    registry = CollectorRegistry()
    registry.register(ImpactCollector(lambda: snapshot_of(node_exporter_powercap), HOST, "1.2.3", runs=lambda: RUNS))
    assert encode(registry, openmetrics=False).decode() == GOLDEN.read_text()


def test_golden_file_passes_promtool() -> None:
    promtool = require_binary("promtool", "apt-get install prometheus")
    lint = subprocess.run([promtool, "check", "metrics"], input=GOLDEN.read_text(), capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


GPU_GOLDEN = Path(__file__).parent / "testdata" / "gpu.prom"
TRAIN, EVAL, STRANGER = 4242, 4343, 5000


def render_gpu(tmp_path: Path) -> CollectorRegistry:
    """Two runs on two fake GPUs (one with an energy counter, one whose power is integrated) and estimated CPU
    energy, through the sampler and the run registry, on fixed clocks: every figure is deterministic."""
    proc = FakeProc(tmp_path / "proc")
    for pid, start in ((TRAIN, 100), (EVAL, 200), (STRANGER, 300)):
        proc.spawn(pid, 1, start=start, uid=0, comm=f"p{pid}", pss_kib=1024 * pid // 100)
    fast = FakeGpu(
        "GPU-0000aaaa-0000-0000-0000-000000000000",
        power_watts=250.0,
        memory_used_bytes=9 * GIB,
        utilization_percent=80,
        processes={TRAIN: 8 * GIB, STRANGER: 1 * GIB},
        slices=[{TRAIN: 60, STRANGER: 20}],
    )
    old = FakeGpu(
        "GPU-1111bbbb-0000-0000-0000-000000000000",
        name="Tesla P100",
        power_watts=150.0,
        energy_counter=False,
        memory_used_bytes=4 * GIB,
        utilization_percent=50,
        processes={EVAL: 4 * GIB},
        slices=[{EVAL: 50}],
    )
    nvml = FakeNvml([fast, old])
    procfs = proc.procfs(MEMORY_PSS)  # the golden file splits DRAM by the processes' PSS (pss_kib above)
    clock = nvml.clock
    ledger = Ledger()
    registry = RunRegistry(
        procfs, RunStore(tmp_path / "runs.sqlite"), clock=lambda: 1700000000.0 + clock(), ledger=ledger
    )
    registry.start(
        StartRequest(experiment="mobilenet", set="conv32", labels={"seed": "0"}, pid=TRAIN, run_id="train"),
        caller_uid=0,
        caller_pid=None,
    )
    registry.start(
        StartRequest(experiment="mobilenet", set="eval", pid=EVAL, run_id="eval"), caller_uid=0, caller_pid=None
    )
    sampler = Sampler(
        procfs,
        energy=EstimateSource(procfs, tdp_watts=200.0, dram_watts_per_gib=0.375, clock=clock),
        ledger=ledger,
        clock=lambda: 1700000000.0 + clock(),
        on_sample=lambda snapshot: registry.settle(snapshot.timestamp),
        gpu=NvmlSource(nvml=nvml, clock=clock),
        gpu_idle_watts=50.0,
    )
    sampler.sample_once()
    for _ in range(2):
        proc.advance(busy_ticks=150, idle_ticks=50, running={TRAIN: 100, EVAL: 25, STRANGER: 10})
        nvml.advance(2.0)
        sampler.sample_once()
    snapshot = replace(sampler.snapshot, sample_duration_seconds=0.0025)  # the one figure measured in real time
    collector = CollectorRegistry()
    collector.register(ImpactCollector(lambda: snapshot, HOST, "1.2.3", runs=registry.runs))
    return collector


def test_gpu_metrics_match_the_golden_file(tmp_path: Path) -> None:
    collector = render_gpu(tmp_path)
    text = generate_latest(collector).decode()
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GPU_GOLDEN.write_text(text)
    assert text == GPU_GOLDEN.read_text()
    assert encode(collector, openmetrics=False).decode() == text  # the /metrics path writes the same bytes
    assert 'impact_energy_source_info{component="gpu",method="nvml-power"} 1.0' in text


def test_gpu_golden_file_passes_promtool() -> None:
    promtool = require_binary("promtool", "apt-get install prometheus")
    lint = subprocess.run([promtool, "check", "metrics"], input=GPU_GOLDEN.read_text(), capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_each_per_sample_familys_values_are_its_series_values_in_order() -> None:
    """The scrape writes per-sample values from ``values`` and their labels from ``series``: they must agree."""
    runs = [
        Run("cpu", "e", "", {}, 0, "root", (ProcessRef(1, 1),), 1.0, energy_joules={"cpu": 2.5, "dram": 0.5}),
        Run("gpu", "e", "", {}, 0, "root", (), 2.0, 9.0, {"cpu": 1.0, "gpu": 7.0}, cpu_seconds=3.0, gpu_seconds=4.0),
        Run("none", "e", "", {}, 0, "root", (), 3.0, energy_joules={}, cpu_seconds=float("nan")),
    ]
    per_sample = [family for family in RUN_FAMILIES if family.per_sample]
    assert [family.name for family in RUN_FAMILIES if family.values is not None] == [f.name for f in per_sample]
    for family in per_sample:
        expected = [value for run in runs for _, value in family.series(run)]
        assert repr(family.values(runs)) == repr(expected), family.name
