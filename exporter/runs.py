"""The run registry: experiment runs marked through the API, and when they end.

The registry tells the ledger (exporter/ledger.py) which runs to track, with the totals a resumed run starts
from, and after each sample settles its runs from the ledger's totals: ends runs whose processes are gone, keeps
finished runs visible for a while, and has the store (exporter/store.py) persist them. Requests reach it
validated (exporter/api.py).
"""

from __future__ import annotations

import logging
import pwd
import sqlite3
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

from impact_exporter.cgroups import Cgroup, CgroupFS, cgroup_holding, member_roots, parse_cgroup, tree_in_cgroup
from impact_exporter.groups import ProcessGroups, ProcKey
from impact_exporter.holders import holding_run
from impact_exporter.kubernetes import kubernetes_labels
from impact_exporter.ledger import Ledger
from impact_exporter.limits import DEFAULT_LIMITS, Limits, RegistrationRate, broken_label_limit, flag
from impact_exporter.run import (
    COMPONENT_DOMAINS,
    MAX_WORK_UNITS,
    Conflict,
    Forbidden,
    HeldByCgroupRun,
    InvalidRequest,
    ProcessRef,
    Run,
    RunKey,
    StartRequest,
    StoreUnavailable,
    TooManyRequests,
    UnknownRun,
    settled_run,
)
from impact_exporter.scheduling import Pause, no_pause
from impact_exporter.sources import SourceError
from impact_exporter.sources.procfs import ProcFS
from impact_exporter.store import RunStore

log = logging.getLogger(__name__)

STORE_PRUNE_INTERVAL_SECONDS = 60.0
"""How often settling deletes finished runs past --store.retain-finished and --store.runs-per-user (or a quarter
of --store.retain-finished, if that is shorter)."""


def user_name(uid: int) -> str:
    """The login name of ``uid``, or the number itself when the system has no such user."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class RunRegistry:
    """Active and recently finished runs: the API changes them, the ledger totals them, scrapes read them."""

    def __init__(
        self,
        procfs: ProcFS,
        store: RunStore | None,
        store_error: str | None = None,
        retain_finished_seconds: float = 900.0,
        clock: Callable[[], float] = time.time,
        pause: Pause = no_pause,
        ledger: Ledger | None = None,
        groups: ProcessGroups | None = None,
        limits: Limits = DEFAULT_LIMITS,
        cgroupfs: CgroupFS | None = None,
    ) -> None:
        """``ledger`` keeps the active runs' totals; a run's start records its baseline in ``groups`` (the sampler's
        process-group accounting) so its CPU time counts from then. ``pause`` is called between runs while they
        are settled (exporter/scheduling.py). ``limits`` bound the runs held, per user and in all
        (exporter/limits.py). ``cgroupfs`` is where cgroup runs' cgroups are (exporter/cgroups.py)."""
        self._procfs = procfs
        self._cgroupfs = cgroupfs if cgroupfs is not None else CgroupFS(Path("/sys/fs/cgroup"))
        self._pause = pause
        self._store = store
        self._store_error = store_error
        self._persist_failure: str | None = None  # why the last sample's totals could not be stored
        self._retain = retain_finished_seconds
        self._clock = clock
        self._ledger = ledger if ledger is not None else Ledger()
        self._groups = groups
        self._limits = limits
        self._rate = RegistrationRate(limits)
        self._pruned_at: float | None = None  # the sample time of the last pruning of the store
        self._lock = threading.RLock()
        self._runs: dict[RunKey, Run] = {}
        self._exposed: tuple[Run, ...] = ()  # _runs as of its last change, for scrapes (see runs())
        if store is not None:
            self._resume(store)
            self._publish()

    def _resume(self, store: RunStore) -> None:
        """Pick up runs from the store within the limits. Active runs whose processes still live go on from their
        totals, oldest first, as far as the limits allow; the others are ended, at their last sample, and those
        ended for a limit are logged per user and limit. Then finished runs within --runs.retain-finished come
        back to /metrics, latest first, as far as the limits allow. Runs are read one at a time, so a store written
        under other limits (or none) holds no more in memory than these limits allow."""
        ends: list[tuple[RunKey, float]] = []
        over_limit: Counter[tuple[str, str]] = Counter()  # (user, limit's flag) -> active runs ended for it
        active: Counter[int] = Counter()
        roots: dict[ProcKey, RunKey] = {}  # those of the active runs resumed so far
        for run in store.active():
            alive = self._not_held(run, tuple(p for p in run.processes if self._is_alive(p)), roots)
            kept = bool(alive) or run.cgroup is not None  # a cgroup run ends when stopped, or its cgroup goes
            broken = self._resume_refusal(run, active[run.uid]) if kept else None
            if not kept or broken:
                ends.append((run.key, run.last_seen or run.start_time))
                if broken:
                    over_limit[(run.user, broken)] += 1
                    log.debug("run %s ended at start-up: over %s", run.run_id, broken)
                else:
                    log.info("run %s ended while the exporter was down", run.run_id)
                continue
            run = replace(run, processes=alive)  # a root that died meanwhile may have a new owner of its PID
            active[run.uid] += 1
            roots.update(((p.pid, p.start_ticks), run.key) for p in alive)
            self._runs[run.key] = run
            self._track(run)
            log.info("run %s resumed with its totals", run.run_id)
        if ends:
            store.end(ends)
        for (user, limit), count in sorted(over_limit.items()):
            log.warning("ended %d active runs of user %s at start-up: they are over %s", count, user, limit)
        self._resume_finished(store)

    def _resume_refusal(self, run: Run, active_of_user: int) -> str | None:
        """The limit (as its flag) that a stored active run breaks if it is resumed, or None."""
        broken = broken_label_limit(run.experiment, run.set, run.labels, self._limits)
        if broken is not None:
            return flag(broken, self._limits)
        if len(self._runs) >= self._limits.runs:
            return flag("runs", self._limits)
        if run.uid != 0 and active_of_user >= self._limits.active_runs_per_user:
            return flag("active_runs_per_user", self._limits)
        return None

    def _resume_finished(self, store: RunStore) -> None:
        """Bring back finished runs within --runs.retain-finished, latest first, within the limits."""
        retained: Counter[int] = Counter()
        for run in store.finished_since(self._clock() - self._retain):
            if len(self._runs) >= self._limits.runs:
                break
            if run.uid != 0 and retained[run.uid] >= self._limits.retained_runs_per_user:
                continue
            if broken_label_limit(run.experiment, run.set, run.labels, self._limits) is None:
                retained[run.uid] += 1
                self._runs[run.key] = run

    def _not_held(
        self, run: Run, processes: tuple[ProcessRef, ...], roots: Mapping[ProcKey, RunKey]
    ) -> tuple[ProcessRef, ...]:
        """The ``processes`` of a resumed run that no run among ``roots``, resumed before it, holds: a store written
        before a process counted in one run at a time may hold a process in several runs; the earliest keeps it."""
        kept = []
        for process in processes:
            holder = holding_run(self._procfs, process.pid, roots)
            if holder is None:
                kept.append(process)
            else:
                log.warning(
                    "run %s: %s run %s, so it counts there only",
                    run.run_id,
                    holder.relation(process.pid),
                    holder.run.run_id,
                )
        return tuple(kept)

    def _is_alive(self, process: ProcessRef) -> bool:
        stat = self._procfs.process(process.pid)
        return stat is not None and stat.start_ticks == process.start_ticks and stat.state not in ("Z", "X")

    def _track(self, run: Run) -> None:
        """Have the ledger track ``run``'s roots, from its totals if it is new there (energy by domain)."""
        self._ledger.track(
            run.key,
            run.pids,
            {COMPONENT_DOMAINS[c]: joules for c, joules in run.energy_joules.items() if c in COMPONENT_DOMAINS},
            run.cpu_seconds,
            run.gpu_seconds,
            parse_cgroup(run.cgroup) if run.cgroup is not None else None,
        )

    def start(self, request: StartRequest, caller_uid: int, caller_pid: int | None) -> tuple[Run, bool]:
        """Register a run, or add a process to the active run with the given id; True when it is new. The API lets
        only operators ask for a cgroup run (exporter/api.py)."""
        if request.cgroup is not None:
            return self._start_cgroup(request, parse_cgroup(request.cgroup), caller_uid)
        pid = request.pid if request.pid is not None else caller_pid
        if pid is None:
            raise InvalidRequest("pid is required when the caller cannot be identified (TCP)")
        self._take_registration(caller_uid)
        process, owner = self._owned_process(pid, caller_uid)
        placement = self._placement(pid)
        with self._lock:
            self._require_store()
            existing = self._runs.get(RunKey(owner, request.run_id)) if request.run_id else None
            if existing is not None:
                run = self._join(existing, request, process)
                created = False
            else:
                self._admit(caller_uid)
                run = self._new_run(request, owner, processes=(process,), placement=placement)
                created = True
            self._require_counted_once(pid, run.key, caller_uid)
            if created:
                self._insert(run)
            else:
                self._save([run])
            self._runs[run.key] = run
            self._publish()
            self._track(run)
        if self._groups is not None:  # its CPU time counts from now, not from the next regular sample
            try:
                self._groups.add_roots(run.key, run.pids)
            except SourceError as error:  # the next sample takes the baseline (and marks procfs down if need be)
                log.debug("no baseline for run %s now: %s", run.run_id, error)
        return run, created

    def _start_cgroup(self, request: StartRequest, cgroup: Cgroup, caller_uid: int) -> tuple[Run, bool]:
        """Register the cgroup run ``request`` asks for, of user ``request.uid`` (default: the caller); the same
        request again returns the run (a prolog that is retried). The cgroup need not exist yet: Slurm makes a
        job's cgroup after its prolog has run."""
        owner = request.uid if request.uid is not None else caller_uid
        self._take_registration(caller_uid)
        with self._lock:
            self._require_store()
            existing = self._runs.get(RunKey(owner, request.run_id)) if request.run_id else None
            if existing is not None:
                if not existing.active:
                    raise Conflict(already_finished(existing.run_id))
                if (request.experiment, request.set, dict(request.labels), str(cgroup)) != (
                    existing.experiment,
                    existing.set,
                    dict(existing.labels),
                    existing.cgroup,
                ):
                    raise Conflict(f"run {existing.run_id} exists with another experiment, set, labels or cgroup")
                return existing, False
            self._admit(caller_uid)
            members = self._require_cgroup_free(cgroup)
            run = self._new_run(request, owner, processes=(), cgroup=str(cgroup))
            self._insert(run)
            self._runs[run.key] = run
            self._publish()
            self._track(run)
        if self._groups is not None:  # its members' CPU time counts from now, and that of those born after
            try:
                self._groups.add_roots(run.key, member_roots(self._procfs, members))
            except SourceError as error:
                log.debug("no baseline for run %s now: %s", run.run_id, error)
        return run, True

    def _require_cgroup_free(self, cgroup: Cgroup) -> list[int]:
        """The processes in ``cgroup`` now; Conflict when an active run holds the cgroup, one above or below it, or
        one of its processes: a process counts in one run at a time. Under the lock."""
        for run in self._runs.values():
            if run.active and run.cgroup is not None and parse_cgroup(run.cgroup).overlaps(cgroup):
                raise Conflict(
                    f"cgroup {cgroup} overlaps cgroup {run.cgroup} of active run {run.run_id} of user {run.user}; "
                    "a process counts in one run at a time: stop that run first"
                )
        try:
            members = self._cgroupfs.processes(cgroup) or []
        except SourceError as error:
            raise InvalidRequest(f"cannot read the processes of cgroup {cgroup}: {error}") from error
        cgroups = self._active_cgroups()
        roots = self._active_roots()
        for pid in members:
            holder = holding_run(self._procfs, pid, roots)
            if holder is not None:
                raise Conflict(
                    f"cgroup {cgroup} holds process {pid}: {holder.relation(pid)} active run {holder.run.run_id} of "
                    f"user {user_name(holder.run.uid)}; a process counts in one run at a time: stop that run first"
                )
            held = tree_in_cgroup(self._procfs, pid, cgroups)
            if held is not None:
                raise Conflict(
                    f"cgroup {cgroup} holds process {held[0]}, which is in cgroup run {held[1].run_id} of user "
                    f"{user_name(held[1].uid)}; a process counts in one run at a time: stop that run first"
                )
        return members

    def _active_cgroups(self, exclude: RunKey | None = None) -> dict[Cgroup, RunKey]:
        """The cgroup of every active cgroup run but ``exclude``."""
        return {
            parse_cgroup(run.cgroup): key
            for key, run in self._runs.items()
            if run.active and run.cgroup is not None and key != exclude
        }

    def _new_run(self, request: StartRequest, owner: int, **held: object) -> Run:
        """A run of user ``owner`` as ``request`` asks, starting now, holding ``held`` (processes, cgroup)."""
        return Run(
            run_id=request.run_id or uuid.uuid4().hex,
            experiment=request.experiment,
            set=request.set,
            labels=MappingProxyType(dict(request.labels)),
            uid=owner,
            user=user_name(owner),
            start_time=self._clock(),
            **held,  # type: ignore[arg-type]
        )

    def _take_registration(self, caller_uid: int) -> None:
        """Count one start against the caller's rate; TooManyRequests when the caller goes too fast."""
        wait = self._rate.wait_seconds(caller_uid)
        if wait > 0:
            raise TooManyRequests(
                f"user {user_name(caller_uid)} starts runs faster than {flag('registrations_per_second', self._limits)}"
                f" (bursts of {flag('registration_burst', self._limits)}); retry in {wait:.1f} s"
            )

    def _admit(self, caller_uid: int) -> None:
        """TooManyRequests when a new run of the caller would go over a limit on runs held; under the lock."""
        if len(self._runs) >= self._limits.runs:
            raise TooManyRequests(
                f"the exporter holds {len(self._runs)} runs, its limit ({flag('runs', self._limits)}); finished runs "
                "leave after --runs.retain-finished"
            )
        if caller_uid == 0:
            return
        active = sum(1 for run in self._runs.values() if run.uid == caller_uid and run.active)
        if active >= self._limits.active_runs_per_user:
            raise TooManyRequests(
                f"user {user_name(caller_uid)} has {active} active runs, the limit "
                f"({flag('active_runs_per_user', self._limits)}); stop one first"
            )

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

    def _require_counted_once(self, pid: int, key: RunKey, caller_uid: int) -> None:
        """Refuse ``pid`` when another active run holds it or one of its descendants (exporter/holders.py): a
        process counts in one run at a time. Another user's run is not named to the caller."""
        self._require_outside_cgroup_runs(pid, key, caller_uid)
        holder = holding_run(self._procfs, pid, self._active_roots(exclude=key))
        if holder is None:
            return
        if caller_uid != 0 and holder.run.uid != caller_uid:
            raise Conflict(
                f"{holder.relation(pid)} another user's active run; a process counts in one run at a time: "
                "register a process outside that run"
            )
        raise Conflict(
            f"{holder.relation(pid)} active run {holder.run.run_id}; a process counts in one run at a time: join "
            f"that run (run_id {holder.run.run_id!r}), register a process outside it, or stop it first"
        )

    def _require_outside_cgroup_runs(self, pid: int, key: RunKey, caller_uid: int) -> None:
        """Refuse ``pid`` when it or a descendant is in the cgroup of an active cgroup run: that run holds it."""
        held = tree_in_cgroup(self._procfs, pid, self._active_cgroups(exclude=key))
        if held is None:
            return
        member, holder = held
        what = f"process {pid}" if member == pid else f"process {pid} has a descendant, process {member}, that"
        if caller_uid != 0 and holder.uid != caller_uid:
            raise Conflict(
                f"{what} is in the cgroup of another user's active run; a process counts in one run at a time"
            )
        raise HeldByCgroupRun(
            f"{what} is in the cgroup of active run {holder.run_id} ({self._runs[holder].cgroup}), which measures "
            "it already; a process counts in one run at a time",
            self._runs[holder],
        )

    def _active_roots(self, exclude: RunKey | None = None) -> dict[ProcKey, RunKey]:
        """The roots of every active run but ``exclude``: (pid, start_ticks) -> run key."""
        return {
            (process.pid, process.start_ticks): key
            for key, run in self._runs.items()
            if run.active and key != exclude
            for process in run.processes
        }

    def _join(self, run: Run, request: StartRequest, process: ProcessRef) -> Run:
        """``run`` with ``process`` added: a run of the process's owner, so of the caller unless root calls. A
        cgroup run is joined by being in its cgroup: a process there gets HeldByCgroupRun (``impact-run`` in a
        Slurm job passes the job's run id to the code it runs), one elsewhere a Conflict."""
        if not run.active:
            raise Conflict(already_finished(run.run_id))
        if run.cgroup is not None:
            if cgroup_holding(self._procfs, process.pid, {parse_cgroup(run.cgroup): run.key}) is not None:
                raise HeldByCgroupRun(
                    f"process {process.pid} is in the cgroup of run {run.run_id}, which measures it", run
                )
            raise Conflict(f"run {run.run_id} is cgroup {run.cgroup}'s: a process is in it by being in that cgroup")
        if (request.experiment, request.set, dict(request.labels)) != (run.experiment, run.set, dict(run.labels)):
            raise Conflict(f"run {run.run_id} exists with another experiment, set or labels")
        if process in run.processes:
            return run
        return replace(run, processes=(*run.processes, process))

    def stop(self, run_id: str, caller_uid: int, user: str | None = None, operator: bool = False) -> Run:
        """End a run now with the totals of the last settled sample (a second stop returns the finished run
        unchanged). RunSettler.stop takes a fresh sample first, so they include the run's last moments. ``user``
        and ``operator`` as for ``get``."""
        run = self.get(run_id, caller_uid, user, operator)
        if not run.active:
            return run
        with self._lock:
            run = self._runs[run.key]
            if run.active:
                run = replace(run, end_time=self._clock())
                self._save([run])
                self._runs[run.key] = run
                self._publish()
                self._ledger.untrack(run.key)
            return run

    def add_work(self, run_id: str, units: Mapping[str, int], caller_uid: int, user: str | None = None) -> Run:
        """Count ``units`` (validated: known units, counts from 0 to MAX_WORK_UNITS) of work done by the active run
        ``run_id``. Conflict for a finished run, or when a count would pass MAX_WORK_UNITS; ``user`` as for ``get``.
        Kept in memory: the next settled sample stores it with the totals."""
        with self._lock:
            run = self.get(run_id, caller_uid, user)
            if not run.active:
                raise Conflict(f"run {run_id} already finished; work is counted while a run is active")
            counted = dict(run.work_units)
            for unit, count in units.items():
                counted[unit] = counted.get(unit, 0) + count
                if counted[unit] > MAX_WORK_UNITS:
                    raise Conflict(
                        f"run {run_id} would count {counted[unit]} {unit}, more than 2^53 (the most a metric "
                        "holds exactly); report work in larger units"
                    )
            run = replace(run, work_units=MappingProxyType(counted))
            self._runs[run.key] = run
            self._publish()
            return run

    def get(self, run_id: str, caller_uid: int, user: str | None = None, operator: bool = False) -> Run:
        """The caller's run ``run_id``. Root may read any user's, and an ``operator`` any user's cgroup run: the one
        ``user`` names, or the only one of that id. Another user's run is as unknown as a run that does not exist
        (UnknownRun), so ids cannot be probed."""
        with self._lock:
            if caller_uid == 0 or operator:
                held = [
                    run
                    for key, run in self._runs.items()
                    if key.run_id == run_id and (caller_uid in (0, key.uid) or run.cgroup is not None)
                ]
            else:
                held = [run] if (run := self._runs.get(RunKey(caller_uid, run_id))) is not None else []
        held = [run for run in held if user is None or run.user == user]
        if not held:
            raise UnknownRun(f"no run {run_id!r} on this exporter" + (f" of user {user!r}" if user else ""))
        if len(held) > 1:
            users = ", ".join(sorted(run.user for run in held))
            raise Conflict(f"run {run_id} is held by users {users}; name one with ?user=NAME")
        return held[0]

    def list(self, caller_uid: int, operator: bool = False) -> list[Run]:
        """Active and recently finished runs the caller may see: an operator sees every cgroup run too."""
        with self._lock:
            runs = list(self._runs.values())
        return [run for run in runs if caller_uid in (0, run.uid) or (operator and run.cgroup is not None)]

    def runs(self) -> list[Run]:
        """Every run currently exposed in /metrics.

        It takes no lock: a scrape must not wait while a sample's totals are stored (a second's worth of SQLite
        writes with 1,000 runs), so it reads the tuple published when the runs last changed.
        """
        return list(self._exposed)

    def _publish(self) -> None:
        """Make the runs as they are now what ``runs()`` returns; called under the lock after each change."""
        self._exposed = tuple(self._runs.values())

    def settle(self, timestamp: float) -> None:
        """Take the ledger's totals into the active runs as of the sample at ``timestamp``; end runs whose processes
        are all gone; persist."""
        with self._lock:
            totals = self._ledger.totals()
            measured = self._ledger.measured()
            changed = []
            for run in [run for run in self._runs.values() if run.active]:
                self._pause()
                settled = settled_run(run, totals.get(run.key), measured, timestamp, self._cgroup_gone)
                if not settled.active:
                    log.info("run %s ended: its %s gone", run.run_id, "cgroup is" if run.cgroup else "processes are")
                changed.append(settled)
            for run in changed:
                self._runs[run.key] = run
                if not run.active:
                    self._ledger.untrack(run.key)
            self._expire(timestamp)
            self._publish()
            if self._store is not None and (changed or self._persist_failure):
                # After a failed save every run is stored: one that ended meanwhile is no longer among the changed.
                self._persist(list(self._runs.values()) if self._persist_failure else changed)
            self._prune_store(timestamp)

    def _prune_store(self, now: float) -> None:
        """Delete finished runs past --store.retain-finished and --store.runs-per-user, once a minute (or a quarter
        of --store.retain-finished, if that is shorter)."""
        interval = min(STORE_PRUNE_INTERVAL_SECONDS, self._limits.store_retain_finished_seconds / 4)
        if self._store is None or (self._pruned_at is not None and now - self._pruned_at < interval):
            return
        self._pruned_at = now
        try:
            deleted = self._store.prune(
                now - self._limits.store_retain_finished_seconds, self._limits.stored_runs_per_user
            )
        except sqlite3.Error as error:
            log.warning("cannot delete old finished runs from %s: %s", self._store.path, error)
            return
        if deleted:
            log.info(
                "deleted %d old finished runs from the store (--store.retain-finished, --store.runs-per-user)", deleted
            )

    def _persist(self, runs: Iterable[Run]) -> bool:
        """Store the runs' totals; False when the store fails (a full disk). A failure is logged once until a save
        works again: the totals stay in memory and the next sample that can be stored catches up."""
        try:
            self._store.save_totals(runs)
        except sqlite3.Error as error:
            if self._persist_failure is None:
                log.error(
                    "cannot persist run totals in %s: %s; the store keeps the last totals it could save until "
                    "this works again (free space there or choose another --state-dir)",
                    self._store.path,
                    error,
                )
            self._persist_failure = str(error)
            return False
        if self._persist_failure is not None:
            log.info("run totals are persisted again")
            self._persist_failure = None
        return True

    def _cgroup_gone(self, run: Run, populated: bool) -> bool:
        """Whether a cgroup run's cgroup, having held processes (``populated``, kept in the store across restarts),
        is gone: the job ended without a stop (an epilog that could not reach the exporter). A cgroup not made yet
        (Slurm makes it after the prolog) keeps its run active."""
        return populated and not self._cgroupfs.exists(parse_cgroup(run.cgroup))

    def _expire(self, now: float) -> None:
        """Drop finished runs past --runs.retain-finished, and each user's oldest beyond
        --limits.retained-runs-per-user (root's are kept)."""
        for key in [key for key, r in self._runs.items() if not r.active and now - r.end_time > self._retain]:
            del self._runs[key]
        finished: defaultdict[int, list[Run]] = defaultdict(list)
        for run in self._runs.values():
            if not run.active and run.uid != 0:
                finished[run.uid].append(run)
        for runs in finished.values():
            surplus = len(runs) - self._limits.retained_runs_per_user
            for run in sorted(runs, key=lambda run: run.end_time)[:surplus] if surplus > 0 else ():
                del self._runs[run.key]

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
            raise self._unavailable(error) from error

    def _insert(self, run: Run) -> None:
        """Store a new run: Conflict when the store holds its user's run of that id, though memory no longer does."""
        self._require_store()
        try:
            self._store.insert(run)
        except sqlite3.IntegrityError as error:
            raise Conflict(already_finished(run.run_id)) from error
        except sqlite3.Error as error:
            raise self._unavailable(error) from error

    def _unavailable(self, error: sqlite3.Error) -> StoreUnavailable:
        return StoreUnavailable(
            f"cannot store the run in {self._store.path}: {error}; free space there or choose another --state-dir"
        )


def already_finished(run_id: str) -> str:
    """Why a run id cannot be used again: it names a run of the caller's that ended on this node."""
    return f"run {run_id} already finished on this node; start a run with a new run_id"
