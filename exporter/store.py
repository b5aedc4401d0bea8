"""The run store: runs in SQLite under the state directory, so a restart loses neither runs nor totals.

The schema and its migrations (columns added to stores made by earlier versions) live here and nowhere else.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from impact_exporter.paths import protect_store_files
from impact_exporter.run import ProcessRef, Run


class RunStore:
    """Runs in SQLite (WAL mode): one row per run, with its labels, processes and totals as JSON."""

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS runs (
            run_id TEXT PRIMARY KEY,
            experiment TEXT NOT NULL,
            run_set TEXT NOT NULL,
            labels TEXT NOT NULL,
            uid INTEGER NOT NULL,
            user TEXT NOT NULL,
            processes TEXT NOT NULL,
            start_time REAL NOT NULL,
            end_time REAL,
            energy_joules TEXT NOT NULL,
            cpu_seconds REAL NOT NULL,
            last_seen REAL,
            gpu_seconds REAL NOT NULL DEFAULT 0,
            placement TEXT NOT NULL DEFAULT '{}'
        )
    """
    COLUMNS_ADDED = {  # stores made before a column existed get it
        "gpu_seconds": "REAL NOT NULL DEFAULT 0",
        "placement": "TEXT NOT NULL DEFAULT '{}'",
    }

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        protect_store_files(path)  # raises UnsafePath for a link or another user's file
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(self.SCHEMA)
        present = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
        for column, definition in self.COLUMNS_ADDED.items():
            if column not in present:
                self._db.execute(f"ALTER TABLE runs ADD COLUMN {column} {definition}")

    def save(self, runs: Iterable[Run]) -> None:
        """Insert or update runs, all in one transaction."""
        self._write_many(
            "INSERT OR REPLACE INTO runs (run_id, experiment, run_set, labels, uid, user, processes, start_time, "
            "end_time, energy_joules, cpu_seconds, last_seen, gpu_seconds, placement) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            self._rows(runs),
        )

    def save_totals(self, runs: Iterable[Run]) -> None:
        """Update what a sample changes (totals, last seen, end) of stored runs, all in one transaction: the
        exporter does this every second, so it writes no more than that."""
        self._write_many(
            "UPDATE runs SET energy_joules = ?, cpu_seconds = ?, gpu_seconds = ?, last_seen = ?, end_time = ? "
            "WHERE run_id = ?",
            [
                (
                    json.dumps(dict(run.energy_joules)),
                    run.cpu_seconds,
                    run.gpu_seconds,
                    run.last_seen,
                    run.end_time,
                    run.run_id,
                )
                for run in runs
            ],
        )

    def _write_many(self, statement: str, rows: list[tuple[object, ...]]) -> None:
        self._db.execute("BEGIN")  # autocommit connection: without it, each row would be its own transaction
        try:
            self._db.executemany(statement, rows)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # SQLite may already have rolled back (a full disk)
                self._db.execute("ROLLBACK")
            raise

    @staticmethod
    def _rows(runs: Iterable[Run]) -> list[tuple[object, ...]]:
        return [
            (
                run.run_id,
                run.experiment,
                run.set,
                json.dumps(dict(run.labels)),
                run.uid,
                run.user,
                json.dumps([[p.pid, p.start_ticks] for p in run.processes]),
                run.start_time,
                run.end_time,
                json.dumps(dict(run.energy_joules)),
                run.cpu_seconds,
                run.last_seen,
                run.gpu_seconds,
                json.dumps(dict(run.placement)),
            )
            for run in runs
        ]

    def load(self) -> list[Run]:
        """Every stored run, oldest first."""
        rows = self._db.execute(
            "SELECT run_id, experiment, run_set, labels, uid, user, processes, start_time, end_time, energy_joules, "
            "cpu_seconds, last_seen, gpu_seconds, placement FROM runs ORDER BY start_time"
        ).fetchall()
        return [
            Run(
                run_id=row[0],
                experiment=row[1],
                set=row[2],
                labels=json.loads(row[3]),
                uid=row[4],
                user=row[5],
                processes=tuple(ProcessRef(pid, start) for pid, start in json.loads(row[6])),
                start_time=row[7],
                end_time=row[8],
                energy_joules=json.loads(row[9]),
                cpu_seconds=row[10],
                last_seen=row[11],
                gpu_seconds=row[12],
                placement=json.loads(row[13]),
            )
            for row in rows
        ]

    def close(self) -> None:
        self._db.close()


def open_store(state_dir: Path) -> tuple[RunStore | None, str | None]:
    """The store under ``state_dir``, or None and the reason it cannot be used."""
    try:
        return RunStore(state_dir / "runs.sqlite"), None
    except (OSError, sqlite3.Error) as error:
        return None, f"cannot store runs in {state_dir}: {error}; make it writable or choose another --state-dir"
