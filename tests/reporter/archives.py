"""Synthetic run archives: runs with chosen power written as archive run directories (run.json + samples.csv).

They let appendix tests exercise the whole reporting path (run directories, figures, statistics, LaTeX)
without waiting for a Prometheus; the end-to-end tests cover the Prometheus side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from impact_reporter.runs import SAMPLE_COLUMNS, Host, Run, write_archive

HOST = Host(
    "node1:9877",
    hostname="node1",
    cpu_model="AMD EPYC 7742 64-Core Processor",
    cpu_vendor="AuthenticAMD",
    cpu_count="128",
    kernel="6.1.0",
    gpus=("NVIDIA A100-SXM4-40GB (driver 550.54.15)",),
)


def synthetic_run(
    run_id: str,
    experiment: str,
    set_name: str,
    cpu_watts: float,
    dram_watts: float = 5.0,
    seconds: int = 60,
    start: float = 1_700_000_000.0,
    labels: dict[str, str] | None = None,
    host: Host = HOST,
    methods: dict[str, str] | None = None,
    gpu_watts: float | None = None,
    spacing: float = 1.0,
) -> Run:
    """A run scraped every ``spacing`` seconds at constant power, its CPU busy for half of the time (and its GPU,
    if given)."""
    t = np.arange(0, seconds + spacing / 2, spacing, dtype=float)
    rows = []
    powers = [("cpu", cpu_watts), ("dram", dram_watts)] + ([("gpu", gpu_watts)] if gpu_watts is not None else [])
    for component, watts in powers:
        rows += [("impact_run_energy_joules_total", host.instance, component, start + x, watts * x) for x in t]
    rows += [("impact_run_cpu_seconds_total", host.instance, "", start + x, 0.5 * x) for x in t]
    if gpu_watts is not None:
        rows += [("impact_run_gpu_seconds_total", host.instance, "", start + x, 0.5 * x) for x in t]
    return Run(
        run_id=run_id,
        experiment=experiment,
        set=set_name,
        labels=labels or {},
        user="alice",
        start_time=start,
        end_time=start + seconds,
        hosts=(host,),
        methods=methods or {"cpu": "rapl", "dram": "rapl"},
        samples=pd.DataFrame(rows, columns=SAMPLE_COLUMNS),
    )


def archive_set(root: Path, prefix: str, watts: list[float], **kwargs: object) -> list[Path]:
    """Archive one run per entry of ``watts`` under ``root``; return their directories."""
    directories = []
    for index, cpu_watts in enumerate(watts):
        run = synthetic_run(
            f"{prefix}-{index}", prefix, prefix, cpu_watts, start=1_700_000_000.0 + 100 * index, **kwargs
        )
        directories.append(write_archive(run, root / run.run_id).parent)
    return directories
