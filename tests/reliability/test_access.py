"""Access to the run API: users on the Unix socket act only on their own runs, the socket admits only its group,
the TCP API refuses every route without the token, and run ids cannot name paths or inject series.

Other users are real: a forked child of the (root) test drops to another uid and gid before it connects, so the
exporter learns who calls from the kernel (SO_PEERCRED), exactly as in production.
"""

from __future__ import annotations

import grp
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from experiment_impact_tracker.client import UnixHTTPConnection
from tests.fakes.powercap import FakePowercap
from tests.servers import ExporterProcess
from tests.users import as_uid

pytestmark = pytest.mark.integration

NOBODY = 65534  # uid and gid of nobody/nogroup on Debian and Ubuntu
OUTSIDER = 40001  # a uid and gid with no account, not in the socket's group
TOKEN = "access-token-9f8e7d6c5b4a"
Call = tuple[str, str, Any]  # method, path, JSON body or None


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as other users")


@dataclass
class Node:
    """One exporter whose socket belongs to group nogroup and whose TCP API needs TOKEN, and a root process."""

    exporter: ExporterProcess
    root_sleeper: subprocess.Popen[bytes]

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return unix_call(self.exporter.socket_path, method, path, body)


def unix_call(socket_path: Path, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One request over the Unix socket: (status, decoded JSON body); every answer must be JSON."""
    connection = UnixHTTPConnection(str(socket_path), timeout=15)
    try:
        connection.request(method, path, body=None if body is None else json.dumps(body).encode())
        response = connection.getresponse()
        assert response.getheader("Content-Type") == "application/json", (method, path)
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def as_user(uid: int, gid: int, socket_path: Path, calls: list[Call]) -> list[Any]:
    """Make ``calls`` as ``uid``/``gid`` (tests/users.py): each result is [status, body], or [errno, strerror] when
    the socket refuses the connection."""

    def call_all() -> list[Any]:
        results: list[Any] = []
        for method, path, body in calls:
            try:
                results.append(list(unix_call(socket_path, method, path, body)))
            except OSError as error:
                results.append([error.errno, error.strerror])
        return results

    return as_uid(uid, gid, call_all)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    workdir = tmp_path_factory.mktemp("access")
    powercap = FakePowercap(workdir / "sys")
    powercap.add_zone("intel-rapl:0", "package-0", energy_uj=1_000_000)
    token_file = workdir / "token"
    token_file.write_text(TOKEN + "\n")
    group = [f"--api.socket-group={grp.getgrgid(NOBODY).gr_name}"] if os.geteuid() == 0 else []
    sleeper = subprocess.Popen(["sleep", "600"])
    exporter = ExporterProcess(workdir, [f"--path.sysfs={powercap.sysfs}", f"--api.token-file={token_file}", *group])
    yield Node(exporter, sleeper)
    exporter.stop()
    sleeper.kill()
    sleeper.wait()


@pytest.fixture
def nobody_sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A long-lived process of user nobody, to carry nobody's run."""
    needs_root()
    process = subprocess.Popen(["sleep", "600"], user=NOBODY, group=NOBODY, extra_groups=[])
    yield process
    process.kill()
    process.wait()


@pytest.fixture
def second() -> Iterator[subprocess.Popen[bytes]]:
    """Another process of nobody's (a process counts in one active run only)."""
    needs_root()
    process = subprocess.Popen(["sleep", "600"], user=NOBODY, group=NOBODY, extra_groups=[])
    yield process
    process.kill()
    process.wait()


def test_users_can_neither_read_stop_join_nor_list_each_others_runs(
    node: Node, nobody_sleeper: subprocess.Popen[bytes], second: subprocess.Popen[bytes]
) -> None:
    status, root_run = node.call(
        "POST", "/api/v1/runs", {"experiment": "root-exp", "run_id": "root-job", "pid": node.root_sleeper.pid}
    )
    assert status == 201
    nobody = as_user(
        NOBODY,
        NOBODY,
        node.exporter.socket_path,
        [
            ("POST", "/api/v1/runs", {"experiment": "mine", "run_id": "nobody-job", "pid": nobody_sleeper.pid}),
            ("GET", "/api/v1/runs/root-job", None),
            ("POST", "/api/v1/runs/root-job/stop", None),
            ("GET", "/api/v1/runs/root-job?user=root", None),
            ("GET", "/api/v1/runs/no-such-job", None),
            ("POST", "/api/v1/runs", {"experiment": "root-exp", "run_id": "root-job", "pid": second.pid}),
            ("GET", "/api/v1/runs", None),
        ],
    )
    created, read, stop, read_named, unknown, join, listed = nobody
    assert created[0] == 201 and created[1]["user"] == "nobody"
    # another user's run answers exactly as a run that does not exist: its id cannot be probed
    assert [read[0], stop[0], read_named[0], unknown[0]] == [404, 404, 404, 404], nobody
    assert read[1]["error"] == unknown[1]["error"].replace("no-such-job", "root-job")
    # run ids are scoped by user: the same id is nobody's own new run, and root's run does not get the process
    assert (join[0], join[1]["user"], join[1]["pids"]) == (201, "nobody", [second.pid]), join
    assert sorted(run["run_id"] for run in listed[1]["runs"]) == ["nobody-job", "root-job"]
    assert {run["user"] for run in listed[1]["runs"]} == {"nobody"}

    # an unprivileged user of the socket's group who is not nobody: nobody's run is as closed to them
    other = as_user(
        OUTSIDER,
        NOBODY,
        node.exporter.socket_path,
        [
            ("GET", "/api/v1/runs/nobody-job", None),
            ("POST", "/api/v1/runs/nobody-job/stop", None),
            ("GET", "/api/v1/runs", None),
        ],
    )
    assert [answer[0] for answer in other] == [404, 404, 200], other
    assert other[2][1] == {"runs": []}

    status, root_after = node.call("GET", "/api/v1/runs/root-job?user=root")
    assert (status, root_after["status"], root_after["pids"]) == (200, "active", root_run["pids"])
    status, nobody_after = node.call("GET", "/api/v1/runs/nobody-job")  # root may read anyone's run
    assert (status, nobody_after["status"], nobody_after["pids"]) == (200, "active", [nobody_sleeper.pid])
    status, both = node.call("GET", "/api/v1/runs/root-job")  # held by root and nobody: root must name one
    assert (status, both["error"]) == (409, "run root-job is held by users nobody, root; name one with ?user=NAME")
    status, stopped = node.call("POST", "/api/v1/runs/root-job/stop?user=nobody")
    assert (status, stopped["user"], stopped["status"]) == (200, "nobody", "finished")
    status, root_after = node.call("GET", "/api/v1/runs/root-job?user=root")
    assert (status, root_after["status"]) == (200, "active")


def test_the_socket_is_mode_0660_in_its_group_and_refuses_users_outside_it(node: Node) -> None:
    needs_root()
    info = node.exporter.socket_path.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert (oct(stat.S_IMODE(info.st_mode)), info.st_uid, info.st_gid) == ("0o660", os.geteuid(), NOBODY)
    outsider, member = (
        as_user(uid, gid, node.exporter.socket_path, [("GET", "/api/v1/runs", None)])[0]
        for uid, gid in ((OUTSIDER, OUTSIDER), (OUTSIDER, NOBODY))
    )
    assert outsider[0] == 13, outsider  # EACCES: the kernel refuses the connection, the exporter never sees it
    assert member[0] == 200, member


AUTHORIZATIONS_REFUSED = [
    None,
    "Bearer",
    f"Basic {TOKEN}",
    f"Bearer {TOKEN}x",
    f"Bearer {TOKEN[:-1]}",
    f"Bearer {TOKEN.upper()}",
    TOKEN,
    f"Bearer  x{TOKEN}",
    f"Token {TOKEN}",
]


@pytest.fixture
def tcp_sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process for the TCP run of its own: a process counts in one run at a time, and root_sleeper has one."""
    process = subprocess.Popen(["sleep", "600"])
    yield process
    process.kill()
    process.wait()


def test_tcp_refuses_every_api_route_without_the_right_token(node: Node, tcp_sleeper: subprocess.Popen[bytes]) -> None:
    base = f"{node.exporter.url}/api/v1/runs"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    created = requests.post(
        base, json={"experiment": "tcp", "run_id": "tcp-job", "pid": tcp_sleeper.pid}, headers=auth, timeout=10
    )
    assert created.status_code == 201, created.text
    routes = [
        ("POST", base, {"experiment": "intruder", "pid": node.root_sleeper.pid}),
        ("GET", base, None),
        ("GET", f"{base}/tcp-job", None),
        ("POST", f"{base}/tcp-job/stop", None),
        ("POST", f"{base}/tcp-job/stop?token={TOKEN}", None),
    ]
    for method, url, body in routes:
        for authorization in AUTHORIZATIONS_REFUSED:
            headers = {"Authorization": authorization} if authorization else {}
            response = requests.request(method, url, json=body, headers=headers, timeout=10)
            assert response.status_code == 401, (method, url, authorization, response.text)
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert response.json() == {"error": "missing or wrong bearer token"}
    status, run = node.call("GET", "/api/v1/runs/tcp-job")
    assert (status, run["status"], run["pids"]) == (200, "active", [tcp_sleeper.pid])
    status, listed = node.call("GET", "/api/v1/runs")
    assert "intruder" not in {run["experiment"] for run in listed["runs"]}
    assert requests.get(f"{node.exporter.url}/metrics", timeout=10).status_code == 200  # metrics stay public


HOSTILE_RUN_IDS = [
    "../../etc/passwd",
    "..",
    ".hidden",
    "a/b",
    "/abs",
    "a\\b",
    "a b",
    'a"}',
    'x",user="root',
    "a\nimpact_fake 1",
    "a\x00b",
    "\u0430dmin",
    "-rf",
    "x" * 129,
    "",
]


def test_hostile_run_ids_are_refused_on_every_route_and_reach_neither_disk_nor_metrics(node: Node) -> None:
    state_dir = Path(next(a for a in node.exporter.args if a.startswith("--state-dir=")).split("=", 1)[1])
    files_before = sorted(path.name for path in state_dir.iterdir())
    for run_id in HOSTILE_RUN_IDS:
        status, body = node.call(
            "POST", "/api/v1/runs", {"experiment": "x", "run_id": run_id, "pid": node.root_sleeper.pid}
        )
        assert (status, "run_id must be" in body["error"]) == (400, True), (run_id, body)
        segment = quote(run_id, safe="")
        if not segment:
            continue  # an empty segment is another route (the list), not a run id
        for method, path in (("GET", f"/api/v1/runs/{segment}"), ("POST", f"/api/v1/runs/{segment}/stop")):
            status, body = node.call(method, path)
            assert (status, "run_id must be" in body["error"]) == (400, True), (method, path, body)
    assert sorted(path.name for path in state_dir.iterdir()) == files_before
    assert "impact_fake" not in node.exporter.metrics_text()
    status, listed = node.call("GET", "/api/v1/runs")
    assert not {run["run_id"] for run in listed["runs"]} & set(HOSTILE_RUN_IDS)
    assert node.exporter.process.poll() is None
