"""Real experiment-like processes for the overhead benchmark: a root that forks children, all of them looping
busy for a moment and then sleeping, until the process group is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

WORKLOAD = """
import os, sys, time
procs, busy, period = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
for _ in range(procs - 1):
    if os.fork() == 0:
        break
while True:
    until = time.perf_counter() + busy
    while time.perf_counter() < until:
        pass
    time.sleep(period - busy)
"""


class Workload:
    """``runs`` process trees of ``processes`` each, every process busy ``busy_seconds`` per ``period_seconds``."""

    def __init__(self, runs: int, processes: int, busy_seconds: float = 0.001, period_seconds: float = 1.0) -> None:
        args = [str(processes), str(busy_seconds), str(period_seconds)]
        self.roots = [
            subprocess.Popen([sys.executable, "-S", "-c", WORKLOAD, *args], start_new_session=True) for _ in range(runs)
        ]

    @property
    def root_pids(self) -> list[int]:
        return [root.pid for root in self.roots]

    def stop(self) -> None:
        """Kill every tree (each root leads its own process group) and reap the roots."""
        for root in self.roots:
            try:
                os.killpg(root.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for root in self.roots:
            root.wait()
