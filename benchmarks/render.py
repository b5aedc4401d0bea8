"""Render cost: CPU milliseconds to write ``/metrics`` (and gzip it) with 1,000 runs, in-process.

The scrape benchmark's latency includes the sampler's turns and the machine's noise; this isolates the part a
code change to the collector or the encoder moves. The runs are new objects at every render, as the registry
publishes them after each sample, so the per-sample values are written anew each time while the label text is
reused. Blocks of renders are timed in process CPU time; the median block is printed. To compare two trees, run
it in each (their venvs), alternately, a few times.

    python -m benchmarks.render [--runs 1000] [--renders 40] [--blocks 5]
"""

from __future__ import annotations

import argparse
import gzip
import resource
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from prometheus_client.registry import CollectorRegistry

from benchmarks.common import machine_description
from impact_exporter.collector import ImpactCollector
from impact_exporter.exposition import encode
from impact_exporter.host import read_host_info
from impact_exporter.run import ProcessRef, Run
from impact_exporter.sampler import Snapshot


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def sample_of(runs: list[Run], step: int) -> list[Run]:
    """The runs as the registry publishes them after sample ``step``: new objects with new totals."""
    return [
        replace(
            run,
            energy_joules={"cpu": 1.5 * step, "dram": 0.1 * step, "gpu": 2.0 * step},
            cpu_seconds=run.cpu_seconds + step,
            gpu_seconds=0.5 * step,
            last_seen=run.start_time + step,
        )
        for run in runs
    ]


def render_milliseconds(runs: int, renders: int, blocks: int) -> tuple[list[float], int]:
    """CPU milliseconds per render in each block (after one block of warm-up), and the last body's gzip size."""
    base = [
        Run(f"render-{i:04d}", "render", "bench", {}, 0, "root", (ProcessRef(10000 + i, 1),), 1.7e9 + i)
        for i in range(runs)
    ]
    current = [base]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ImpactCollector(Snapshot, read_host_info(Path("/proc")), "0", runs=lambda: current[0]))
    figures, step, body = [], 0, b""
    for block in range(blocks + 1):
        samples = [sample_of(base, step := step + 1) for _ in range(renders)]  # made outside the timing
        started = cpu_seconds()
        for runs_now in samples:
            current[0] = runs_now
            body = gzip.compress(encode(registry, False), compresslevel=1)
        if block:
            figures.append((cpu_seconds() - started) / renders * 1000)
    return figures, len(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.render", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="runs in /metrics (default: 1000)")
    parser.add_argument("--renders", type=int, default=40, help="renders per timed block (default: 40)")
    parser.add_argument("--blocks", type=int, default=5, help="timed blocks (default: 5)")
    args = parser.parse_args(argv)
    print(f"# render cost; {machine_description()}")
    figures, size = render_milliseconds(args.runs, args.renders, args.blocks)
    blocks = ", ".join(f"{figure:.2f}" for figure in figures)
    print(f"{args.runs} runs: {statistics.median(figures):.2f} ms CPU per render (blocks: {blocks}); {size} B gzip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
