"""The limits piece by piece: their flags and defaults, the per-user token bucket on a fake clock, the registry's
429s (root exempt from per-user limits, bound by the total), the label rules with limits of an operator's choosing,
and the store's pruning on a real SQLite file. tests/reliability/test_limits.py floods a real exporter."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from impact_exporter.api import Caller, RunAPI, parse_start_request, status_of
from impact_exporter.cli import parse_settings
from impact_exporter.limits import DEFAULT_LIMITS, FLAGS, Limits, RegistrationRate, number_text
from impact_exporter.run import InvalidRequest, ProcessRef, Run, StartRequest, TooManyRequests
from impact_exporter.runs import RunRegistry
from impact_exporter.sampler import Snapshot
from impact_exporter.store import RunStore
from tests.fakes.procfs import FakeProc
from tests.servers import REPO_ROOT

ALICE, BOB = 40001, 40002  # uids without an account, so they are named by number
PIDS = {0: 4000, ALICE: 4001, BOB: 4002}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_help_gives_every_limit_with_its_default() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "impact_exporter", "--help"], capture_output=True, text=True, timeout=20, cwd=REPO_ROOT
    )
    text = " ".join(result.stdout.split())
    for name, option in FLAGS.items():
        default = "30d" if name == "store_retain_finished_seconds" else number_text(getattr(DEFAULT_LIMITS, name))
        own_help = r"(?:(?! --(?:limits|store)\.[a-z-]+ (?:N|DURATION) ).)*?"  # up to the next limit's flag
        assert re.search(rf"{re.escape(option)} (?:N|DURATION) {own_help}\(default: {re.escape(default)}\)", text)


def test_flags_set_the_limits_and_a_limit_that_cannot_work_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    settings = parse_settings(["--limits.active-runs-per-user=3", "--store.retain-finished=1h30m"])
    assert settings.limits == Limits(active_runs_per_user=3, store_retain_finished_seconds=5400.0)
    assert parse_settings([]).limits == DEFAULT_LIMITS
    for bad, message in [
        ("--limits.labels=0", "--limits.labels=0: must be a positive number"),
        ("--limits.registrations-per-second=nan", "--limits.registrations-per-second=nan: must be a positive number"),
        ("--store.retain-finished=soon", "invalid duration 'soon'"),
    ]:
        with pytest.raises(SystemExit) as exited:
            parse_settings([bad])
        assert exited.value.code == 2
        assert message in capsys.readouterr().err


def test_the_registration_rate_allows_a_burst_then_the_rate_per_user_and_root_always() -> None:
    clock = Clock()
    rate = RegistrationRate(Limits(registrations_per_second=2, registration_burst=3), clock)
    assert [rate.wait_seconds(ALICE) for _ in range(4)] == [0, 0, 0, 0.5]
    assert rate.wait_seconds(BOB) == 0  # each user has a bucket of their own
    assert all(rate.wait_seconds(0) == 0 for _ in range(100))
    clock.now += 0.5  # one start's worth
    assert [rate.wait_seconds(ALICE), rate.wait_seconds(ALICE)] == [0, 0.5]
    clock.now += 60  # a full bucket holds the burst, no more
    assert [rate.wait_seconds(ALICE) for _ in range(4)] == [0, 0, 0, 0.5]


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    proc = FakeProc(tmp_path / "proc")
    for uid, pid in PIDS.items():
        proc.spawn(pid, 1, start=100, uid=uid)
    return proc


@dataclass
class Starter:
    """Starts (or joins) runs, each new run on a process of its own: a process counts in one run at a time."""

    proc: FakeProc
    registry: RunRegistry
    pids: dict[tuple[int, str], int] = field(default_factory=dict)

    def __call__(self, uid: int, run_id: str) -> Run:
        pid = self.pids.get((uid, run_id))
        if pid is None:
            pid = self.pids[(uid, run_id)] = 5000 + len(self.pids)
            self.proc.spawn(pid, 1, start=100, uid=uid)
        return self.registry.start(StartRequest("e", run_id=run_id, pid=pid), uid, pid)[0]


def test_the_registry_refuses_a_users_run_over_the_limit_with_429_root_only_over_the_total(
    proc: FakeProc, tmp_path: Path
) -> None:
    limits = Limits(active_runs_per_user=2, runs=5)
    registry = RunRegistry(proc.procfs(), RunStore(tmp_path / "runs.sqlite"), limits=limits)
    start = Starter(proc, registry)
    start(ALICE, "a1")
    start(ALICE, "a2")
    start(ALICE, "a2")  # joining a run is not a new run
    with pytest.raises(TooManyRequests, match=r"user 40001 has 2 active runs, .*--limits.active-runs-per-user=2") as e:
        start(ALICE, "a3")
    assert status_of(e.value) == 429
    start(BOB, "b1")  # another user is not held back
    start(0, "r1")
    start(0, "r2")  # root is over the per-user limit
    with pytest.raises(TooManyRequests, match=r"holds 5 runs, its limit \(--limits.runs=5\)"):
        start(0, "r3")
    registry.stop("a1", ALICE)
    with pytest.raises(TooManyRequests, match=r"--limits.runs=5"):  # a finished run is held until it leaves
        start(ALICE, "a3")


def test_a_users_finished_runs_beyond_the_retained_limit_leave_oldest_first(proc: FakeProc, tmp_path: Path) -> None:
    clock = Clock()
    limits = Limits(retained_runs_per_user=2)
    registry = RunRegistry(proc.procfs(), RunStore(tmp_path / "runs.sqlite"), clock=clock, limits=limits)
    start = Starter(proc, registry)
    for uid, name in ((ALICE, "a"), (0, "r")):
        for i in range(4):
            start(uid, f"{name}{i}")
            clock.now += 1
            registry.stop(f"{name}{i}", uid)
    registry.settle(clock.now)
    assert sorted(run.run_id for run in registry.runs()) == ["a2", "a3", "r0", "r1", "r2", "r3"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"labels": {"a": "1", "b": "2", "c": "3"}}, "at most 2 labels are allowed, got 3 (--limits.labels=2)"),
        ({"labels": {"abcdefghi": "1"}}, "is longer than 8 characters (--limits.label-name-length=8)"),
        ({"set": "s" * 11}, "set is longer than 10 characters (--limits.label-value-length=10)"),
        ({"labels": {"a": "é" * 10}}, "take 22 bytes, more than 20 (--limits.label-bytes=20)"),  # e, a, 10 x 2 bytes
        ({"run_id": "r" * 7}, "run_id must be 1 to 6 characters (--limits.run-id-length=6)"),
    ],
)
def test_label_and_run_id_limits_of_the_operators_choosing_are_400s_naming_the_flag(body: dict, message: str) -> None:
    limits = Limits(labels=2, label_name_length=8, label_value_length=10, label_bytes=20, run_id_length=6)
    with pytest.raises(InvalidRequest) as refused:
        parse_start_request({"experiment": "e", **body}, limits)
    assert message in str(refused.value)
    assert status_of(refused.value) == 400


def test_the_api_answers_a_refusal_for_the_rate_with_429_and_the_flag(proc: FakeProc, tmp_path: Path) -> None:
    registry = RunRegistry(proc.procfs(), RunStore(tmp_path / "runs.sqlite"), limits=Limits(registration_burst=1))
    api = RunAPI(registry, Snapshot)
    body = b'{"experiment": "e"}'
    first, second = (api.handle("POST", "/api/v1/runs", body, Caller(ALICE, PIDS[ALICE])) for _ in range(2))
    assert first.status == 201
    assert second.status == 429
    assert "--limits.registrations-per-second=10 (bursts of --limits.registration-burst=1)" in second.body["error"]


def stored_run(run_id: str, uid: int, end_time: float | None) -> Run:
    return Run(run_id, "e", "", {}, uid, str(uid), (ProcessRef(1, 1),), start_time=0.0, end_time=end_time)


def test_pruning_deletes_finished_runs_past_the_age_and_past_the_number_per_user_but_never_active_ones(
    tmp_path: Path,
) -> None:
    store = RunStore(tmp_path / "runs.sqlite")
    store.save(
        [stored_run(f"alice-{i}", ALICE, 100.0 + i) for i in range(6)]
        + [stored_run(f"root-{i}", 0, 100.0 + i) for i in range(6)]
        + [stored_run("old", BOB, 10.0), stored_run("active", BOB, None), stored_run("new", BOB, 105.0)]
    )
    assert store.prune(finished_before=50.0, finished_per_user=3) == 4  # "old", and alice's 3 earliest
    assert sorted(run.run_id for run in store.load()) == sorted(
        ["alice-3", "alice-4", "alice-5", "active", "new", *(f"root-{i}" for i in range(6))]
    )
    since = list(store.finished_since(104.0))  # what a restart brings back to /metrics, latest first
    assert {run.run_id for run in since} == {"alice-5", "root-5", "alice-4", "root-4", "new"}
    assert [run.end_time for run in since] == [105.0, 105.0, 105.0, 104.0, 104.0]
    store.close()
