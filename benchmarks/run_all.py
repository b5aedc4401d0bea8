"""Every benchmark with its defaults, one after the other: ``python -m benchmarks.run_all`` (about 10 minutes).

The figures in docs/performance.md come from this command. The reporter benchmark of issue #10 is not written yet.
"""

from __future__ import annotations

import sys
import time

from benchmarks import accuracy, overhead, scrape


def main() -> int:
    for name, benchmark in (("overhead", overhead), ("scrape", scrape), ("accuracy", accuracy)):
        started = time.monotonic()
        print(f"\n=== {name} ===", flush=True)
        benchmark.main([])
        print(f"({name}: {time.monotonic() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
