"""``impact-run`` on a fake machine, with no exporter: ``python -m tests.fakes.standalone_node ROOT -- <impact-run
arguments>``. Used by tests/experiment_impact_tracker/test_standalone.py.

This process is impact-run (its ``main``, unchanged) with a thread that drives a fake machine under ROOT: a powercap
tree (package 40 W, DRAM 6 W), a procfs tree in which the command's process uses half of the busy CPU time and a
quarter of the memory, and one GPU (200 W, the command its only process) through tests/fakes/nvml_module. The
command's pid enters the fake procfs as impact-run forks it (before the monitor's first sample, as in a real /proc);
the machine runs from the moment the command is released until it has run ``DRIVE_SECONDS``, and once the monitor
has sampled after its last step, ROOT/done appears (the command waits for it) and ROOT/truth.json holds the energy
the run must be given: what was written, times its shares.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from experiment_impact_tracker import cli
from tests.fakes.node import (
    BUSY_TICKS_PER_STEP,
    DRAM,
    DRAM_WATTS,
    MEMORY_SHARE,
    PACKAGE,
    PACKAGE_WATTS,
    RUN_TICKS_PER_STEP,
)
from tests.fakes.powercap import FakePowercap
from tests.fakes.procfs import PAGE, FakeProc

GIB = 1 << 30  # not from tests.fakes.nvml: here pynvml is tests/fakes/nvml_module, which imports that module
GPU_UUID = "GPU-0000aaaa-0000-0000-0000-000000000000"
GPU_WATTS = 200.0
DRIVE_SECONDS = 3.0
STEP_SECONDS = 0.02


class FakeMachine:
    """The trees under ``root`` and the thread that drives them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.powercap = FakePowercap(root / "sys")
        self.powercap.add_zone(PACKAGE, "package-0", energy_uj=3_000_000)
        self.powercap.add_zone(DRAM, "dram", energy_uj=4_000_000)
        self.proc = FakeProc(root / "proc")
        self.nvml_state = root / "nvml.json"
        self.gpu = {"uuid": GPU_UUID, "power_watts": 0.0, "energy_joules": 1000.0, "processes": {}}
        self._write_gpu()
        self.pid = 0

    def spawn(self, pid: int) -> None:
        memory_kib = int(16318480 * MEMORY_SHARE)
        self.proc.spawn(pid, os.getpid(), start=5000, uid=os.getuid(), rss_pages=memory_kib * 1024 // PAGE)
        self.pid = pid

    def drive(self) -> None:
        """Run the machine for DRIVE_SECONDS, wait for the monitor's sample after it, and say what is true."""
        truth = {"cpu": 0.0, "dram": 0.0, "gpu": 0.0}
        self.gpu["power_watts"] = GPU_WATTS
        self.gpu["processes"] = {str(self.pid): 8 * GIB}
        steps = round(DRIVE_SECONDS / STEP_SECONDS)
        for _ in range(steps):
            time.sleep(STEP_SECONDS)
            self.powercap.advance(PACKAGE, PACKAGE_WATTS * STEP_SECONDS)
            self.powercap.advance(DRAM, DRAM_WATTS * STEP_SECONDS)
            self.proc.advance(BUSY_TICKS_PER_STEP, 0, running={self.pid: RUN_TICKS_PER_STEP})
            self.gpu["energy_joules"] += GPU_WATTS * STEP_SECONDS
            self._write_gpu()
            truth["cpu"] += PACKAGE_WATTS * STEP_SECONDS * RUN_TICKS_PER_STEP / BUSY_TICKS_PER_STEP
            truth["dram"] += DRAM_WATTS * STEP_SECONDS * MEMORY_SHARE
            truth["gpu"] += GPU_WATTS * STEP_SECONDS
        last_step = time.time()
        while newest_sample(self.root / "run" / "samples.csv") <= last_step:
            time.sleep(0.02)
        (self.root / "truth.json").write_text(json.dumps(truth))
        (self.root / "done").touch()

    def _write_gpu(self) -> None:
        temp = self.nvml_state.with_suffix(".tmp")
        temp.write_text(json.dumps({"gpus": [self.gpu]}))
        os.replace(temp, self.nvml_state)


def newest_sample(samples: Path) -> float:
    """The timestamp of the last row of a samples.csv (0 while there is none)."""
    try:
        last = samples.read_text().rstrip("\n").rsplit("\n", 1)[-1].split(",")
        return float(last[3])
    except (OSError, ValueError, IndexError):
        return 0.0


def main(argv: list[str]) -> int:
    root = Path(argv[0])
    machine = FakeMachine(root)

    class Gated(cli.GatedChild):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            machine.spawn(self.pid)

        def release(self, run_id: str | None) -> tuple[int, str] | None:
            threading.Thread(target=machine.drive, daemon=True).start()
            return super().release(run_id)

    cli.GatedChild = Gated  # type: ignore[misc]
    return cli.main(argv[2:] if argv[1:2] == ["--"] else argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
