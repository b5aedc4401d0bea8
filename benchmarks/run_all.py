"""Every benchmark with its defaults, one after the other: ``python -m benchmarks.run_all`` (about 17 minutes).

The figures in docs/performance.md come from this command.
"""

from __future__ import annotations

import sys
import time

from benchmarks import accuracy, nvml_sample, overhead, render, reporter, scrape


def main() -> int:
    benchmarks = (
        ("overhead", overhead),
        ("scrape", scrape),
        ("render", render),
        ("accuracy", accuracy),
        ("reporter", reporter),
        ("nvml_sample", nvml_sample),  # real NVIDIA GPUs only: says so and returns elsewhere
    )
    for name, benchmark in benchmarks:
        started = time.monotonic()
        print(f"\n=== {name} ===", flush=True)
        benchmark.main([])
        print(f"({name}: {time.monotonic() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
