"""Cgroup runs on this machine's real cgroups, v1 (the freezer hierarchy) and v2, measured by a real exporter
reading the real /proc and cgroupfs, with real users on the real socket: a daemon that double-forks out of every
process tree keeps its energy in the run; a user who is no operator cannot register a cgroup; code that calls
``track_run`` inside the cgroup (a researcher's script in a Slurm job) records the cgroup's run. The package
counter is written as 0.01 J per busy tick of the machine (tests/fakes/powercap.py BusyTickPower), so a run's
exact energy is 0.01 J per tick of its own. Each cgroup is removed after the test, its processes killed first."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from experiment_impact_tracker import track_run
from experiment_impact_tracker.client import ExporterClient, UnixHTTPConnection
from experiment_impact_tracker.cpu.common import cpu_summary
from tests.fakes.powercap import TICK_JOULES, BusyTickPower, FakePowercap
from tests.fakes.procfs import TICKS
from tests.servers import IN_CI, ExporterProcess, short_socket_path, wait_for
from tests.users import as_uid

pytestmark = pytest.mark.integration

PACKAGE = "intel-rapl:0"
NOBODY = NOGROUP = 65534
CGROUPFS = Path("/sys/fs/cgroup")
DAEMON_SECONDS = 0.3
DAEMON = f"""\
import os, sys, time
if os.fork() == 0:
    if os.fork() == 0:  # the daemon: its parent exits at once, init adopts it, it stays in the cgroup
        os.setsid()
        while sum(os.times()[:2]) < {DAEMON_SECONDS}:
            pass
        print(os.getpid(), sum(os.times()[:2]), flush=True)
        time.sleep(600)
    os._exit(0)
os.wait()
"""


@dataclass(frozen=True)
class RealCgroup:
    name: str  # as the API takes it
    directory: Path

    def enter(self) -> None:
        """Move the calling process into the cgroup."""
        (self.directory / "cgroup.procs").write_text(f"{os.getpid()}\n")

    def pids(self) -> list[int]:
        return [int(pid) for pid in (self.directory / "cgroup.procs").read_text().split()]


def hierarchy_root(version: str) -> tuple[str, Path]:
    """The prefix a cgroup name has in the API and the directory of its hierarchy."""
    if version == "v1":
        return "freezer:", CGROUPFS / "freezer"
    unified = CGROUPFS if (CGROUPFS / "cgroup.controllers").exists() else CGROUPFS / "unified"
    return "", unified


@pytest.fixture(params=["v1", "v2"])
def real_cgroup(request: pytest.FixtureRequest) -> Iterator[RealCgroup]:
    """A fresh cgroup under the hierarchy's root; its processes are killed and it is removed afterwards."""
    prefix, root = hierarchy_root(request.param)
    if os.geteuid() != 0 or not os.access(root / "cgroup.procs", os.W_OK):
        message = f"cgroup {request.param} at {root}: this test needs root and a writable cgroup hierarchy"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    directory = root / f"iet-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    cgroup = RealCgroup(f"{prefix}/{directory.name}", directory)
    try:
        yield cgroup
    finally:
        for pid in cgroup.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not cgroup.pids(), 10, f"the processes of {directory} to die")
        directory.rmdir()


def start_request(socket_path: Path, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST /api/v1/runs over the socket as the calling process: (status, answer)."""
    connection = UnixHTTPConnection(str(socket_path), timeout=10)
    try:
        connection.request("POST", "/api/v1/runs", body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def in_cgroup_as_nobody(cgroup: RealCgroup) -> Callable[[], None]:
    """A subprocess's preexec_fn: into the cgroup (as root), then user nobody."""

    def enter() -> None:
        cgroup.enter()
        os.setgroups([])
        os.setgid(NOGROUP)
        os.setuid(NOBODY)

    return enter


def track_inside(socket_path: Path, logdir: Path) -> dict[str, Any]:
    """``track_run`` as a researcher's script calls it, with its log lines: run in the cgroup as nobody."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(f"{record.levelname} {record.getMessage()}")

    logger = logging.getLogger("experiment_impact_tracker")
    logger.addHandler(Collect())
    logger.setLevel(logging.INFO)
    with track_run("inner", logdir=logdir, client=ExporterClient(f"unix://{socket_path}")) as run:
        inside = {"run_id": run.run_id, "tracked": run.tracked, "created": run.created}
    return {**inside, "lines": lines, "run.json": json.loads((logdir / "run.json").read_text())}


def test_a_real_cgroup_run_keeps_a_daemon_refuses_a_non_operator_and_is_what_track_run_inside_records(
    real_cgroup: RealCgroup, tmp_path: Path, start_exporter: Callable[..., ExporterProcess]
) -> None:
    powercap = FakePowercap(tmp_path / "sys")
    powercap.add_zone(PACKAGE, "package-0", energy_uj=1_000_000)
    power = BusyTickPower(powercap, PACKAGE)
    power.start()
    socket_path = short_socket_path()
    start_exporter(
        f"--path.sysfs={powercap.sysfs}",
        f"--api.socket={socket_path}",
        "--api.socket-group=nogroup",  # so nobody may call; being able to does not make it an operator
        "--sample-interval=0.2",
    )
    body = {"experiment": "job", "run_id": "job-7", "cgroup": real_cgroup.name, "uid": NOBODY}
    try:
        status, answer = as_uid(NOBODY, NOGROUP, lambda: start_request(socket_path, body))
        assert status == 403 and "--runs.cgroup-operators" in answer["error"], answer
        status, answer = start_request(socket_path, body)
        assert status == 201 and (answer["user"], answer["cgroup"]) == ("nobody", real_cgroup.name), answer

        # A researcher's track_run inside the job: the job's run measures it, and its run.json says so.
        cpu_summary()  # py-cpuinfo runs this interpreter, which nobody may not: the forked child uses the cached
        logdir = Path(tempfile.mkdtemp(prefix="iet-logdir-"))
        logdir.chmod(0o777)
        try:
            inside = as_uid(NOBODY, NOGROUP, lambda: track_inside(socket_path, logdir / "run"), enter=real_cgroup.enter)
        finally:
            shutil.rmtree(logdir)
        assert (inside["run_id"], inside["tracked"], inside["created"]) == ("job-7", True, False), inside
        assert (inside["run.json"]["run_id"], inside["run.json"]["joined"]) == ("job-7", True)
        assert [line for line in inside["lines"] if line.startswith(("INFO", "WARNING"))] == [
            f"INFO process {inside['run.json']['pid']} is in cgroup {real_cgroup.name} of run job-7 of 'job' (its "
            "job), which measures it: recording that run"
        ]
        client = ExporterClient(f"unix://{socket_path}")
        exited = time.time()
        wait_for(lambda: client.get_run("job-7")["last_sample_time"] > exited + 0.2, 30, "a sample after it exited")
        before = client.get_run("job-7")["cpu_seconds"]

        daemon = subprocess.Popen(
            ["/usr/bin/python3", "-c", DAEMON], preexec_fn=in_cgroup_as_nobody(real_cgroup), stdout=subprocess.PIPE
        )
        daemon_pid, daemon_seconds = daemon.stdout.readline().split()
        daemon.wait(timeout=30)
        members = real_cgroup.pids()
        assert int(daemon_pid) in members and psutil.Process(int(daemon_pid)).ppid() not in members, "out of the tree"
        final = client.stop_run("job-7")
    finally:
        power.stopped.set()
    # Its CPU time (0.3 s, as the kernel counts it), and the few ticks its two short-lived parents used; in ticks.
    daemon_ticks, run_ticks = round(float(daemon_seconds) * TICKS), round((final["cpu_seconds"] - before) * TICKS)
    assert daemon_ticks <= run_ticks < daemon_ticks + 15
    assert final["energy_joules"]["cpu"] == pytest.approx(final["cpu_seconds"] * TICKS * TICK_JOULES, rel=0.05)
