"""Runs end to end: real exporter processes, the real Unix socket and TCP, real child processes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from experiment_impact_tracker.client import UnixHTTPConnection
from tests.fakes.powercap import FakePowercap, PowerDriver
from tests.servers import ExporterProcess, short_socket_path, wait_for

pytestmark = pytest.mark.integration

PACKAGE = "intel-rapl:0"
DRAM = "intel-rapl:0:0"


def api(socket_path: Path, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    """One request over the Unix socket: (status, decoded JSON body)."""
    connection = UnixHTTPConnection(str(socket_path), timeout=15)
    payload = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"} if payload is not None else {}
    connection.request(method, path, body=payload, headers=headers)
    response = connection.getresponse()
    assert response.getheader("Content-Type") == "application/json"
    status, data = response.status, json.loads(response.read())
    connection.close()
    return status, data


def samples(exporter: ExporterProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of one scrape of /metrics, keyed by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exporter.metrics_text())
        for sample in family.samples
    }


def value(scrape: dict, name: str, **labels: str) -> float:
    return scrape[(name, frozenset(labels.items()))]


def run_energy(scrape: dict, run_id: str, component: str) -> float:
    return value(scrape, "impact_run_energy_joules_total", run_id=run_id, user="root", component=component)


def spawn(code: str) -> subprocess.Popen[str]:
    """A Python child whose stdin and stdout are pipes to the test."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


BUSY = """
    import sys, time
    duty, seconds = float(sys.argv[1]), float(sys.argv[2])
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        slot = time.monotonic()
        while time.monotonic() - slot < 0.02 * duty:
            pass
        time.sleep(0.02 * (1 - duty))
"""


def busy(duty: float, seconds: float) -> subprocess.Popen[str]:
    """A child that keeps ``duty`` of one core busy for ``seconds``."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(BUSY), str(duty), str(seconds)])


@pytest.fixture
def powercap(tmp_path: Path) -> FakePowercap:
    powercap = FakePowercap(tmp_path / "sys")
    powercap.add_zone(PACKAGE, "package-0", energy_uj=5_000_000)
    powercap.add_zone(DRAM, "dram", energy_uj=7_000_000)
    return powercap


@pytest.fixture
def exporter(powercap: FakePowercap, start_exporter: Callable[..., ExporterProcess]) -> ExporterProcess:
    return start_exporter(f"--path.sysfs={powercap.sysfs}", "--sample-interval=0.25")


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for child in started:
        child.kill()
        child.wait()


@pytest.mark.serial
def test_two_concurrent_runs_split_energy_by_cpu_and_conserve_it(
    exporter: ExporterProcess, powercap: FakePowercap, children: list[subprocess.Popen]
) -> None:
    full, half = busy(1.0, 8), busy(0.5, 8)
    children += [full, half]
    status, run_full = api(
        exporter.socket_path, "POST", "/api/v1/runs", {"experiment": "split", "set": "full", "pid": full.pid}
    )
    assert status == 201
    status, run_half = api(
        exporter.socket_path, "POST", "/api/v1/runs", {"experiment": "split", "set": "half", "pid": half.pid}
    )
    assert status == 201
    time.sleep(0.6)
    before = samples(exporter)
    driver = PowerDriver(powercap, {PACKAGE: 40.0, DRAM: 6.0}, seconds=5.0)
    driver.start()
    driver.join()
    time.sleep(0.6)  # the exporter reads the final counters
    after = samples(exporter)
    ids = [run_full["run_id"], run_half["run_id"]]

    components = (("cpu", "impact_rapl_package_joules_total"), ("dram", "impact_rapl_dram_joules_total"))
    for component, zone_metric in components:
        measured = value(after, zone_metric, package="0") - value(before, zone_metric, package="0")
        runs = sum(run_energy(after, r, component) - run_energy(before, r, component) for r in ids)
        rest = value(after, "impact_unattributed_energy_joules_total", component=component) - value(
            before, "impact_unattributed_energy_joules_total", component=component
        )
        assert runs + rest == pytest.approx(measured, rel=1e-9), f"{component} energy is not conserved"
    assert value(after, "impact_rapl_package_joules_total", package="0") - value(
        before, "impact_rapl_package_joules_total", package="0"
    ) == pytest.approx(driver.joules[PACKAGE], rel=0.01)

    energy = [run_energy(after, r, "cpu") - run_energy(before, r, "cpu") for r in ids]
    cpu = [
        value(after, "impact_run_cpu_seconds_total", run_id=r, user="root")
        - value(before, "impact_run_cpu_seconds_total", run_id=r, user="root")
        for r in ids
    ]
    # 2:1 by design on an idle machine; a busy machine starves the sleeping child more, so only require that
    # the two loads clearly differ: the split below is what the test is about.
    assert cpu[0] / cpu[1] > 1.3, "the children did not load the CPU as designed"
    assert energy[0] / energy[1] == pytest.approx(cpu[0] / cpu[1], rel=0.05)
    assert sum(energy) < driver.joules[PACKAGE]


def test_cpu_of_fifty_short_lived_children_is_counted(
    exporter: ExporterProcess, children: list[subprocess.Popen]
) -> None:
    parent = spawn("""
        import os, sys, time
        sys.stdin.readline()  # wait until the run is registered
        for _ in range(50):
            pid = os.fork()
            if pid == 0:
                end = time.process_time() + 0.02
                while time.process_time() < end:
                    pass
                os._exit(0)
            os.waitpid(pid, 0)
        times = os.times()
        print(times.children_user + times.children_system, flush=True)
        time.sleep(1.0)
    """)
    children.append(parent)
    status, run = api(exporter.socket_path, "POST", "/api/v1/runs", {"experiment": "forks", "pid": parent.pid})
    assert status == 201
    time.sleep(0.5)  # a sample takes the baseline
    parent.stdin.write("go\n")
    parent.stdin.flush()
    children_cpu = float(parent.stdout.readline())
    parent.wait(timeout=30)
    finished = wait_for(
        lambda: (
            (r := api(exporter.socket_path, "GET", f"/api/v1/runs/{run['run_id']}")[1])["status"] == "finished" and r
        ),
        10,
        "the run to end by itself",
    )
    assert children_cpu > 0.9
    assert finished["cpu_seconds"] >= children_cpu * 0.95
    assert finished["cpu_seconds"] <= children_cpu * 1.25 + 0.3


def test_restart_after_sigkill_keeps_tracking_and_never_resets_the_counter(
    tmp_path: Path,
    powercap: FakePowercap,
    start_exporter: Callable[..., ExporterProcess],
    children: list[subprocess.Popen],
) -> None:
    socket_path = short_socket_path()
    flags = (
        f"--path.sysfs={powercap.sysfs}",
        "--sample-interval=0.25",
        f"--api.socket={socket_path}",
        f"--state-dir={tmp_path / 'state'}",
    )
    first = start_exporter(*flags)
    child = busy(1.0, 60)
    children.append(child)
    status, run = api(socket_path, "POST", "/api/v1/runs", {"experiment": "restart", "pid": child.pid})
    assert status == 201
    driver = PowerDriver(powercap, {PACKAGE: 40.0, DRAM: 6.0}, seconds=2.0)
    driver.run()
    time.sleep(0.6)
    before_kill = run_energy(samples(first), run["run_id"], "cpu")
    assert before_kill > 0
    first.stop(signal.SIGKILL)

    second = start_exporter(*flags)
    status, resumed = api(socket_path, "GET", f"/api/v1/runs/{run['run_id']}")
    assert status == 200
    assert resumed["status"] == "active"
    assert resumed["energy_joules"]["cpu"] >= before_kill * 0.99  # at most one unsaved sample behind
    PowerDriver(powercap, {PACKAGE: 40.0, DRAM: 6.0}, seconds=1.0).run()
    later = wait_for(
        lambda: (e := run_energy(samples(second), run["run_id"], "cpu")) > before_kill and e, 10, "energy to grow"
    )
    assert later > resumed["energy_joules"]["cpu"]


def test_a_user_cannot_register_another_users_process(
    powercap: FakePowercap, start_exporter: Callable[..., ExporterProcess]
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another uid")
    exporter = start_exporter(f"--path.sysfs={powercap.sysfs}", "--api.socket-group=nogroup")
    assert oct(exporter.socket_path.stat().st_mode & 0o777) == "0o660"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # an unprivileged caller in the socket's group
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            results = [
                api(exporter.socket_path, "POST", "/api/v1/runs", {"experiment": "x", "pid": os.getppid()}),
                api(exporter.socket_path, "POST", "/api/v1/runs", {"experiment": "mine"}),
            ]
            os.write(write, json.dumps(results).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        (status_other, body_other), (status_own, body_own) = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert status_other == 403
    assert "another user" in body_other["error"]
    assert status_own == 201
    assert body_own["user"] == "nobody"
    status, runs = api(exporter.socket_path, "GET", "/api/v1/runs")
    assert [r["experiment"] for r in runs["runs"]] == ["mine"]


BAD_REQUESTS = [
    ("POST", "/api/v1/runs", b"{not json", 400, "not valid JSON"),
    ("POST", "/api/v1/runs", b"[1, 2]", 400, "JSON object"),
    ("POST", "/api/v1/runs", b"", 400, "JSON object"),
    ("POST", "/api/v1/runs", b'{"set": "a"}', 400, "experiment is required"),
    ("POST", "/api/v1/runs", b'{"experiment": 3}', 400, "experiment must be a string"),
    ("POST", "/api/v1/runs", b'{"experiment": ""}', 400, "must not be empty"),
    ("POST", "/api/v1/runs", b'{"experiment": "x", "colour": "red"}', 400, "unknown field"),
    ("POST", "/api/v1/runs", b'{"experiment": "x", "labels": {"1abc": "v"}}', 400, "not a valid Prometheus label"),
    ("POST", "/api/v1/runs", b'{"experiment": "x", "labels": {"__name__": "v"}}', 400, "not a valid Prometheus label"),
    ("POST", "/api/v1/runs", b'{"experiment": "x", "labels": {"job": "v"}}', 400, "reserved"),
    ("POST", "/api/v1/runs", b'{"experiment": "x", "labels": {"instance": "v"}}', 400, "reserved"),
    ("POST", "/api/v1/runs", b'{"experiment": "x", "labels": {"run_id": "v"}}', 400, "reserved"),
    ("POST", "/api/v1/runs", b'{"experiment": "x", "labels": {"experiment": "v"}}', 400, "reserved"),
    ("POST", "/api/v1/runs", b'{"experiment": "x", "labels": {"set": "v"}}', 400, "reserved"),
    ("POST", "/api/v1/runs", b'{"experiment": "x", "labels": {"a": 1}}', 400, "label a must be a string"),
    ("POST", "/api/v1/runs", b'{"experiment": "x", "labels": ["a"]}', 400, "labels must be an object"),
    (
        "POST",
        "/api/v1/runs",
        json.dumps({"experiment": "x", "labels": {f"l{i}": "v" for i in range(33)}}).encode(),
        400,
        "at most 32 labels",
    ),
    (
        "POST",
        "/api/v1/runs",
        json.dumps({"experiment": "x", "labels": {"a": "v" * 257}}).encode(),
        400,
        "longer than 256",
    ),
    ("POST", "/api/v1/runs", json.dumps({"experiment": "x" * 257}).encode(), 400, "longer than 256"),
    ("POST", "/api/v1/runs", json.dumps({"experiment": "x", "labels": {"a": "v" * 70000}}).encode(), 413, "over 65536"),
    ("POST", "/api/v1/runs", b'{"experiment": "x", "pid": 4194000}', 400, "no running process"),
    ("POST", "/api/v1/runs", b'{"experiment": "x", "pid": true}', 400, "pid must be"),
    ("POST", "/api/v1/runs", b'{"experiment": "x", "pid": -5}', 400, "pid must be"),
    ("POST", "/api/v1/runs", b'{"experiment": "x", "pid": "12"}', 400, "pid must be"),
    ("POST", "/api/v1/runs", b'{"experiment": "x", "run_id": "../../etc"}', 400, "run_id must be"),
    ("POST", "/api/v1/runs", b'{"experiment": "x", "run_id": "a\\"}"}', 400, "run_id must be"),
    ("GET", "/api/v1/runs/nope", None, 404, "no run 'nope'"),
    ("POST", "/api/v1/runs/nope/stop", None, 404, "no run 'nope'"),
    ("POST", "/api/v1/runs/..%2F..%2Fx/stop", None, 400, "run_id must be"),
    ("DELETE", "/api/v1/runs", None, 405, "DELETE is not allowed"),
    ("PUT", "/api/v1/runs", b"{}", 405, "PUT is not allowed"),
    ("GET", "/api/v1/runs/x/stop", None, 405, "use POST"),
    ("GET", "/api/v1/nothing", None, 404, "no such API route"),
]


def test_every_bad_request_gets_its_status_and_a_json_error_and_stores_nothing(
    exporter: ExporterProcess,
) -> None:
    for method, path, raw, status, message in BAD_REQUESTS:
        connection = UnixHTTPConnection(str(exporter.socket_path), timeout=15)
        connection.request(method, path, body=raw)
        response = connection.getresponse()
        body = response.read()
        connection.close()
        assert response.status == status, (method, path, raw[:80] if raw else raw, body)
        if message is not None:
            assert response.getheader("Content-Type") == "application/json"
            assert message in json.loads(body)["error"], (path, raw[:80] if raw else raw, body)
    assert api(exporter.socket_path, "GET", "/api/v1/runs") == (200, {"runs": []})
    assert "impact_run_info{" not in exporter.metrics_text()
    state_dir = Path(next(a for a in exporter.args if a.startswith("--state-dir=")).split("=", 1)[1])
    with sqlite3.connect(state_dir / "runs.sqlite") as db:
        assert db.execute("SELECT count(*) FROM runs").fetchone() == (0,)
    assert exporter.process.poll() is None


@pytest.mark.serial
def test_stop_returns_totals_and_a_second_stop_is_harmless(
    exporter: ExporterProcess, children: list[subprocess.Popen]
) -> None:
    child = busy(1.0, 30)
    children.append(child)
    _, run = api(exporter.socket_path, "POST", "/api/v1/runs", {"experiment": "stop", "pid": child.pid})
    time.sleep(1.0)
    status, stopped = api(exporter.socket_path, "POST", f"/api/v1/runs/{run['run_id']}/stop")
    assert status == 200
    assert stopped["status"] == "finished"
    assert stopped["end_time"] >= run["start_time"]
    assert stopped["cpu_seconds"] > 0.3
    status, again = api(exporter.socket_path, "POST", f"/api/v1/runs/{run['run_id']}/stop")
    assert (status, again["end_time"], again["cpu_seconds"]) == (200, stopped["end_time"], stopped["cpu_seconds"])
    scrape = samples(exporter)
    assert value(scrape, "impact_run_active", run_id=run["run_id"], user="root") == 0.0
    assert value(scrape, "impact_run_end_time_seconds", run_id=run["run_id"], user="root") == stopped["end_time"]


@pytest.mark.serial
def test_a_run_ends_by_itself_when_its_process_exits(
    exporter: ExporterProcess, children: list[subprocess.Popen]
) -> None:
    child = busy(1.0, 1.0)
    children.append(child)
    _, run = api(exporter.socket_path, "POST", "/api/v1/runs", {"experiment": "exit", "pid": child.pid})
    child.wait()
    exited = time.time()
    finished = wait_for(
        lambda: (
            (r := api(exporter.socket_path, "GET", f"/api/v1/runs/{run['run_id']}")[1])["status"] == "finished" and r
        ),
        10,
        "the run to end",
    )
    assert exited - 0.5 <= finished["end_time"] <= exited + 0.05


def test_finished_runs_leave_metrics_after_the_retention_time(
    powercap: FakePowercap, start_exporter: Callable[..., ExporterProcess], children: list[subprocess.Popen]
) -> None:
    exporter = start_exporter(f"--path.sysfs={powercap.sysfs}", "--sample-interval=0.25", "--runs.retain-finished=2s")
    child = busy(0.1, 30)
    children.append(child)
    _, run = api(exporter.socket_path, "POST", "/api/v1/runs", {"experiment": "retain", "pid": child.pid})
    api(exporter.socket_path, "POST", f"/api/v1/runs/{run['run_id']}/stop")
    assert f'run_id="{run["run_id"]}"' in exporter.metrics_text()
    wait_for(lambda: f'run_id="{run["run_id"]}"' not in exporter.metrics_text(), 10, "the run to leave /metrics")


def test_ranks_with_one_run_id_join_one_run(exporter: ExporterProcess, children: list[subprocess.Popen]) -> None:
    ranks = [busy(0.2, 30), busy(0.2, 30)]
    children += ranks
    request = {"experiment": "ddp", "set": "8gpu", "labels": {"seed": "1"}, "run_id": "job-42"}
    assert api(exporter.socket_path, "POST", "/api/v1/runs", {**request, "pid": ranks[0].pid})[0] == 201
    status, joined = api(exporter.socket_path, "POST", "/api/v1/runs", {**request, "pid": ranks[1].pid})
    assert status == 200
    assert joined["pids"] == [ranks[0].pid, ranks[1].pid]
    status, conflict = api(exporter.socket_path, "POST", "/api/v1/runs", {**request, "experiment": "other"})
    assert status == 409
    api(exporter.socket_path, "POST", "/api/v1/runs/job-42/stop")
    status, conflict = api(exporter.socket_path, "POST", "/api/v1/runs", {**request, "pid": ranks[0].pid})
    assert status == 409
    assert "already finished" in conflict["error"]


def test_tcp_run_api_is_off_without_a_token_and_guarded_with_one(
    tmp_path: Path,
    powercap: FakePowercap,
    start_exporter: Callable[..., ExporterProcess],
    children: list[subprocess.Popen],
) -> None:
    child = busy(0.1, 30)
    children.append(child)
    body = {"experiment": "tcp", "pid": child.pid}
    plain = start_exporter(f"--path.sysfs={powercap.sysfs}")
    response = requests.post(f"{plain.url}/api/v1/runs", json=body, timeout=5)
    assert response.status_code == 404
    assert "--api.token-file" in response.json()["error"]

    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    guarded = start_exporter(f"--path.sysfs={powercap.sysfs}", f"--api.token-file={token_file}")
    url = f"{guarded.url}/api/v1/runs"
    assert requests.post(url, json=body, timeout=5).status_code == 401
    wrong = requests.post(url, json=body, headers={"Authorization": "Bearer s3cret-tokeN"}, timeout=5)
    assert wrong.status_code == 401
    assert wrong.headers["WWW-Authenticate"] == "Bearer"
    auth = {"Authorization": "Bearer s3cret-token"}
    no_pid = requests.post(url, json={"experiment": "tcp"}, headers=auth, timeout=5)
    assert (no_pid.status_code, "pid is required" in no_pid.json()["error"]) == (400, True)
    created = requests.post(url, json=body, headers=auth, timeout=5)
    assert created.status_code == 201
    assert created.json()["pids"] == [child.pid]


def test_an_unwritable_state_dir_refuses_runs_with_503_but_metrics_work(
    tmp_path: Path, powercap: FakePowercap, start_exporter: Callable[..., ExporterProcess]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    exporter = start_exporter(f"--path.sysfs={powercap.sysfs}", f"--state-dir={blocker / 'state'}")
    status, body = api(exporter.socket_path, "POST", "/api/v1/runs", {"experiment": "x"})
    assert status == 503
    assert str(blocker) in body["error"] and "--state-dir" in body["error"]
    assert 'impact_source_up{source="rapl"} 1.0' in exporter.metrics_text()
    assert "new runs are refused" in exporter.log()


def test_cpu_right_after_registration_and_right_before_stop_is_counted(
    powercap: FakePowercap, start_exporter: Callable[..., ExporterProcess], children: list[subprocess.Popen]
) -> None:
    exporter = start_exporter(f"--path.sysfs={powercap.sysfs}", "--sample-interval=5")  # no regular sample helps
    worker = spawn("""
        import sys, time
        sys.stdin.readline()
        end = time.process_time() + 1.0
        while time.process_time() < end:
            pass
        print(time.process_time(), flush=True)
        sys.stdin.readline()
    """)
    children.append(worker)
    status, run = api(exporter.socket_path, "POST", "/api/v1/runs", {"experiment": "edges", "pid": worker.pid})
    assert status == 201
    worker.stdin.write("go\n")
    worker.stdin.flush()
    used = float(worker.stdout.readline())
    _, stopped = api(exporter.socket_path, "POST", f"/api/v1/runs/{run['run_id']}/stop")
    worker.stdin.write("exit\n")
    worker.stdin.flush()
    assert stopped["cpu_seconds"] == pytest.approx(used, abs=0.1)
