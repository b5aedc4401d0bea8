"""Per-run GPU energy end to end: a fake NVML injected where the exporter builds its NVML source, the real run
socket, a real Prometheus scraping the exporter, and the reporter reading it back.

The exporter runs in a thread of the test (``serve(settings, nvml=fake, stop=event)``) so the test can drive
the fake GPU; everything above NVML is the exporter as shipped.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from experiment_impact_tracker import ExporterClient
from impact_exporter.cli import parse_settings, serve
from tests.fakes.nvml import GIB, FakeGpu, FakeNvml
from tests.fakes.procfs import FakeProc
from tests.monitored import LockedNvml, healthy
from tests.servers import PrometheusServer, free_port, reported_run, short_socket_path, wait_for

pytestmark = pytest.mark.integration

RUN_PID, OTHER_PID = 4242, 5000
GPU_WATTS, IDLE_WATTS, STEP = 200.0, 50.0, 0.05


@dataclass
class InProcessExporter:
    address: str
    socket_path: Path
    nvml: FakeNvml
    lock: threading.Lock

    def drive(self, seconds: float) -> None:
        """Let the fake GPUs run for ``seconds`` of their clock, in small steps, as the sampler reads them."""
        for _ in range(round(seconds / STEP)):
            time.sleep(STEP)
            with self.lock:
                self.nvml.advance(STEP)

    def metric(self, name: str, **labels: str) -> float:
        text = requests.get(f"http://{self.address}/metrics", timeout=5).text
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        line = next(line for line in text.splitlines() if line.startswith(f"{name}{{{wanted}}}"))
        return float(line.rsplit(" ", 1)[1])


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[InProcessExporter]:
    proc = FakeProc(tmp_path / "proc")
    proc.spawn(RUN_PID, 1, start=100, uid=0, comm="train")
    proc.spawn(OTHER_PID, 1, start=200, uid=0, comm="other")
    nvml = FakeNvml(
        [
            FakeGpu(
                "GPU-0000aaaa-0000-0000-0000-000000000000",
                power_watts=GPU_WATTS,
                processes={RUN_PID: 8 * GIB, OTHER_PID: 2 * GIB},
                slices=[{RUN_PID: 75, OTHER_PID: 25}],
            )
        ],
        tick_seconds=STEP,
    )
    lock = threading.Lock()
    port, socket_path = free_port(), short_socket_path()
    settings = parse_settings(
        [
            f"--web.listen-address=127.0.0.1:{port}",
            f"--path.procfs={proc.root}",
            "--cpu.source=none",
            f"--api.socket={socket_path}",
            f"--state-dir={tmp_path / 'state'}",
            "--sample-interval=0.25",
            f"--gpu.idle-watts={IDLE_WATTS}",
        ]
    )
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(settings, LockedNvml(nvml, lock), stop), daemon=True)
    thread.start()
    address = f"127.0.0.1:{port}"
    wait_for(lambda: healthy(address), 20, "the in-process exporter")
    yield InProcessExporter(address, socket_path, nvml, lock)
    stop.set()
    thread.join(timeout=10)


def test_a_runs_gpu_energy_reaches_prometheus_and_the_report(
    exporter: InProcessExporter, prometheus: PrometheusServer
) -> None:
    prometheus.add_target(exporter.address)
    client = ExporterClient(f"unix://{exporter.socket_path}")
    run_id = f"gpu-{uuid.uuid4().hex[:8]}"
    gpu_before = exporter.metric("impact_gpu_energy_joules_total", gpu="0", uuid=exporter.nvml.gpus[0].uuid)
    started = time.monotonic()
    client.start_run("gpu-train", pid=RUN_PID, run_id=run_id)
    exporter.drive(2.0)
    final = client.stop_run(run_id)
    wall_seconds = time.monotonic() - started
    gpu_after = exporter.metric("impact_gpu_energy_joules_total", gpu="0", uuid=exporter.nvml.gpus[0].uuid)

    # The fake GPU drew 200 W for 2 s of its own clock; the exporter times intervals with the real clock, which
    # runs a little longer on a busy machine: the run's GPU time is its 75% SM share of that real span.
    measured = gpu_after - gpu_before
    assert measured == pytest.approx(GPU_WATTS * 2.0, rel=1e-6)
    seconds = final["gpu_seconds"] / 0.75
    assert 2.0 * 0.99 <= seconds <= wall_seconds
    # Idle power over that span is shared by the 2 processes; 75% of the rest is the run's.
    expected = 0.75 * (measured - IDLE_WATTS * seconds) + IDLE_WATTS * seconds / 2
    assert final["energy_joules"]["gpu"] == pytest.approx(expected, rel=0.01)
    assert exporter.metric(
        "impact_gpu_process_sm_utilization_ratio",
        gpu="0",
        uuid=exporter.nvml.gpus[0].uuid,
        pid=str(RUN_PID),
        comm="train",
    ) == pytest.approx(0.75)

    def scraped() -> bool:
        result = prometheus.query(f'impact_run_energy_joules_total{{run_id="{run_id}",component="gpu"}}')
        return bool(result) and float(result[0]["value"][1]) == pytest.approx(final["energy_joules"]["gpu"])

    wait_for(scraped, 15, "prometheus to scrape the run's final GPU energy")
    assert (
        prometheus.query(f'impact_energy_source_info{{instance="{exporter.address}",component="gpu"}}')[0]["metric"][
            "method"
        ]
        == "nvml-counter"
    )
    figures = reported_run(prometheus, run_id)
    assert figures["energy_joules"]["gpu"] == pytest.approx(final["energy_joules"]["gpu"], rel=1e-9)
    assert figures["gpu_hours"] == pytest.approx(final["gpu_seconds"] / 3600, rel=1e-9)
    assert figures["measured"]["gpu"] is True
    assert figures["hosts"][0]["gpus"] == ["NVIDIA A100-SXM4-40GB (driver 550.54.15)"]
