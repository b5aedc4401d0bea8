"""The exporter as shipped, in its own process, with a fake NVML (tests/fakes/nvml.py) injected where the NVML
source is built: what the scrape benchmark measures, without sharing a Python interpreter with its client.

    python -m benchmarks.gpu_exporter --gpus 4 --gpu-pids 10000-10099 -- <impact-exporter flags>

The GPUs draw 200 W and their processes (the given PIDs, spread over the GPUs) share the SMs evenly. The fake
driver's clock follows the wall clock, brought up to date at each NVML call: a real driver samples on its own,
and a thread in the exporter's interpreter doing it would take turns with scrapes that no real exporter has to.
SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable

from impact_exporter.cli import parse_settings, serve, settle_garbage_collector
from tests.fakes.nvml import GIB, FakeGpu, FakeNvml
from tests.monitored import LockedNvml

DRIVER_TICK_SECONDS = 0.1  # how often the fake driver takes a process utilisation sample
GPU_WATTS = 200.0


def fake_gpus(count: int, pids: list[int]) -> FakeNvml:
    """``count`` GPUs with ``pids`` dealt round-robin over them, each process holding 1 GiB and an equal SM share."""
    gpus = []
    for index in range(count):
        mine = pids[index::count]
        share = max(1, 90 // max(1, len(mine)))
        gpus.append(
            FakeGpu(
                f"GPU-{index:08x}-0000-0000-0000-000000000000",
                power_watts=GPU_WATTS,
                utilization_percent=90,
                processes={pid: GIB for pid in mine},
                slices=[{pid: share for pid in mine}],
            )
        )
    return FakeNvml(gpus, tick_seconds=DRIVER_TICK_SECONDS)


class WallClockNvml(LockedNvml):
    """The fake NVML, its clock moved on by the wall-clock time passed since the previous call before each call."""

    def __init__(self, nvml: FakeNvml) -> None:
        super().__init__(nvml, threading.Lock())
        self._last = time.monotonic()

    def _call(self, function: Callable[..., object], *args: object, **kwargs: object) -> object:
        with self._lock:
            now = time.monotonic()
            self._nvml.advance(now - self._last)
            self._last = now
            return function(*args, **kwargs)


def pid_range(text: str) -> list[int]:
    """``10000-10099`` -> [10000, ..., 10099]."""
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_exporter", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=4)
    parser.add_argument("--gpu-pids", type=pid_range, default=[], metavar="FIRST-LAST")
    parser.add_argument("exporter_flags", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    flags = [flag for flag in args.exporter_flags if flag != "--"]
    settings = parse_settings(flags)
    settle_garbage_collector()  # as exporter.cli.main does
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return serve(settings, WallClockNvml(fake_gpus(args.gpus, args.gpu_pids)), stop)


if __name__ == "__main__":
    sys.exit(main())
