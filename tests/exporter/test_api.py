"""The run API and its Unix socket listener in-process, on a real registry and SQLite store over a fake procfs:
the input the fuzzing of tests/reliability/test_fuzz_api.py found mishandled, and the bursts of test_load.py."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.registry import CollectorRegistry

from experiment_impact_tracker.client import UnixHTTPConnection
from impact_exporter.api import MAX_BODY_BYTES, Caller, RunAPI
from impact_exporter.http import UnixExporterServer
from impact_exporter.runs import RunRegistry
from impact_exporter.sampler import Snapshot
from impact_exporter.store import RunStore
from tests.fakes.procfs import FakeProc
from tests.servers import short_socket_path

PID = 4242
ROOT = Caller(uid=0, pid=PID)


@pytest.fixture
def api(tmp_path: Path, store: RunStore) -> RunAPI:
    proc = FakeProc(tmp_path / "proc")
    proc.spawn(PID, 1, start=100, uid=0)
    return RunAPI(RunRegistry(proc.procfs(), store), Snapshot)


def start(api: RunAPI, body: object) -> tuple[int, dict]:
    reply = api.handle("POST", "/api/v1/runs", json.dumps(body).encode(), ROOT)
    return reply.status, reply.body


@pytest.mark.parametrize("depth", [5_000, 30_000])
def test_a_body_nested_too_deep_for_the_json_parser_is_a_400(api: RunAPI, depth: int) -> None:
    reply = api.handle("POST", "/api/v1/runs", b"[" * depth + b"]" * depth, ROOT)
    assert (reply.status, reply.body["error"].startswith("the body is not valid JSON")) == (400, True)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"experiment": "\ud800"}, "experiment"),
        ({"experiment": "x", "set": "a\udfffb"}, "set"),
        ({"experiment": "x", "labels": {"seed": "\udc80"}}, "label seed"),
    ],
)
def test_a_lone_surrogate_is_refused_and_nothing_is_stored(
    api: RunAPI, store: RunStore, body: dict, field: str
) -> None:
    status, answer = start(api, body)
    assert status == 400
    assert answer["error"].startswith(f"{field} is not valid Unicode")
    assert store.load() == []
    assert start(api, {"experiment": "x", "set": "\u00e9\U0001f642", "labels": {"seed": "\u2028"}})[0] == 201


def test_a_percent_encoded_run_id_in_the_path_is_decoded_before_it_is_validated(api: RunAPI) -> None:
    assert start(api, {"experiment": "x", "run_id": "job:7.rank-0"})[0] == 201
    read = api.handle("GET", "/api/v1/runs/job%3A7.rank-0", b"", ROOT)
    assert (read.status, read.body["run_id"]) == (200, "job:7.rank-0")
    stopped = api.handle("POST", "/api/v1/runs/job%3a7.rank-0/stop", b"", ROOT)
    assert (stopped.status, stopped.body["status"]) == (200, "finished")
    for segment in ("..%2F..%2Fetc", "a%00b", "%ff", "a%22%7D"):
        reply = api.handle("GET", f"/api/v1/runs/{segment}", b"", ROOT)
        assert (reply.status, reply.body["error"].startswith("run_id must be")) == (400, True), segment


@pytest.mark.parametrize(
    ("query", "status", "error"),
    [
        ("?user=root", 200, None),
        ("?user=alice", 404, "no run 'job-7' on this exporter of user 'alice'"),
        ("?user=", 400, "user must not be empty"),
        ("?user=root&user=alice", 400, "the only query parameter of the run API is user, once: ?user=NAME"),
        ("?users=root", 400, "the only query parameter of the run API is user, once: ?user=NAME"),
        ("?user=root&x=1", 400, "the only query parameter of the run API is user, once: ?user=NAME"),
    ],
)
def test_the_user_query_parameter_names_whose_run_and_nothing_else_is_accepted(
    api: RunAPI, query: str, status: int, error: str | None
) -> None:
    assert start(api, {"experiment": "x", "run_id": "job-7"})[0] == 201
    for method, path in (("GET", f"/api/v1/runs/job-7{query}"), ("POST", f"/api/v1/runs/job-7/stop{query}")):
        reply = api.handle(method, path, b"", ROOT)
        assert (reply.status, reply.body.get("error")) == (status, error), (method, path)


@pytest.fixture
def server(api: RunAPI) -> Iterator[UnixExporterServer]:
    server = UnixExporterServer(short_socket_path(), CollectorRegistry(), "test", api)
    yield server
    server.server_close()


def test_a_burst_of_connections_waits_in_the_backlog_instead_of_being_refused(server: UnixExporterServer) -> None:
    clients = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(200)]
    try:
        for client in clients:  # nothing accepts yet: every connection must wait in the listen backlog
            client.settimeout(5)
            client.connect(str(server.path))
    finally:
        for client in clients:
            client.close()


def test_a_sender_of_an_oversized_body_reads_its_413(server: UnixExporterServer) -> None:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for size in (MAX_BODY_BYTES + 1, 4 * 2**20):  # a body far beyond the socket's buffer, too
            connection = UnixHTTPConnection(str(server.path), timeout=10)
            connection.request("POST", "/api/v1/runs", body=b" " * size)
            response = connection.getresponse()
            assert (response.status, json.loads(response.read())) == (
                413,
                {"error": f"the body is over {MAX_BODY_BYTES} bytes"},
            )
            connection.close()
    finally:
        server.shutdown()
        thread.join()
