"""What reading real NVIDIA GPUs costs the exporter: the wall and CPU time of one ``NvmlSource.sample()`` and of
each NVML function a sample calls, measured on this machine's GPUs through the real driver.

    python -m benchmarks.nvml_sample --samples 300

The first half of the samples is taken with the GPUs idle, the second while a PyTorch matrix-product loop runs
on GPU 0, so that the per-process queries have a process to report. Exits 2 where there is no NVIDIA GPU.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from benchmarks.common import percentile
from impact_exporter.sources import HardwareNotFound
from impact_exporter.sources.nvml import NvmlSource, import_pynvml
from tests.monitored import LockedNvml

GPU_LOAD = """
import sys, torch
a = torch.randn(8192, 8192, device="cuda")
print("ready", flush=True)
while True:
    a = (a @ a) / 8192.0
    torch.cuda.synchronize()
"""


class TimedNvml(LockedNvml):
    """The real pynvml module, each ``nvml*`` call's wall and CPU time recorded under the function's name."""

    def __init__(self) -> None:
        super().__init__(import_pynvml(), threading.Lock())
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.cpu_seconds: dict[str, list[float]] = defaultdict(list)

    def _call(self, function: Callable[..., object], *args: object, **kwargs: object) -> object:
        start, cpu_start = time.perf_counter(), time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            self.seconds[function.__name__].append(time.perf_counter() - start)
            self.cpu_seconds[function.__name__].append(time.thread_time() - cpu_start)


def sample_seconds(source: NvmlSource, count: int, interval: float) -> tuple[list[float], list[float]]:
    """The wall and CPU time of each of ``count`` samples taken ``interval`` seconds apart."""
    wall, cpu = [], []
    for _ in range(count):
        start, cpu_start = time.perf_counter(), time.thread_time()
        source.sample()
        wall.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - cpu_start)
        time.sleep(interval)
    return wall, cpu


def print_figures(title: str, durations: list[float]) -> None:
    print(
        f"{title:<50} n={len(durations):>4}  p50 {percentile(durations, 50) * 1e3:7.3f} ms  "
        f"p99 {percentile(durations, 99) * 1e3:7.3f} ms  mean {sum(durations) / len(durations) * 1e3:7.3f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nvml_sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=300, help="samples in all, half idle, half loaded")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between samples (default: 0.1)")
    args = parser.parse_args(argv)
    try:
        nvml = TimedNvml()
        source = NvmlSource(nvml)
    except HardwareNotFound as error:
        print(f"nvml_sample: {error}", file=sys.stderr)
        return 2
    try:
        print(f"GPUs: {', '.join(f'{gpu.index} {gpu.name} ({gpu.uuid})' for gpu in source.gpus)}")
        idle = sample_seconds(source, args.samples // 2, args.interval)
        load = subprocess.Popen([sys.executable, "-c", GPU_LOAD], stdout=subprocess.PIPE, text=True)
        try:
            if load.stdout.readline().strip() != "ready":
                print(
                    "nvml_sample: the PyTorch load on GPU 0 did not start; is PyTorch with CUDA installed?",
                    file=sys.stderr,
                )
                return 2
            nvml.seconds.clear()
            nvml.cpu_seconds.clear()
            loaded = sample_seconds(source, args.samples - args.samples // 2, args.interval)
            reading = source.sample().gpus[0]
        finally:
            load.kill()
            load.wait()
    finally:
        source.close()
    print(
        f"GPU 0 under load: {reading.power_watts} W, {len(reading.processes)} process(es): "
        + ", ".join(f"pid {p.pid} SM {p.sm_utilization_ratio}" for p in reading.processes)
    )
    timings = (("wall time", 0, nvml.seconds), ("CPU time of the calling thread", 1, nvml.cpu_seconds))
    for title, index, per_call in timings:
        print(f"{title}:")
        print_figures("NvmlSource.sample(), GPUs idle", idle[index])
        print_figures("NvmlSource.sample(), GPU 0 loaded", loaded[index])
        for name, durations in sorted(per_call.items()):
            print_figures(f"  {name} (loaded)", durations)
    return 0


if __name__ == "__main__":
    sys.exit(main())
