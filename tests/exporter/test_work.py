"""Units of work through the run API (``POST /api/v1/runs/<id>/work``), in-process on a real registry and SQLite
store over a fake procfs: what is counted, what a careless or hostile caller is refused, and what survives a
restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from impact_exporter.api import Caller, RunAPI
from impact_exporter.runs import RunRegistry
from impact_exporter.sampler import Snapshot
from impact_exporter.store import RunStore
from tests.fakes.procfs import FakeProc

ALICE = Caller(uid=1000, pid=4242)
BOB = Caller(uid=1001, pid=4343)
ROOT = Caller(uid=0, pid=None)


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    proc = FakeProc(tmp_path / "proc")
    proc.spawn(ALICE.pid, 1, start=100, uid=ALICE.uid)
    proc.spawn(BOB.pid, 1, start=100, uid=BOB.uid)
    return proc


@pytest.fixture
def registry(proc: FakeProc, store: RunStore) -> RunRegistry:
    return RunRegistry(proc.procfs(), store)


@pytest.fixture
def api(registry: RunRegistry) -> RunAPI:
    return RunAPI(registry, Snapshot)


def request(api: RunAPI, method: str, path: str, body: object, caller: Caller = ALICE) -> tuple[int, dict]:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = api.handle(method, path, payload, caller)
    return reply.status, reply.body


@pytest.fixture
def run_id(api: RunAPI) -> str:
    status, run = request(api, "POST", "/api/v1/runs", {"experiment": "bert", "run_id": "job-1"})
    assert status == 201
    return run["run_id"]


def test_reports_add_up_per_unit_and_are_stored_with_the_next_sample(
    api: RunAPI, registry: RunRegistry, store: RunStore, run_id: str, proc: FakeProc
) -> None:
    for body in ({"samples": 64, "steps": 1}, {"samples": 64, "steps": 1}, {"tokens": 10_000}, {"samples": 0}):
        status, run = request(api, "POST", f"/api/v1/runs/{run_id}/work", body)
        assert status == 200, run
    assert run["work_units"] == {"samples": 128, "steps": 2, "tokens": 10_000}
    assert request(api, "GET", f"/api/v1/runs/{run_id}", b"")[1]["work_units"] == run["work_units"]
    assert registry.runs()[0].work_units == run["work_units"]  # what /metrics exports

    registry.settle(1.0)
    assert store.load()[0].work_units == {"samples": 128, "steps": 2, "tokens": 10_000}
    resumed = RunRegistry(proc.procfs(), store)  # an exporter restart goes on counting from the stored figures
    assert resumed.get(run_id, ALICE.uid).work_units == {"samples": 128, "steps": 2, "tokens": 10_000}
    RunAPI(resumed, Snapshot).handle("POST", f"/api/v1/runs/{run_id}/work", b'{"samples": 2}', ALICE)
    assert resumed.get(run_id, ALICE.uid).work_units["samples"] == 130


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"samples": -1}', "samples must be a whole number from 0 to 2^53, not -1"),
        (b'{"samples": 1.5}', "samples must be a whole number from 0 to 2^53, not 1.5"),
        (b'{"samples": NaN}', "samples must be a whole number from 0 to 2^53, not NaN"),
        (b'{"samples": Infinity}', "samples must be a whole number from 0 to 2^53, not Infinity"),
        (b'{"samples": true}', "samples must be a whole number from 0 to 2^53, not true"),
        (b'{"samples": "64"}', 'samples must be a whole number from 0 to 2^53, not "64"'),
        (b'{"samples": 9007199254740993}', "samples must be a whole number from 0 to 2^53, not 9007199254740993"),
        (b'{"samples": 1' + b"0" * 400 + b"}", "samples must be a whole number from 0 to 2^53, not 1000000000000"),
        (b'{"epochs": 1}', "unknown unit(s) of work: 'epochs'; the units are samples, steps, tokens"),
        (b'{"samples": 1, "joules": 5}', "unknown unit(s) of work: 'joules'; the units are samples, steps, tokens"),
        (b"{}", 'the body must be a JSON object of units of work done since the last report, e.g. {"samples": 64}'),
        (b"[64]", 'the body must be a JSON object of units of work done since the last report, e.g. {"samples": 64}'),
        (b"", 'the body must be a JSON object of units of work done since the last report, e.g. {"samples": 64}'),
        (b"{samples: 1}", "the body is not valid JSON"),
    ],
)
def test_a_malformed_report_is_a_400_and_counts_nothing(api: RunAPI, run_id: str, body: bytes, error: str) -> None:
    assert request(api, "POST", f"/api/v1/runs/{run_id}/work", {"samples": 1})[0] == 200
    status, answer = request(api, "POST", f"/api/v1/runs/{run_id}/work", body)
    assert status == 400
    assert answer["error"].startswith(error)
    assert request(api, "GET", f"/api/v1/runs/{run_id}", b"")[1]["work_units"] == {"samples": 1}


def test_a_count_past_2_to_the_53_is_a_409_and_the_count_stays_exact(api: RunAPI, run_id: str) -> None:
    path = f"/api/v1/runs/{run_id}/work"
    assert request(api, "POST", path, {"samples": 2**53 - 1, "steps": 1})[0] == 200
    status, answer = request(api, "POST", path, {"steps": 5, "samples": 2})
    assert (status, answer["error"]) == (
        409,
        f"run {run_id} would count {2**53 + 1} samples, more than 2^53 (the most a metric holds exactly); "
        "report work in larger units",
    )
    assert request(api, "GET", f"/api/v1/runs/{run_id}", b"")[1]["work_units"] == {"samples": 2**53 - 1, "steps": 1}
    assert request(api, "POST", path, {"samples": 1})[1]["work_units"]["samples"] == 2**53


def test_another_user_s_run_is_unknown_to_the_caller_and_root_names_the_user(api: RunAPI, run_id: str) -> None:
    path = f"/api/v1/runs/{run_id}/work"
    assert request(api, "POST", path, {"samples": 1}, BOB) == (404, {"error": f"no run {run_id!r} on this exporter"})
    assert request(api, "POST", "/api/v1/runs", {"experiment": "bob's", "run_id": run_id}, BOB)[0] == 201
    assert request(api, "POST", path, {"samples": 5}, BOB)[1]["work_units"] == {"samples": 5}
    assert request(api, "POST", path, {"samples": 1}, ROOT)[0] == 409  # two users hold the id: root must say whose
    alice = request(api, "GET", f"/api/v1/runs/{run_id}", b"")[1]["user"]
    assert request(api, "POST", f"{path}?user={alice}", {"samples": 1}, ROOT)[1]["work_units"] == {"samples": 1}
    assert request(api, "GET", f"/api/v1/runs/{run_id}", b"")[1]["work_units"] == {"samples": 1}


def test_a_finished_run_counts_no_more_work_and_other_methods_are_refused(api: RunAPI, run_id: str) -> None:
    path = f"/api/v1/runs/{run_id}/work"
    assert request(api, "GET", path, b"")[0] == 405
    assert request(api, "POST", f"/api/v1/runs/{run_id}/stop", b"")[0] == 200
    status, answer = request(api, "POST", path, {"samples": 1})
    assert (status, answer["error"]) == (409, f"run {run_id} already finished; work is counted while a run is active")
    assert request(api, "POST", "/api/v1/runs/no-such-run/work", {"samples": 1})[0] == 404
    assert request(api, "POST", "/api/v1/runs/..%2Fx/work", {"samples": 1})[0] == 400
