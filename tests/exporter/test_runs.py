"""The run registry when its SQLite store stops taking writes, as on a full disk: runs go on being measured in
memory, the failure is logged once, new runs are refused with the fix, the store catches up once writes work
again, and shutdown closes it without a traceback. (tests/reliability/test_faults.py fills a real disk.)"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from impact_exporter.api import status_of
from impact_exporter.groups import GroupUsage
from impact_exporter.ledger import Ledger
from impact_exporter.run import RunKey, StartRequest, StoreUnavailable
from impact_exporter.runs import RunRegistry
from impact_exporter.store import RunStore
from tests.fakes.procfs import FakeProc

PID = 4242
OTHER_PID = 4343  # a process outside PID's tree: a process counts in one run at a time


def sample(registry: RunRegistry, ledger: Ledger, run_id: str, package_joules: float, processes: int = 1) -> None:
    """Add an interval to the ledger after which the run's group has used ``package_joules`` of package energy
    (and as many CPU seconds) since it was tracked, and settle the runs; with no ``processes`` left the run ends."""
    key = RunKey(0, run_id)  # the runs are root's
    totals = ledger.totals().get(key)
    used = package_joules - (totals.energy_joules.get("package", 0.0) if totals is not None else 0.0)
    ledger.measure(("package",))
    usage = GroupUsage(cpu_seconds=used, memory_bytes=0, processes=processes, root_alive=processes > 0)
    ledger.add_usage({key: usage})
    ledger.add_energy({key: {"package": used}})
    registry.settle(1000.0 + package_joules)


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "state" / "runs.sqlite")


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture
def registry(tmp_path: Path, store: RunStore, ledger: Ledger) -> RunRegistry:
    proc = FakeProc(tmp_path / "proc")
    proc.spawn(PID, 1, start=100, uid=0)
    proc.spawn(OTHER_PID, 1, start=200, uid=0)
    return RunRegistry(proc.procfs(), store, ledger=ledger)


def refuse_writes(store: RunStore, refused: bool = True) -> None:
    """SQLite's own switch that fails every write on the store's connection, as a full disk does."""
    store._db.execute(f"PRAGMA query_only = {int(refused)}")


def stored_cpu_joules(store: RunStore) -> dict[str, float]:
    """Each run's CPU energy as another connection reads it from the store's file."""
    return {run.run_id: run.energy_joules.get("cpu", 0.0) for run in RunStore(store.path).load()}


def test_a_store_that_refuses_writes_keeps_runs_in_memory_logs_once_and_catches_up(
    registry: RunRegistry, store: RunStore, ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="impact_exporter.runs")
    run, _ = registry.start(StartRequest("train", run_id="train", pid=PID), 0, None)
    sample(registry, ledger, "train", 1.0)
    refuse_writes(store)

    with pytest.raises(StoreUnavailable, match=r"free space there or choose another --state-dir") as refused:
        registry.start(StartRequest("eval", run_id="eval", pid=OTHER_PID), 0, None)
    assert status_of(refused.value) == 503  # the API answers 503
    for joules in (2.0, 3.0, 4.0):
        sample(registry, ledger, "train", joules)
    assert registry.get("train", 0).energy_joules["cpu"] == 4.0
    assert stored_cpu_joules(store) == {"train": 1.0}, "the store keeps the last totals it could save"
    assert sum("cannot persist run totals" in r.message for r in caplog.records) == 1

    refuse_writes(store, False)
    sample(registry, ledger, "train", 5.0)
    assert stored_cpu_joules(store) == {"train": 5.0}
    assert "run totals are persisted again" in caplog.text


def test_shutdown_with_a_store_that_refuses_writes_closes_it_and_says_what_is_lost(
    registry: RunRegistry, store: RunStore, ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    registry.start(StartRequest("train", run_id="train", pid=PID), 0, None)
    sample(registry, ledger, "train", 1.0)
    refuse_writes(store)
    sample(registry, ledger, "train", 2.0)

    registry.close()
    assert "run totals since the last stored sample are lost" in caplog.text
    [stored] = RunStore(store.path).load()
    assert (stored.energy_joules["cpu"], stored.end_time) == (1.0, None)


def test_a_run_that_ends_while_the_store_refuses_writes_is_stored_ended_once_writes_work(
    registry: RunRegistry, store: RunStore, ledger: Ledger
) -> None:
    registry.start(StartRequest("train", run_id="train", pid=PID), 0, None)
    sample(registry, ledger, "train", 1.0)
    refuse_writes(store)
    sample(registry, ledger, "train", 2.0, processes=0)
    assert registry.get("train", 0).end_time == 1001.0, "ended at the last sample that saw its processes"

    refuse_writes(store, False)
    sample(registry, ledger, "other", 3.0)  # no active run changes: only the catch-up stores anything
    [stored] = RunStore(store.path).load()
    assert (stored.end_time, stored.energy_joules["cpu"]) == (1001.0, 2.0)


def test_each_sample_stores_the_totals_and_end_and_keeps_what_was_registered(
    registry: RunRegistry, store: RunStore, ledger: Ledger
) -> None:
    started, _ = registry.start(StartRequest("train", set="a", labels={"seed": "1"}, run_id="train", pid=PID), 0, None)
    sample(registry, ledger, "train", 2.0)
    sample(registry, ledger, "train", 3.0, processes=0)
    [stored] = RunStore(store.path).load()
    [current] = registry.runs()
    assert stored == current
    assert (stored.energy_joules["cpu"], stored.cpu_seconds, stored.end_time) == (3.0, 3.0, 1002.0)
    assert (stored.labels, stored.set, stored.processes) == ({"seed": "1"}, "a", started.processes)


def test_a_failed_save_leaves_the_store_as_it_was(registry: RunRegistry, store: RunStore, ledger: Ledger) -> None:
    registry.start(StartRequest("train", run_id="train", pid=PID), 0, None)
    sample(registry, ledger, "train", 1.0)
    before = RunStore(store.path).load()
    refuse_writes(store)
    with pytest.raises(sqlite3.Error):
        store.save_totals(registry.runs())
    assert not store._db.in_transaction
    refuse_writes(store, False)
    assert RunStore(store.path).load() == before


OLD_SCHEMA = """
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY, experiment TEXT NOT NULL, run_set TEXT NOT NULL, labels TEXT NOT NULL,
        uid INTEGER NOT NULL, user TEXT NOT NULL, processes TEXT NOT NULL, start_time REAL NOT NULL, end_time REAL,
        energy_joules TEXT NOT NULL, cpu_seconds REAL NOT NULL, last_seen REAL
    )
"""


def test_a_store_keyed_by_run_id_alone_is_migrated_to_user_scoped_ids_keeping_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    with sqlite3.connect(path) as old:
        old.execute(OLD_SCHEMA)
        old.execute(
            "INSERT INTO runs VALUES ('job-1', 'train', '', '{}', 1000, 'alice', '[[4242, 100]]', 10.0, 20.0, "
            "'{\"cpu\": 12.5}', 3.0, 20.0)"
        )
    store = RunStore(path)
    [kept] = store.load()
    assert (kept.key, kept.user, kept.energy_joules, kept.end_time) == (
        RunKey(1000, "job-1"),
        "alice",
        {"cpu": 12.5},
        20.0,
    )
    store.insert(replace(kept, uid=1001, user="bob", end_time=None))  # another user's job-1
    with pytest.raises(sqlite3.IntegrityError):
        store.insert(replace(kept, end_time=None))  # alice's job-1 again: refused, the finished row stays
    assert sorted((run.key, run.end_time) for run in RunStore(path).load()) == [
        (RunKey(1000, "job-1"), 20.0),
        (RunKey(1001, "job-1"), None),
    ]
