"""Slurm jobs as runs: the shipped prolog and epilog (deploy/slurm/impact-slurm), run with Slurm's environment as
slurmd runs them, against a real exporter reading a cgroup tree laid out as Slurm's cgroup/v1 plugin lays it out,
and fake procfs and powercap trees whose energy the test sets."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from experiment_impact_tracker.client import ExporterClient
from tests.deploy.slurm_cluster import NODE, SlurmCluster
from tests.fakes.cgroups import FakeCgroups
from tests.fakes.powercap import TICK_JOULES, BusyTickPower, FakePowercap
from tests.fakes.procfs import TICKS, FakeProc
from tests.servers import REPO_ROOT, ExporterProcess, short_socket_path

pytestmark = pytest.mark.integration

SCRIPT = REPO_ROOT / "deploy" / "slurm" / "impact-slurm"
PACKAGE = "intel-rapl:0"
WATTS = 40.0
STEP_SECONDS = 0.02  # 25 steps a sample: one a sample sees half written skews its share little
BUSY_TICKS = 10  # per fine step: ten busy cores at 100 ticks a second
NOBODY = 65534
DEBIAN_LAYOUT = "freezer:/slurm_%n/uid_%u/job_%j"
STEPD_BATCH, BATCH, STEPD_0, TASK_0, STEPD_1, TASK_1, DAEMON, STEPD_ARRAY, TASK_ARRAY = range(300, 309)


def slurm_environment(job_id: int, context: str, **extra: str) -> dict[str, str]:
    """The environment slurmd gives a Prolog or Epilog (Slurm 22.05; the job's name and array indices only where a
    newer Slurm gives them)."""
    return {
        "PATH": os.environ["PATH"],
        "SLURM_SCRIPT_CONTEXT": context,
        "SLURM_JOB_ID": str(job_id),
        "SLURM_JOBID": str(job_id),
        "SLURM_JOB_UID": str(NOBODY),
        "SLURM_JOB_GID": str(NOBODY),
        "SLURM_JOB_USER": "nobody",
        "SLURM_JOB_ACCOUNT": "physics",
        "SLURM_JOB_PARTITION": "gpu",
        "SLURM_CLUSTER_NAME": "testc",
        "SLURMD_NODENAME": "node1",
        **extra,
    }


def run_script(environment: dict[str, str], socket_path: Path, cgroupfs: Path) -> subprocess.CompletedProcess[str]:
    """Run the shipped script as slurmd does: no arguments, the job's environment."""
    environment = {**environment, "IMPACT_EXPORTER_SOCKET": str(socket_path), "IMPACT_CGROUPFS": str(cgroupfs)}
    return subprocess.run([str(SCRIPT)], env=environment, capture_output=True, text=True, timeout=30)


class SlurmNode:
    """Fake procfs, cgroupfs and powercap trees of one node, and the exporter that reads them."""

    def __init__(self, root: Path, start_exporter: Callable[..., ExporterProcess]) -> None:
        self.proc = FakeProc(root / "proc")
        self.cgroups = FakeCgroups(root / "cgroup", self.proc)
        self.powercap = FakePowercap(root / "sys")
        self.powercap.add_zone(PACKAGE, "package-0", energy_uj=1_000_000)
        self.socket_path = short_socket_path()
        self.exporter = start_exporter(
            f"--path.sysfs={self.powercap.sysfs}",
            f"--path.procfs={self.proc.root}",
            f"--path.cgroupfs={self.cgroups.root}",
            f"--api.socket={self.socket_path}",
            "--sample-interval=0.5",
        )
        self.expected: dict[str, float] = {}  # run id -> joules of package energy it must get
        self.package_joules = 0.0

    def script(self, job_id: int, context: str, **extra: str) -> None:
        result = run_script(slurm_environment(job_id, context, **extra), self.socket_path, self.cgroups.root)
        assert (result.returncode, result.stderr) == (0, ""), "the prolog and epilog must never fail a job"

    def start(self, pid: int, ppid: int, cgroup: str | None) -> None:
        self.proc.spawn(pid, ppid, start=self.proc.uptime_ticks, uid=NOBODY if cgroup else 0)
        if cgroup is not None:
            self.cgroups.place(pid, cgroup)

    def end(self, pid: int) -> None:
        self.proc.reap(pid)
        self.cgroups.drop(pid)

    def drive(self, seconds: float, running: dict[int, int], runs: dict[str, tuple[int, ...]]) -> None:
        """Constant power while ``running`` processes use their ticks of every BUSY_TICKS busy ticks; each run of
        ``runs`` gets the share of the energy its processes' ticks are."""
        steps = round(seconds / STEP_SECONDS)
        for _ in range(steps):
            time.sleep(STEP_SECONDS)
            self.powercap.advance(PACKAGE, WATTS * STEP_SECONDS)
            self.proc.advance(BUSY_TICKS, 0, running)
        joules = WATTS * STEP_SECONDS * steps
        self.package_joules += joules
        for run_id, pids in runs.items():
            self.expected[run_id] = self.expected.get(run_id, 0.0) + joules * sum(running[p] for p in pids) / BUSY_TICKS


def test_a_two_step_job_and_an_array_task_become_runs_with_slurms_ids_labels_and_their_energy(
    tmp_path: Path, start_exporter: Callable[..., ExporterProcess]
) -> None:
    node = SlurmNode(tmp_path, start_exporter)
    # A node's first job: its cgroup's parents do not exist yet, so the layout is configured.
    node.script(42, "prolog_slurmd", SLURM_JOB_NAME="train-resnet", IMPACT_SLURM_CGROUP=DEBIAN_LAYOUT)
    job42 = node.cgroups.slurm_job(NOBODY, 42, ("batch", "0", "1"))  # slurmd makes the cgroups after the prolog
    # The next job's prolog finds slurmd's /slurm_node1 in the freezer hierarchy.
    node.script(43, "prolog_slurmd", SLURM_JOB_NAME="sweep", SLURM_ARRAY_JOB_ID="40", SLURM_ARRAY_TASK_ID="3")
    job43 = node.cgroups.slurm_job(NOBODY, 43, ("batch",))
    for stepd in (STEPD_BATCH, STEPD_0, STEPD_1, STEPD_ARRAY):
        node.start(stepd, 1, None)
    node.start(BATCH, STEPD_BATCH, f"{job42}/step_batch")
    node.start(TASK_ARRAY, STEPD_ARRAY, f"{job43}/step_batch")
    node.start(TASK_0, STEPD_0, f"{job42}/step_0")
    runs = {"slurm-testc-42": (BATCH, TASK_0), "slurm-testc-43": (TASK_ARRAY,)}
    node.drive(1.0, {BATCH: 1, TASK_0: 4, TASK_ARRAY: 2}, runs)
    node.end(TASK_0)  # step 0 ends; its slurmstepd, outside the cgroup, reaps the task
    node.start(TASK_1, STEPD_1, f"{job42}/step_1")
    node.start(DAEMON, TASK_1, f"{job42}/step_1")
    node.proc.update(DAEMON, ppid=1)  # double-forked: init's child now, in the job's cgroup still
    runs = {"slurm-testc-42": (BATCH, TASK_1, DAEMON), "slurm-testc-43": (TASK_ARRAY,)}
    node.drive(1.0, {BATCH: 1, TASK_1: 3, DAEMON: 2, TASK_ARRAY: 2}, runs)
    time.sleep(0.6)  # a sample reads the last counters
    node.script(42, "epilog_slurmd")
    node.script(43, "epilog_slurmd")

    client = ExporterClient(f"unix://{node.socket_path}")
    finished = {run["run_id"]: run for run in client.list_runs()}
    job, task = finished["slurm-testc-42"], finished["slurm-testc-43"]
    assert (job["status"], job["user"], job["experiment"], job["cgroup"]) == (
        "finished",
        "nobody",
        "train-resnet",
        "freezer:/slurm_node1/uid_65534/job_42",
    )
    assert job["labels"] == {
        "account": "physics",
        "partition": "gpu",
        "job_name": "train-resnet",
        "array_job_id": "",
        "array_task_id": "",
    }
    assert (task["labels"]["array_job_id"], task["labels"]["array_task_id"], task["experiment"]) == ("40", "3", "sweep")
    assert task["cgroup"] == "freezer:/slurm_node1/uid_65534/job_43"
    for run_id, run in finished.items():
        # 5 %: a sample that reads a step half written skews its interval (2.5 % seen at a load of 35 on 2 cores);
        # losing step 0's task, or the daemon, would be 45 % or 18 % off.
        assert run["energy_joules"]["cpu"] == pytest.approx(node.expected[run_id], rel=0.05), run_id
    assert sum(run["energy_joules"]["cpu"] for run in finished.values()) <= node.package_joules


def test_the_prolog_never_fails_a_job_when_the_exporter_is_down_and_says_why(tmp_path: Path) -> None:
    result = run_script(slurm_environment(7, "prolog_slurmd"), tmp_path / "absent.sock", tmp_path)
    assert result.returncode == 0
    assert "job slurm-testc-7 is not measured" in result.stderr and "absent.sock" in result.stderr


BURN_STEP = "import os, sys, time\nwhile sum(os.times()[:2]) < float(sys.argv[1]): pass\ntime.sleep(0.6)\n"
"""Burns CPU, then lives three sample intervals: its slurmstepd, init's child, exits as soon as it has reaped it, and
the time a process and its reaper used after the last sample that saw them is lost (docs/reliability.md)."""
DAEMON_STEP = """\
import os, sys, time
def burn(seconds):
    while sum(os.times()[:2]) < seconds: pass
done, told = os.pipe()
if os.fork() == 0:
    if os.fork() == 0:  # the daemon: its parent exits at once, init adopts it, it stays in the step's cgroup
        os.setsid()
        burn(0.3)
        os.write(told, b"x")
        time.sleep(600)
    os._exit(0)
os.wait()
burn(0.2)
os.read(done, 1)
time.sleep(1.0)  # a sample sees the daemon's last CPU time before the step's end kills it
"""
REAL_JOB = f"""#!/bin/sh
srun -n1 /usr/bin/python3 -c {shlex.quote(BURN_STEP)} 0.3
srun -n1 /usr/bin/python3 -c {shlex.quote(DAEMON_STEP)}
"""
BURNED_SECONDS = 0.3 + 0.2 + 0.3  # CPU time the steps' processes use, as the kernel counts it


@pytest.mark.serial  # its energy is a share of a real job's CPU time on the machine
def test_a_real_slurm_job_of_two_steps_is_one_run_with_its_ids_labels_and_energy(
    tmp_path: Path, start_exporter: Callable[..., ExporterProcess]
) -> None:
    """Debian's slurmctld, slurmd and munged with proctrack/cgroup (cgroup/v1), the shipped prolog and epilog, and a
    real exporter reading the real /proc and cgroupfs: a job of two steps, one of which double-forks a daemon,
    becomes run slurm-testc-<id> of user nobody, with its account, partition and name, holding every CPU tick of its
    processes, and 0.01 J per tick of them."""
    powercap = FakePowercap(tmp_path / "sys")
    powercap.add_zone(PACKAGE, "package-0", energy_uj=1_000_000)
    power = BusyTickPower(powercap, PACKAGE)
    power.start()
    socket_path = short_socket_path()
    exporter = start_exporter(f"--path.sysfs={powercap.sysfs}", f"--api.socket={socket_path}", "--sample-interval=0.2")
    cluster = SlurmCluster(tmp_path / "slurm", socket_path)
    try:
        job_id = cluster.submit(REAL_JOB, "-A", "physics", "-p", "gpu", "-J", "train-resnet")
        assert cluster.wait_finished(job_id, 120) == "COMPLETED", cluster.output(job_id)
    finally:
        cluster.stop()
        power.stopped.set()
    run_id = f"slurm-testc-{job_id}"
    run = ExporterClient(f"unix://{socket_path}").get_run(run_id)
    assert (run["status"], run["user"], run["experiment"], run["cgroup"]) == (
        "finished",
        "nobody",
        "train-resnet",
        f"freezer:/slurm_{NODE}/uid_{NOBODY}/job_{job_id}",
    ), exporter.log()
    assert run["labels"] == {
        "account": "physics",
        "partition": "gpu",
        "job_name": "train-resnet",
        "array_job_id": "",
        "array_task_id": "",
    }
    # Both steps and the daemon (0.3 s: losing it fails this), and the little the job's shells and srun used (0.80 s
    # in all was measured at a load of 17 on 2 cores).
    assert BURNED_SECONDS - 1e-9 <= run["cpu_seconds"] < BURNED_SECONDS + 0.25  # 1e-9: ticks summed as floats
    # 0.25 % off was measured: the counter is written every 10 ms, the exporter reads it and /proc/stat apart.
    assert run["energy_joules"]["cpu"] == pytest.approx(run["cpu_seconds"] * TICKS * TICK_JOULES, rel=0.05)
