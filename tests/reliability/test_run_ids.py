"""Run ids on a shared node: the store keeps a finished id taken, and ids are scoped by user, so one user cannot
squat the id another user's launcher will use. Users are real uids; the exporter is a real process."""

from __future__ import annotations

import grp
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.powercap import FakePowercap, PowerDriver
from tests.reliability.test_access import NOBODY, as_user, needs_root, unix_call
from tests.servers import ExporterProcess, wait_for

pytestmark = pytest.mark.integration

PACKAGE = "intel-rapl:0"
ENERGY, CPU_TIME = "impact_run_energy_joules_total", "impact_run_cpu_seconds_total"
BUSY = 'i=0; while [ "$i" -lt 100000000 ]; do i=$((i + 1)); done'  # builtins only: no child outlives the shell
LAUNCHER = 40002  # a uid with no account, in the socket's group: the user whose launcher picks the run id


@pytest.fixture
def powercap(tmp_path: Path) -> FakePowercap:
    powercap = FakePowercap(tmp_path / "sys")
    powercap.add_zone(PACKAGE, "package-0", energy_uj=1_000_000)
    return powercap


@pytest.fixture
def exporter(powercap: FakePowercap, start_exporter: Callable[..., ExporterProcess]) -> ExporterProcess:
    """Finished runs leave memory at the next sample (--runs.retain-finished=0s); the store keeps them."""
    needs_root()
    group = grp.getgrgid(NOBODY).gr_name
    return start_exporter(
        f"--path.sysfs={powercap.sysfs}",
        "--sample-interval=0.2",
        "--runs.retain-finished=0s",
        f"--api.socket-group={group}",
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def stored_runs(exporter: ExporterProcess) -> list[tuple[int, str, str, bool]]:
    """(uid, run_id, experiment, finished) of every run in the exporter's store, read from its file."""
    state_dir = next(arg for arg in exporter.args if arg.startswith("--state-dir=")).split("=", 1)[1]
    with sqlite3.connect(f"file:{state_dir}/runs.sqlite?mode=ro", uri=True) as db:
        rows = db.execute("SELECT uid, run_id, experiment, end_time IS NOT NULL FROM runs ORDER BY uid").fetchall()
    return [(uid, run_id, experiment, bool(finished)) for uid, run_id, experiment, finished in rows]


def test_a_finished_run_id_that_left_memory_is_still_refused_and_its_row_kept(
    exporter: ExporterProcess, processes: list[subprocess.Popen[bytes]]
) -> None:
    first, again = subprocess.Popen(["sleep", "600"]), subprocess.Popen(["sleep", "600"])
    nobodys = subprocess.Popen(["sleep", "600"], user=NOBODY, group=NOBODY, extra_groups=[])
    processes += [first, again, nobodys]
    socket = exporter.socket_path
    status, run = unix_call(
        socket, "POST", "/api/v1/runs", {"experiment": "first", "run_id": "job-1", "pid": first.pid}
    )
    assert status == 201
    assert unix_call(socket, "POST", "/api/v1/runs/job-1/stop")[0] == 200
    wait_for(lambda: unix_call(socket, "GET", "/api/v1/runs/job-1")[0] == 404, 10, "the finished run to leave memory")

    status, refused = unix_call(
        socket, "POST", "/api/v1/runs", {"experiment": "second", "run_id": "job-1", "pid": again.pid}
    )
    assert (status, refused["error"]) == (409, "run job-1 already finished on this node; start a run with a new run_id")
    # another user's id is their own: nobody may use job-1, and root's finished row is not overwritten
    [(status, nobody_run)] = as_user(
        NOBODY,
        NOBODY,
        socket,
        [("POST", "/api/v1/runs", {"experiment": "nobodys", "run_id": "job-1", "pid": nobodys.pid})],
    )
    assert (status, nobody_run["user"]) == (201, "nobody"), nobody_run
    assert stored_runs(exporter) == [(0, "job-1", "first", True), (NOBODY, "job-1", "nobodys", False)]


def run_series(exporter: ExporterProcess, run_id: str) -> dict[tuple[str, str], float]:
    """(metric, user) -> value of the cpu energy and CPU time series of ``run_id`` in one scrape."""
    return {
        (sample.name, sample.labels["user"]): sample.value
        for family in text_string_to_metric_families(exporter.metrics_text())
        for sample in family.samples
        if sample.labels.get("run_id") == run_id
        and sample.name in (ENERGY, CPU_TIME)
        and sample.labels.get("component", "cpu") == "cpu"
    }


@pytest.mark.serial
def test_a_squatted_run_id_does_not_stop_the_owners_launcher_and_each_run_keeps_its_own_energy(
    exporter: ExporterProcess, powercap: FakePowercap, processes: list[subprocess.Popen[bytes]]
) -> None:
    squatter = subprocess.Popen(["sleep", "600"], user=NOBODY, group=NOBODY, extra_groups=[])
    launcher = subprocess.Popen(  # one busy process, so that killing it ends the load
        ["sh", "-c", BUSY], user=LAUNCHER, group=NOBODY, extra_groups=[]
    )
    processes += [squatter, launcher]
    socket = exporter.socket_path
    job = {"experiment": "resnet", "run_id": "torchrun-job-99"}
    [(status, squat)] = as_user(NOBODY, NOBODY, socket, [("POST", "/api/v1/runs", {**job, "pid": squatter.pid})])
    assert (status, squat["user"]) == (201, "nobody")
    [(status, owned)] = as_user(LAUNCHER, NOBODY, socket, [("POST", "/api/v1/runs", {**job, "pid": launcher.pid})])
    assert (status, owned["user"], owned["pids"]) == (201, str(LAUNCHER), [launcher.pid]), owned

    time.sleep(0.5)  # a sample takes both runs' baselines
    before = run_series(exporter, "torchrun-job-99")
    driver = PowerDriver(powercap, {PACKAGE: 50.0}, seconds=2.0)
    driver.start()
    driver.join()
    time.sleep(0.5)  # the exporter reads the final counters
    after = run_series(exporter, "torchrun-job-99")
    users = ("nobody", str(LAUNCHER))
    energy = {user: after[(ENERGY, user)] - before[(ENERGY, user)] for user in users}
    cpu = {user: after[(CPU_TIME, user)] for user in users}

    assert cpu[str(LAUNCHER)] > 0.5, "the launcher's busy loop did not run"
    assert energy[str(LAUNCHER)] > 0.5 and energy[str(LAUNCHER)] < driver.joules[PACKAGE]
    assert energy["nobody"] == pytest.approx(0.0, abs=0.01 * energy[str(LAUNCHER)])

    # root names which user's run it means when two hold the id
    status, both = unix_call(socket, "GET", "/api/v1/runs/torchrun-job-99")
    assert (status, both["error"]) == (
        409,
        f"run torchrun-job-99 is held by users {LAUNCHER}, nobody; name one with ?user=NAME",
    )
    status, stopped = unix_call(socket, "POST", "/api/v1/runs/torchrun-job-99/stop?user=nobody")
    assert (status, stopped["user"], stopped["status"]) == (200, "nobody", "finished")
    status, still = unix_call(socket, "GET", f"/api/v1/runs/torchrun-job-99?user={LAUNCHER}")
    assert (status, still["status"], still["pids"]) == (200, "active", [launcher.pid])
