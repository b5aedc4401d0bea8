"""The run store: runs in SQLite under the state directory, so a restart loses neither runs nor totals.

The schema and its migrations (columns added to stores made by earlier versions) live here and nowhere else. The
store is bounded: ``prune`` deletes finished runs past an age and past a number per user (exporter/limits.py).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from impact_exporter.paths import protect_store_files
from impact_exporter.run import ProcessRef, Run, RunKey


class RunStore:
    """Runs in SQLite (WAL mode): one row per run, keyed by its user and run id (RunKey), with its labels,
    processes and totals as JSON."""

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS runs (
            run_id TEXT NOT NULL,
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
            placement TEXT NOT NULL DEFAULT '{}',
            cgroup TEXT,
            cgroup_populated INTEGER NOT NULL DEFAULT 0,
            work_units TEXT NOT NULL DEFAULT '{}',
            PRIMARY KEY (uid, run_id)
        )
    """
    INDEXES = "CREATE INDEX IF NOT EXISTS runs_by_end_time ON runs (end_time)"
    COLUMNS = (
        "run_id, experiment, run_set, labels, uid, user, processes, start_time, end_time, energy_joules, "
        "cpu_seconds, last_seen, gpu_seconds, placement, cgroup, cgroup_populated, work_units"
    )
    PLACEHOLDERS = ",".join("?" * len(COLUMNS.split(",")))
    COLUMNS_ADDED = {  # stores made before a column existed get it
        "gpu_seconds": "REAL NOT NULL DEFAULT 0",
        "placement": "TEXT NOT NULL DEFAULT '{}'",
        "cgroup": "TEXT",
        "cgroup_populated": "INTEGER NOT NULL DEFAULT 0",
        "work_units": "TEXT NOT NULL DEFAULT '{}'",
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
        self._scope_run_ids_by_user()
        self._db.execute(self.INDEXES)

    def _scope_run_ids_by_user(self) -> None:
        """Key the table by (uid, run_id) where a store keyed it by run_id alone, when ids were one namespace for
        all users: SQLite cannot change a primary key in place, so the rows move to a new table."""
        key = [row[1] for row in sorted(self._db.execute("PRAGMA table_info(runs)"), key=lambda row: row[5]) if row[5]]
        if key == ["uid", "run_id"]:
            return
        self._db.execute("BEGIN")
        try:
            self._db.execute("ALTER TABLE runs RENAME TO runs_keyed_by_run_id")
            self._db.execute(self.SCHEMA)
            self._db.execute(f"INSERT INTO runs ({self.COLUMNS}) SELECT {self.COLUMNS} FROM runs_keyed_by_run_id")
            self._db.execute("DROP TABLE runs_keyed_by_run_id")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def insert(self, run: Run) -> None:
        """Store a new run; sqlite3.IntegrityError when its user already has a run of that id here, active or
        finished, even one the registry no longer keeps in memory."""
        self._write_many(f"INSERT INTO runs ({self.COLUMNS}) VALUES ({self.PLACEHOLDERS})", self._rows([run]))

    def save(self, runs: Iterable[Run]) -> None:
        """Insert or update runs, all in one transaction: a run's row is only ever its own (same user, same id)."""
        self._write_many(
            f"INSERT INTO runs ({self.COLUMNS}) VALUES ({self.PLACEHOLDERS}) "
            "ON CONFLICT (uid, run_id) DO UPDATE SET experiment = excluded.experiment, run_set = excluded.run_set, "
            "labels = excluded.labels, "
            "user = excluded.user, processes = excluded.processes, start_time = excluded.start_time, "
            "end_time = excluded.end_time, energy_joules = excluded.energy_joules, cpu_seconds = excluded.cpu_seconds, "
            "last_seen = excluded.last_seen, gpu_seconds = excluded.gpu_seconds, placement = excluded.placement, "
            "cgroup = excluded.cgroup, cgroup_populated = excluded.cgroup_populated, work_units = excluded.work_units",
            self._rows(runs),
        )

    def save_totals(self, runs: Iterable[Run]) -> None:
        """Update what a sample changes (totals, work reported since, last seen, end, whether a cgroup run's cgroup
        has held processes) of stored runs, all in one transaction: the exporter does this every second, so it
        writes no more than that."""
        self._write_many(
            "UPDATE runs SET energy_joules = ?, cpu_seconds = ?, gpu_seconds = ?, work_units = ?, last_seen = ?, "
            "end_time = ?, cgroup_populated = ? WHERE uid = ? AND run_id = ?",
            [
                (
                    json.dumps(dict(run.energy_joules)),
                    run.cpu_seconds,
                    run.gpu_seconds,
                    json.dumps(dict(run.work_units)),
                    run.last_seen,
                    run.end_time,
                    int(run.cgroup_populated),
                    run.uid,
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
                run.cgroup,
                int(run.cgroup_populated),
                json.dumps(dict(run.work_units)),
            )
            for run in runs
        ]

    def load(self) -> list[Run]:
        """Every stored run, oldest first."""
        return list(self._runs(f"SELECT {self.COLUMNS} FROM runs ORDER BY start_time"))

    def active(self) -> Iterator[Run]:
        """The active runs, oldest first, read one at a time: a store may hold more than memory should."""
        return self._runs(f"SELECT {self.COLUMNS} FROM runs WHERE end_time IS NULL ORDER BY start_time")

    def finished_since(self, moment: float) -> Iterator[Run]:
        """The runs that ended at ``moment`` or later, the latest first, read one at a time."""
        return self._runs(
            f"SELECT {self.COLUMNS} FROM runs WHERE end_time >= ? ORDER BY end_time DESC, start_time DESC", (moment,)
        )

    def _runs(self, query: str, parameters: tuple[object, ...] = ()) -> Iterator[Run]:
        for row in self._db.execute(query, parameters):
            yield Run(
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
                cgroup=row[14],
                cgroup_populated=bool(row[15]),
                work_units=json.loads(row[16]),
            )

    def end(self, ends: Iterable[tuple[RunKey, float]]) -> None:
        """Mark runs finished: (run key, end time) pairs, all in one transaction."""
        self._write_many(
            "UPDATE runs SET end_time = ? WHERE uid = ? AND run_id = ?", [(end, *key) for key, end in ends]
        )

    def prune(self, finished_before: float, finished_per_user: int) -> int:
        """Delete runs that ended before ``finished_before``, and each user's finished runs beyond the latest
        ``finished_per_user`` (root's are kept); the number deleted. Active runs are never deleted."""
        self._db.execute("BEGIN")
        try:
            old = self._db.execute("DELETE FROM runs WHERE end_time < ?", (finished_before,)).rowcount
            surplus = self._db.execute(
                "DELETE FROM runs WHERE rowid IN (SELECT rowid FROM (SELECT rowid, ROW_NUMBER() OVER "
                "(PARTITION BY uid ORDER BY end_time DESC) AS latest FROM runs "
                "WHERE end_time IS NOT NULL AND uid != 0) WHERE latest > ?)",
                (finished_per_user,),
            ).rowcount
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return old + surplus

    def close(self) -> None:
        self._db.close()


def open_store(state_dir: Path) -> tuple[RunStore | None, str | None]:
    """The store under ``state_dir``, or None and the reason it cannot be used."""
    try:
        return RunStore(state_dir / "runs.sqlite"), None
    except (OSError, sqlite3.Error) as error:
        return None, f"cannot store runs in {state_dir}: {error}; make it writable or choose another --state-dir"
