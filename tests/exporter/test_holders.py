"""A process counts in one run at a time: the registry refuses a process that another active run holds (as its root,
a descendant of its root, or an ancestor of its root) with a 409 that names the run, over a fake procfs tree."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from impact_exporter.api import status_of
from impact_exporter.ledger import Ledger
from impact_exporter.run import Conflict, RunKey, StartRequest
from impact_exporter.runs import RunRegistry
from impact_exporter.sources.procfs import ProcFS
from impact_exporter.store import RunStore
from tests.fakes.procfs import FakeProc

USER = 1000
OTHER_USER = 1001
LAUNCHER, ROOT, CHILD, GRANDCHILD, STRANGER = 100, 200, 201, 202, 300


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    """A launcher with one child (ROOT), which has a child that has a child; and an unrelated process."""
    proc = FakeProc(tmp_path / "proc")
    proc.spawn(LAUNCHER, 1, start=10, uid=USER)
    proc.spawn(ROOT, LAUNCHER, start=20, uid=USER)
    proc.spawn(CHILD, ROOT, start=21, uid=USER)
    proc.spawn(GRANDCHILD, CHILD, start=22, uid=USER)
    proc.spawn(STRANGER, 1, start=30, uid=USER)
    return proc


@pytest.fixture
def registry(tmp_path: Path, proc: FakeProc) -> RunRegistry:
    return RunRegistry(proc.procfs(), RunStore(tmp_path / "state" / "runs.sqlite"), ledger=Ledger())


def start(registry: RunRegistry, run_id: str, pid: int, caller: int = USER, experiment: str = "train") -> bool:
    """Register ``pid`` as (or into) run ``run_id`` for ``caller``; True when the run is new."""
    return registry.start(StartRequest(experiment, run_id=run_id, pid=pid), caller, None)[1]


@pytest.mark.parametrize(
    ("pid", "relation"),
    [
        (ROOT, "process 200 is a root of active run first"),
        (CHILD, "process 201 descends from process 200, a root of active run first"),
        (GRANDCHILD, "process 202 descends from process 200, a root of active run first"),
        (LAUNCHER, "process 100 has a descendant, process 200, that is a root of active run first"),
    ],
)
def test_a_process_an_active_run_holds_above_or_below_cannot_start_another_run(
    registry: RunRegistry, pid: int, relation: str
) -> None:
    assert start(registry, "first", ROOT)
    with pytest.raises(Conflict) as refused:
        start(registry, "second", pid)
    assert status_of(refused.value) == 409
    assert str(refused.value).startswith(relation), refused.value
    assert "join that run (run_id 'first')" in str(refused.value)
    assert [run.run_id for run in registry.list(USER)] == ["first"]


def test_joining_the_run_that_holds_the_process_still_works(registry: RunRegistry) -> None:
    assert start(registry, "job", ROOT)
    assert not start(registry, "job", ROOT), "the same process again: the run as it was"
    assert not start(registry, "job", CHILD), "a descendant of its root joins the run that holds it"
    assert registry.get("job", USER).pids == (ROOT, CHILD)
    assert start(registry, "elsewhere", STRANGER), "a process outside every run starts its own"


def test_a_finished_run_releases_its_processes(registry: RunRegistry) -> None:
    start(registry, "first", ROOT)
    registry.stop("first", USER)
    assert start(registry, "second", CHILD)


def test_another_users_run_is_refused_without_its_name(registry: RunRegistry, proc: FakeProc) -> None:
    proc.update(STRANGER, uid=OTHER_USER)
    proc.spawn(301, STRANGER, start=31, uid=USER)  # a process of USER under OTHER_USER's (a setuid helper, say)
    start(registry, "theirs-7", STRANGER, caller=OTHER_USER)
    with pytest.raises(Conflict) as refused:
        start(registry, "mine", 301)
    assert "process 301 descends from process 300, a root of another user's active run" in str(refused.value)
    assert "theirs-7" not in str(refused.value)


@pytest.fixture
def tree_of_250() -> Iterator[tuple[int, list[int]]]:
    """A real shell with 250 sleeping children: (its pid, theirs)."""
    shell = subprocess.Popen(
        ["sh", "-c", "for i in $(seq 250); do sleep 600 & done; echo started; wait"], stdout=subprocess.PIPE
    )
    assert shell.stdout is not None and shell.stdout.readline() == b"started\n"
    children = [int(pid) for pid in Path(f"/proc/{shell.pid}/task/{shell.pid}/children").read_text().split()]
    yield shell.pid, children
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    shell.wait()


def test_a_tree_of_250_children_can_be_the_root_of_one_run_only(
    tmp_path: Path, tree_of_250: tuple[int, list[int]]
) -> None:
    """300 runs over one tree would make each sample walk it 300 times; now one run holds it, walked once."""
    shell, children = tree_of_250
    assert len(children) == 250
    ledger = Ledger()
    registry = RunRegistry(ProcFS(Path("/proc")), RunStore(tmp_path / "runs.sqlite"), ledger=ledger)
    start(registry, "run-0", shell, caller=0)
    refused = []
    for number, pid in enumerate([shell] * 49 + children, start=1):  # 300 registrations in all
        with pytest.raises(Conflict) as conflict:
            start(registry, f"run-{number}", pid, caller=0)
        refused.append(str(conflict.value))
    assert len(refused) == 299 and all("active run run-0" in message for message in refused)
    assert dict(ledger.roots()) == {RunKey(0, "run-0"): (shell,)}


def test_a_store_with_one_process_in_several_runs_resumes_it_in_the_earliest_only(
    tmp_path: Path, proc: FakeProc, caplog: pytest.LogCaptureFixture
) -> None:
    """A store written before a process counted once (or by hand) can hold overlapping runs."""
    first = RunRegistry(proc.procfs(), RunStore(tmp_path / "a.sqlite"), ledger=Ledger())
    start(first, "early", ROOT)
    start(first, "stranger", STRANGER)
    start(RunRegistry(proc.procfs(), RunStore(tmp_path / "b.sqlite"), ledger=Ledger()), "late", CHILD)
    start(RunRegistry(proc.procfs(), RunStore(tmp_path / "c.sqlite"), ledger=Ledger()), "later", ROOT)
    merged = RunStore(tmp_path / "merged.sqlite")
    merged.save([run for name in "abc" for run in RunStore(tmp_path / f"{name}.sqlite").load()])  # oldest first

    caplog.set_level(logging.INFO, logger="impact_exporter.runs")
    ledger = Ledger()
    resumed = RunRegistry(proc.procfs(), merged, ledger=ledger)
    active = {run.run_id: run.pids for run in resumed.list(0) if run.active}
    assert active == {"early": (ROOT,), "stranger": (STRANGER,)}
    assert dict(ledger.roots()) == {RunKey(USER, "early"): (ROOT,), RunKey(USER, "stranger"): (STRANGER,)}
    assert (
        "run late: process 201 descends from process 200, a root of run early, so it counts there only" in caplog.text
    )
