"""The run registry: experiment runs marked through the API, their energy, and their SQLite store.

A run is a process group (one or more root PIDs and their descendants, see exporter/sources/procfs.py) with
descriptive labels. The sampler measures the groups; the registry turns group totals into per-run totals that
survive exporter restarts, stops runs whose processes are gone, and keeps finished runs visible for a while.
"""

from __future__ import annotations

import json
import logging
import pwd
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from exporter.kubernetes import kubernetes_labels
from exporter.sampler import Snapshot
from exporter.scheduling import Pause, no_pause
from exporter.sources import SourceError
from exporter.sources.procfs import ProcFS

log = logging.getLogger(__name__)

COMPONENT_DOMAINS: Mapping[str, str] = MappingProxyType({"cpu": "package", "dram": "dram", "gpu": "gpu"})
"""Per-run energy components and the RAPL domain each one is the attributed share of."""

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
RESERVED_LABELS = frozenset(
    {"job", "instance", "run_id", "experiment", "set", "user", "component", "pod_uid", "container_id"}
)
MAX_LABELS = 32
MAX_VALUE_LENGTH = 256


class RunError(Exception):
    """A run request that cannot be served; ``status`` is the HTTP status the API answers with."""

    status = 400


class InvalidRequest(RunError):
    status = 400


class Forbidden(RunError):
    status = 403


class UnknownRun(RunError):
    status = 404


class Conflict(RunError):
    status = 409


class StoreUnavailable(RunError):
    status = 503


@dataclass(frozen=True)
class ProcessRef:
    """A root process of a run, with its start time so that a reused PID is never mistaken for it."""

    pid: int
    start_ticks: int


@dataclass(frozen=True)
class Run:
    """One experiment run on this node: what it is, whose it is, and what it used so far."""

    run_id: str
    experiment: str
    set: str
    labels: Mapping[str, str]
    uid: int
    user: str
    processes: tuple[ProcessRef, ...]
    start_time: float
    end_time: float | None = None
    energy_joules: Mapping[str, float] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    last_seen: float | None = None
    gpu_seconds: float = 0.0
    placement: Mapping[str, str] = field(default_factory=dict)  # pod_uid, container_id (exporter/kubernetes.py)

    @property
    def active(self) -> bool:
        return self.end_time is None

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(process.pid for process in self.processes)


@dataclass(frozen=True)
class StartRequest:
    """A validated ``POST /api/v1/runs`` body."""

    experiment: str
    set: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    pid: int | None = None
    run_id: str | None = None


def validate_labels(labels: object) -> dict[str, str]:
    """The labels as a plain dict, or InvalidRequest saying which rule a label breaks."""
    if not isinstance(labels, dict):
        raise InvalidRequest("labels must be an object of string values")
    if len(labels) > MAX_LABELS:
        raise InvalidRequest(f"at most {MAX_LABELS} labels are allowed, got {len(labels)}")
    for name, value in labels.items():
        if not LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise InvalidRequest(
                f"label name {name!r} is not a valid Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not __*)"
            )
        if name in RESERVED_LABELS:
            raise InvalidRequest(f"label name {name!r} is reserved: {', '.join(sorted(RESERVED_LABELS))}")
        validate_text(f"label {name}", value)
    return dict(labels)


def validate_text(what: str, value: object, required: bool = False) -> str:
    """A string field of at most MAX_VALUE_LENGTH characters."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} must be a string")
    if required and not value:
        raise InvalidRequest(f"{what} must not be empty")
    if len(value) > MAX_VALUE_LENGTH:
        raise InvalidRequest(f"{what} is longer than {MAX_VALUE_LENGTH} characters")
    try:
        value.encode()  # JSON may escape a lone surrogate, which neither SQLite nor /metrics can encode
    except UnicodeEncodeError:
        raise InvalidRequest(f"{what} is not valid Unicode: it holds a lone surrogate (\\ud800 to \\udfff)") from None
    return value


def validate_run_id(value: object) -> str:
    if not isinstance(value, str) or not RUN_ID.fullmatch(value):
        raise InvalidRequest(
            "run_id must be 1 to 128 characters of letters, digits, '.', '_', ':' or '-', starting with a "
            "letter or digit"
        )
    return value


def parse_start_request(body: object) -> StartRequest:
    """Validate a decoded JSON body of ``POST /api/v1/runs``."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    unknown = set(body) - {"experiment", "set", "labels", "pid", "run_id"}
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    if "experiment" not in body:
        raise InvalidRequest("experiment is required")
    pid = body.get("pid")
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**22):
        raise InvalidRequest("pid must be a positive integer process id")
    run_id = body.get("run_id")
    return StartRequest(
        experiment=validate_text("experiment", body["experiment"], required=True),
        set=validate_text("set", body.get("set", "")),
        labels=validate_labels(body.get("labels", {})),
        pid=pid,
        run_id=None if run_id is None else validate_run_id(run_id),
    )


class RunStore:
    """Runs in SQLite (WAL mode) under the state directory, so a restart loses neither runs nor totals."""

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
                (json.dumps(dict(run.energy_joules)), run.cpu_seconds, run.gpu_seconds, run.last_seen, run.end_time,
                 run.run_id)
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
                run.run_id, run.experiment, run.set, json.dumps(dict(run.labels)), run.uid, run.user,
                json.dumps([[p.pid, p.start_ticks] for p in run.processes]), run.start_time, run.end_time,
                json.dumps(dict(run.energy_joules)), run.cpu_seconds, run.last_seen, run.gpu_seconds,
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
                run_id=row[0], experiment=row[1], set=row[2], labels=json.loads(row[3]), uid=row[4], user=row[5],
                processes=tuple(ProcessRef(pid, start) for pid, start in json.loads(row[6])),
                start_time=row[7], end_time=row[8], energy_joules=json.loads(row[9]), cpu_seconds=row[10],
                last_seen=row[11], gpu_seconds=row[12], placement=json.loads(row[13]),
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


def user_name(uid: int) -> str:
    """The login name of ``uid``, or the number itself when the system has no such user."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class RunRegistry:
    """Active and recently finished runs: the API changes them, the sampler measures them, scrapes read them."""

    def __init__(
        self,
        procfs: ProcFS,
        store: RunStore | None,
        store_error: str | None = None,
        retain_finished_seconds: float = 900.0,
        clock: Callable[[], float] = time.time,
        sample_now: Callable[[], Snapshot] | None = None,
        pause: Pause = no_pause,
    ) -> None:
        """``pause`` is called between runs while a sample's totals are taken in (exporter/scheduling.py)."""
        self._procfs = procfs
        self._pause = pause
        self._store = store
        self._store_error = store_error
        self._persist_failure: str | None = None  # why the last sample's totals could not be stored
        self._retain = retain_finished_seconds
        self._clock = clock
        self._sample_now = sample_now
        self._track_now: Callable[[str, tuple[int, ...]], None] | None = None
        self._lock = threading.RLock()
        self._runs: dict[str, Run] = {}
        self._exposed: tuple[Run, ...] = ()  # _runs as of its last change, for scrapes (see runs())
        self._roots: Mapping[str, tuple[int, ...]] = MappingProxyType({})  # the active runs' roots, likewise
        self._base: dict[str, Run] = {}
        if store is not None:
            self._resume(store.load())
            self._publish()

    def attach_sampler(
        self, sample_now: Callable[[], Snapshot], track_now: Callable[[str, tuple[int, ...]], None]
    ) -> None:
        """Let ``start`` baseline the run's processes at once and ``stop`` take a fresh sample, so neither a run's
        first nor its last second is lost (exporter/sampler.py: ``Sampler.track_now`` and ``sample_now``)."""
        self._sample_now = sample_now
        self._track_now = track_now

    def _resume(self, stored: list[Run]) -> None:
        """Pick up runs from the store: active ones whose processes still live go on from their totals."""
        now = self._clock()
        ended: list[Run] = []
        for run in stored:
            alive = tuple(p for p in run.processes if self._is_alive(p))
            if run.active and not alive:
                run = replace(run, end_time=run.last_seen or run.start_time)
                ended.append(run)
                log.info("run %s ended while the exporter was down", run.run_id)
            elif run.active:
                run = replace(run, processes=alive)  # a root that died meanwhile may have a new owner of its PID
                log.info("run %s resumed with its totals", run.run_id)
            if run.active or now - (run.end_time or now) <= self._retain:
                self._runs[run.run_id] = run
                self._base[run.run_id] = run
        if ended and self._store is not None:
            self._store.save(ended)

    def _is_alive(self, process: ProcessRef) -> bool:
        stat = self._procfs.process(process.pid)
        return stat is not None and stat.start_ticks == process.start_ticks and stat.state not in ("Z", "X")

    def group_roots(self) -> Mapping[str, tuple[int, ...]]:
        """Root PIDs of every active run, for the sampler: made when runs start or end, not at each sample."""
        return self._roots

    def start(self, request: StartRequest, caller_uid: int, caller_pid: int | None) -> tuple[Run, bool]:
        """Register a run, or add a process to the active run with the given id; True when it is new."""
        pid = request.pid if request.pid is not None else caller_pid
        if pid is None:
            raise InvalidRequest("pid is required when the caller cannot be identified (TCP)")
        process, owner = self._owned_process(pid, caller_uid)
        placement = self._placement(pid)
        with self._lock:
            self._require_store()
            existing = self._runs.get(request.run_id) if request.run_id else None
            if existing is not None:
                run = self._join(existing, request, process, caller_uid)
                created = False
            else:
                run = Run(
                    run_id=request.run_id or uuid.uuid4().hex,
                    experiment=request.experiment,
                    set=request.set,
                    labels=MappingProxyType(dict(request.labels)),
                    uid=owner,
                    user=user_name(owner),
                    processes=(process,),
                    start_time=self._clock(),
                    placement=placement,
                )
                created = True
            self._save([run])
            self._runs[run.run_id] = run
            self._publish()
            self._base.setdefault(run.run_id, replace(run, energy_joules={}, cpu_seconds=0.0, gpu_seconds=0.0))
        if self._track_now is not None:
            self._track_now(run.run_id, run.pids)  # its CPU time counts from now, not from the next regular sample
        return run, created

    def _placement(self, pid: int) -> dict[str, str]:
        """The Kubernetes pod and container of ``pid``, if it runs in one and its cgroup file can be read."""
        try:
            return kubernetes_labels(self._procfs.cgroup(pid))
        except SourceError as error:
            log.debug("no cgroup for pid %d: %s", pid, error)
            return {}

    def _owned_process(self, pid: int, caller_uid: int) -> tuple[ProcessRef, int]:
        """The running process ``pid`` and its owner's uid, if the caller may register it."""
        stat = self._procfs.process(pid)
        owner = self._procfs.uid(pid)
        if stat is None or owner is None or stat.state in ("Z", "X"):
            raise InvalidRequest(f"no running process with pid {pid}")
        if caller_uid != 0 and owner != caller_uid:
            raise Forbidden(f"process {pid} belongs to another user; a run may only include your own processes")
        return ProcessRef(pid, stat.start_ticks), owner

    def _join(self, run: Run, request: StartRequest, process: ProcessRef, caller_uid: int) -> Run:
        if not run.active:
            raise Conflict(f"run {run.run_id} already finished on this node; start a run with a new run_id")
        if caller_uid != 0 and caller_uid != run.uid:
            raise Forbidden(f"run {run.run_id} belongs to another user")
        if (request.experiment, request.set, dict(request.labels)) != (run.experiment, run.set, dict(run.labels)):
            raise Conflict(f"run {run.run_id} exists with another experiment, set or labels")
        if process in run.processes:
            return run
        return replace(run, processes=(*run.processes, process))

    def stop(self, run_id: str, caller_uid: int) -> Run:
        """End a run now (a second stop returns the finished run unchanged)."""
        run = self.get(run_id, caller_uid)
        if not run.active:
            return run
        if self._sample_now is not None:
            self._sample_now()
        with self._lock:
            run = self._runs[run_id]
            if run.active:
                run = replace(run, end_time=self._clock())
                self._save([run])
                self._runs[run_id] = run
                self._publish()
            return run

    def get(self, run_id: str, caller_uid: int) -> Run:
        """A run the caller may see (its own, or any for root)."""
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            raise UnknownRun(f"no run {run_id!r} on this exporter")
        if caller_uid != 0 and run.uid != caller_uid:
            raise Forbidden(f"run {run_id} belongs to another user")
        return run

    def list(self, caller_uid: int) -> list[Run]:
        """Active and recently finished runs the caller may see."""
        with self._lock:
            runs = list(self._runs.values())
        return [run for run in runs if caller_uid == 0 or run.uid == caller_uid]

    def runs(self) -> list[Run]:
        """Every run currently exposed in /metrics.

        It takes no lock: a scrape must not wait while a sample's totals are stored (a second's worth of SQLite
        writes with 1,000 runs), so it reads the tuple published when the runs last changed.
        """
        return list(self._exposed)

    def _publish(self, roots_changed: bool = True) -> None:
        """Make the runs as they are now what ``runs()`` returns, and their roots what ``group_roots()`` returns
        unless no run started, joined or ended; called under the lock after each change."""
        self._exposed = tuple(self._runs.values())
        if roots_changed:
            self._roots = MappingProxyType({run.run_id: run.pids for run in self._exposed if run.active})

    def observe(self, snapshot: Snapshot) -> None:
        """Take a sample's group totals into the runs; end runs whose processes are all gone; persist."""
        with self._lock:
            measured = {zone.zone.domain for zone in snapshot.energy_zones} | ({"gpu"} if snapshot.gpus else set())
            changed = []
            for run in [run for run in self._runs.values() if run.active]:
                self._pause()
                changed.append(self._observe_run(run, snapshot, measured))
            for run in changed:
                self._runs[run.run_id] = run
            self._expire(snapshot.timestamp)
            self._publish(roots_changed=any(not run.active for run in changed))
            if self._store is not None and (changed or self._persist_failure):
                # After a failed save every run is stored: one that ended meanwhile is no longer among the changed.
                self._persist(list(self._runs.values()) if self._persist_failure else changed)

    def _persist(self, runs: Iterable[Run]) -> bool:
        """Store the runs' totals; False when the store fails (a full disk). A failure is logged once until a save
        works again: the totals stay in memory and the next sample that can be stored catches up."""
        try:
            self._store.save_totals(runs)
        except sqlite3.Error as error:
            if self._persist_failure is None:
                log.error(
                    "cannot persist run totals in %s: %s; the store keeps the last totals it could save until "
                    "this works again (free space there or choose another --state-dir)", self._store.path, error,
                )
            self._persist_failure = str(error)
            return False
        if self._persist_failure is not None:
            log.info("run totals are persisted again")
            self._persist_failure = None
        return True

    def _observe_run(self, run: Run, snapshot: Snapshot, measured: set[str]) -> Run:
        """The run with the sample's group totals added to its base; ``measured``: the domains the node measures."""
        totals = snapshot.groups.get(run.run_id)
        if totals is None:
            return run
        base = self._base.get(run.run_id, run)
        energy = {
            component: base.energy_joules.get(component, 0.0) + totals.energy_joules.get(domain, 0.0)
            for component, domain in COMPONENT_DOMAINS.items()
            if domain in measured or component in base.energy_joules
        }
        ended = totals.processes == 0
        if ended:
            log.info("run %s ended: its processes are gone", run.run_id)
        return replace(
            run,
            energy_joules=energy,
            cpu_seconds=base.cpu_seconds + totals.cpu_seconds,
            gpu_seconds=base.gpu_seconds + totals.gpu_seconds,
            last_seen=run.last_seen if ended else snapshot.timestamp,
            end_time=(run.last_seen or snapshot.timestamp) if ended else None,
        )

    def _expire(self, now: float) -> None:
        for run_id in [r.run_id for r in self._runs.values() if not r.active and now - r.end_time > self._retain]:
            del self._runs[run_id]
            self._base.pop(run_id, None)

    def close(self) -> None:
        """Persist every run as it is now and close the store (on SIGTERM); if the store cannot be written, it
        keeps the totals of the last sample it could save."""
        with self._lock:
            if self._store is not None:
                if not self._persist(self._runs.values()):
                    log.error("run totals since the last stored sample are lost: %s", self._persist_failure)
                self._store.close()
                self._store = None
                self._store_error = "the exporter is shutting down"

    def _require_store(self) -> None:
        if self._store is None:
            raise StoreUnavailable(self._store_error or "runs cannot be stored")

    def _save(self, runs: list[Run]) -> None:
        self._require_store()
        try:
            self._store.save(runs)
        except sqlite3.Error as error:
            raise StoreUnavailable(
                f"cannot store the run in {self._store.path}: {error}; free space there or choose another --state-dir"
            ) from error
