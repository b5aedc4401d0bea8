"""Runs as an experiment marks them: ``track_run`` registers a process with the exporter and stops it after.

::

    with track_run("mobilenet", set="conv32", labels={"seed": "0"}, logdir="runs/seed0") as run:
        train()
        print(run.info()["energy_joules"])

    @track_run("mobilenet")
    def main(): ...

The exporter measures the registered process and all its descendants, so the code inside the block needs no
changes and no monitoring process is forked. Tracking must never be the reason an experiment dies: when the
exporter cannot be reached, or refuses the run, one warning line says why and how to fix it and the
experiment runs untracked (``run.tracked`` is False), unless ``strict=True`` asks for an exception instead.

``IMPACT_RUN_ID``, when set, is the run id: processes that a distributed launcher starts with the same id (and
the same experiment, set and labels) join one run. The process that created a run stops it; processes that
joined leave it to their creator, and the exporter ends a run by itself once all its processes are gone. When
the id names an active run that already measures this process (``impact-run`` exports its run's id to the
command), that run is used as it is, whatever experiment name the code inside gives. The same holds without an
exporter: the command joins impact-run's standalone run (``$IMPACT_RUN_DIR``, experiment_impact_tracker/standalone.py)
rather than start a second monitor.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from experiment_impact_tracker.client import ADDRESS_ENV, DEFAULT_ADDRESS, ExporterClient, Registration
from experiment_impact_tracker.errors import (
    ExporterError,
    ExporterUnavailable,
    ImpactTrackerError,
    RunNotTracked,
    RunUnhealthy,
    UnknownRun,
)
from experiment_impact_tracker.grafana import GrafanaAnnotator, GrafanaError, run_annotation
from experiment_impact_tracker.rundir import (
    SAMPLES_CSV,
    SAMPLES_HEADER,
    WORK_JSONL,
    append_work,
    describe_hardware,
    prometheus_url,
    set_aside_previous_run,
    write_run_dir,
)
from experiment_impact_tracker.standalone import JoinedRun, StandaloneMonitor, StandaloneOptions, measured_by_roots

log = logging.getLogger("experiment_impact_tracker")

RUN_ID_ENV = "IMPACT_RUN_ID"
MEASURED_BY_EXPORTER = "impact-exporter"
STANDALONE_ENV = "IMPACT_STANDALONE"
"""``0``, ``no`` or ``off``: where no exporter answers, run untracked (as before standalone measurement) rather
than measure the run with a standalone monitor."""
STALE_AFTER_SECONDS = 10.0
WORK_REPORT_SECONDS = 1.0
"""How often ``Run.add_work`` sends what it counted: a training loop may call it at every batch, and one request
per batch would cost more than the batch on a tiny model. ``stop`` sends the rest."""

F = TypeVar("F", bound=Callable[..., Any])


class Run:
    """One run as the process that registered it sees it: its id, whether it is tracked, its latest figures.

    Made by ``Run.start`` (through ``track_run``, ``impact-run`` or ``ImpactTracker``); ``stop`` ends it.
    """

    def __init__(
        self,
        *,
        experiment: str,
        set: str | None,  # noqa: A002 (the API's field name)
        labels: Mapping[str, str],
        pid: int,
        client: ExporterClient | None,
        address: str,
        registration: Registration | None,
        untracked_reason: str | None,
        strict: bool,
        logdir: Path | None,
        hardware: dict[str, Any] | None,
        command: list[str] | None,
        environ: Mapping[str, str],
        monitor: StandaloneMonitor | None = None,
        run_id: str | None = None,
        joined: JoinedRun | None = None,
    ) -> None:
        self.experiment = experiment
        self.set = set
        self.labels = dict(labels)
        self.pid = pid
        self.address = address
        self.untracked_reason = untracked_reason
        self.logdir = logdir
        self.command = command
        self.final: dict[str, Any] | None = None
        known = (
            registration.run if registration else monitor.ready["run"] if monitor else joined.record if joined else {}
        )
        self.start_time: float = known.get("start_time") or time.time()
        self.end_time: float | None = None
        self._client = client
        self._registration = registration
        self._monitor = monitor
        self._joined = joined
        self._standalone_run_id = run_id
        self._temporary_dir: Path | None = None
        self._strict = strict
        self._hardware = hardware
        self._prometheus_url = prometheus_url(environ)
        self._owner_pid = os.getpid()
        self._stopped = False
        self._grafana = _grafana_annotator(environ) if registration is not None and registration.created else None
        self.work_units: dict[str, int] = {}  # what this process reported, sent or not
        self._unsent_work: dict[str, int] = {}
        self._work_sent_at = time.monotonic()
        self.work_report_seconds = WORK_REPORT_SECONDS

    @classmethod
    def start(
        cls,
        experiment: str,
        *,
        set: str | None = None,  # noqa: A002
        labels: Mapping[str, Any] | None = None,
        pid: int | None = None,
        run_id: str | None = None,
        logdir: str | os.PathLike[str] | None = None,
        strict: bool = False,
        client: ExporterClient | None = None,
        command: list[str] | None = None,
        environ: Mapping[str, str] | None = None,
        standalone: StandaloneOptions | None = None,
    ) -> Run:
        """Register ``pid`` (default: this process) and its descendants as a run, and write ``logdir/run.json``.

        Label values are converted with ``str``. ``run_id`` defaults to ``$IMPACT_RUN_ID``. When no exporter
        answers, the run is measured by a standalone monitor (experiment_impact_tracker/standalone.py, configured
        by ``standalone``) into ``logdir``, after one warning line; with ``strict``, that is an error instead.
        Other tracking failures (the exporter refused the run, the monitor cannot measure) raise an
        ImpactTrackerError with ``strict``, else log one warning line and return an untracked run. A ``logdir``
        that cannot be written raises OSError either way: the caller asked for it. A run already in ``logdir``
        is moved into ``logdir/previous/`` with a warning, so nothing measured is overwritten.
        """
        env = os.environ if environ is None else environ
        run_id = run_id or env.get(RUN_ID_ENV) or None
        joinable = JoinedRun.find(env, run_id, pid if pid is not None else os.getpid())
        if joinable is not None and logdir is not None and Path(logdir).resolve() == joinable.run_dir.resolve():
            logdir = None  # the standalone run's own directory, which the process that started the run writes
        if logdir is not None:
            Path(logdir).mkdir(parents=True, exist_ok=True)  # fail before registering, not after
            moved = set_aside_previous_run(Path(logdir))
            if moved is not None:
                warn(f"{logdir} held a run already; it is moved to {moved}")
        text_labels = {str(name): str(value) for name, value in (labels or {}).items()}
        # Described before registering, so that py-cpuinfo's second of work (once per boot, then cached) is not billed
        # to the run.
        hardware = describe_hardware() if logdir is not None else None
        address = str(client.address) if client else env.get(ADDRESS_ENV) or DEFAULT_ADDRESS
        registration, reason, monitor, joined = None, None, None, None
        try:
            client = client or ExporterClient(environ=env)
            address = str(client.address)
            registration = _register(client, experiment, set, text_labels, pid, run_id)
        except ExporterUnavailable as error:
            if strict:
                raise
            if not standalone_allowed(env):
                reason = _one_line(str(error))
                warn(f"not tracking {experiment!r}: {reason}")
            else:
                joined = joinable
                if joined is None:
                    run_id = run_id or uuid.uuid4().hex
                    monitor, reason = _standalone(
                        experiment, set, text_labels, pid, run_id, logdir, standalone, _one_line(str(error))
                    )
                else:
                    log.info(
                        "joining run %s of %r, measured standalone into %s",
                        run_id,
                        joined.record.get("experiment"),
                        joined.run_dir,
                    )
        except ImpactTrackerError as error:
            if strict:
                raise
            reason = _one_line(str(error))
            warn(f"not tracking {experiment!r}: {reason}")
        run = cls(
            experiment=experiment,
            set=set,
            labels=text_labels,
            pid=pid if pid is not None else os.getpid(),
            client=client if registration else None,
            address=address,
            registration=registration,
            untracked_reason=reason,
            strict=strict,
            logdir=Path(logdir) if logdir is not None else None,
            hardware=hardware,
            command=command,
            environ=env,
            monitor=monitor,
            run_id=run_id if monitor or joined else None,
            joined=joined,
        )
        if monitor is not None and logdir is None:
            run._temporary_dir = monitor.run_dir
        if run.logdir is not None:
            try:
                run.write()
            except BaseException:
                run._abandon()
                raise
        return run

    @property
    def tracked(self) -> bool:
        """Whether the run is measured: by the exporter, or by a standalone monitor when no exporter answered."""
        return self._registration is not None or self._monitor is not None or self._joined is not None

    @property
    def run_id(self) -> str | None:
        """The run's id (the exporter's, or the standalone run's); None when untracked."""
        if self._registration:
            return self._registration.run["run_id"]
        return self._standalone_run_id

    @property
    def standalone_run_dir(self) -> Path | None:
        """The directory a standalone monitor started by this process writes the run's samples into; None when an
        exporter measures the run, when it is untracked or joined."""
        return self._monitor.run_dir if self._monitor is not None else None

    @property
    def created(self) -> bool:
        """Whether this process started the run (and so stops it), rather than joining one."""
        return self._monitor is not None or (self._registration is not None and self._registration.created)

    @property
    def measured_by(self) -> str | None:
        """What measures the run: "impact-exporter", or the standalone monitor and its sources; None untracked."""
        if self._monitor is not None:
            return self._monitor.measured_by
        if self._joined is not None:
            return self._joined.measured_by
        return MEASURED_BY_EXPORTER if self._registration is not None else None

    def info(self) -> dict[str, Any]:
        """The exporter's latest figures for the run (energy_joules, cpu_seconds, status, ...).

        Raises RunNotTracked for an untracked run, UnknownRun when the exporter no longer knows it,
        ExporterUnavailable when the exporter cannot be reached, MeasurementFailed when the standalone monitor
        stopped measuring.
        """
        if self._monitor is not None:
            return self._monitor.latest()
        if self._joined is not None:
            return self._joined.latest()
        if self._client is None or self.run_id is None:
            raise RunNotTracked(self.experiment, self.untracked_reason or "it was never registered")
        try:
            return self._client.get_run(self.run_id)
        except ExporterError as error:
            if error.status == 404:
                raise UnknownRun(self.run_id, error.message, error.address) from error
            raise

    def add_work(self, samples: int = 0, steps: int = 0, tokens: int = 0) -> None:
        """Count units of work this process did for the run (``run.add_work(samples=64, steps=1)`` per batch).

        The exporter sums every process's reports into ``impact_run_work_units_total{unit}``, and reports divide
        the run's energy by them (J per sample, Wh per 1,000 tokens). Counts are sent at most every
        ``work_report_seconds`` and by ``stop``; a failure to send is a warning (an error with ``strict``).
        ValueError for a count that is not a whole number of 0 or more: that is the caller's bug.
        """
        for unit, count in (("samples", samples), ("steps", steps), ("tokens", tokens)):
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise ValueError(f"{unit} must be a whole number of 0 or more, not {count!r}")
            if count:
                self.work_units[unit] = self.work_units.get(unit, 0) + count
                self._unsent_work[unit] = self._unsent_work.get(unit, 0) + count
        if time.monotonic() - self._work_sent_at >= self.work_report_seconds:
            self._send_work()

    def _send_work(self) -> None:
        """Send the work counted since the last report: to the exporter, or, for a run measured standalone (its own
        or impact-run's that it joined), into the run directory's work file, which its monitor reads at every
        sample; kept for the next try when the exporter cannot be reached."""
        self._work_sent_at = time.monotonic()
        standalone = self._monitor if self._monitor is not None else self._joined
        if not self._unsent_work or self.run_id is None or (self._client is None and standalone is None):
            return
        unsent, self._unsent_work = self._unsent_work, {}
        if standalone is not None:
            try:
                append_work(standalone.run_dir, unsent)
            except OSError as error:
                self._work_failed(ImpactTrackerError(f"cannot write {standalone.run_dir / WORK_JSONL}: {error}"))
            return
        try:
            self._client.add_work(self.run_id, unsent)
        except ExporterUnavailable as error:
            for unit, count in unsent.items():
                self._unsent_work[unit] = self._unsent_work.get(unit, 0) + count
            self._work_failed(error)
        except ImpactTrackerError as error:
            self._work_failed(error)

    def _work_failed(self, error: ImpactTrackerError) -> None:
        if self._strict:
            raise error
        warn(f"cannot report work of run {self.run_id} of {self.experiment!r}: {_one_line(str(error))}")

    def stop(self, raise_errors: bool = True) -> dict[str, Any] | None:
        """End the run (if this process created it), record the final figures in run.json, and return them.

        Idempotent, and a no-op in a forked child of the registering process, so that a child's exit does not
        end its parent's run. A failure to stop is a warning, or with ``strict`` (and ``raise_errors``) an
        exception once run.json is written.
        """
        if self._stopped or os.getpid() != self._owner_pid:
            return self.final
        self._stopped = True
        failure: ImpactTrackerError | None = None
        if self._monitor is not None or self._joined is not None:
            try:
                self._send_work()  # into the work file before the monitor's last sample
            except ImpactTrackerError as error:  # strict: raised once the run is stopped and run.json written
                failure = error
        if self._monitor is not None:
            try:
                self.final = self._monitor.stop()
            except ImpactTrackerError as error:
                failure = error
                warn(f"cannot stop the standalone measurement of {self.experiment!r}: {_one_line(str(error))}")
        elif self._joined is not None:  # the process that started the run stops it
            try:
                self.final = self._joined.latest()
            except ImpactTrackerError as error:
                failure = error
                warn(f"cannot read run {self.run_id} of {self.experiment!r}: {_one_line(str(error))}")
        elif self._client is not None and self.run_id is not None:
            try:
                self._send_work()  # before the stop: a finished run counts no more work
            except ImpactTrackerError as error:  # strict: raised once the run is stopped and run.json written
                failure = error
            try:
                if self.created:
                    self.final = self._client.stop_run(self.run_id)
                else:
                    self.final = self._client.get_run(self.run_id)
            except ImpactTrackerError as error:
                failure = error
                warn(f"cannot stop run {self.run_id} of {self.experiment!r}: {_one_line(str(error))}")
        self.end_time = (self.final or {}).get("end_time") or time.time()
        if self.logdir is not None:
            self.write()
        if self._temporary_dir is not None:
            shutil.rmtree(self._temporary_dir, ignore_errors=True)
        if self._grafana is not None:
            self._annotate_in_grafana(self._grafana)
        if failure is not None and self._strict and raise_errors:
            raise failure
        return self.final

    def _annotate_in_grafana(self, grafana: GrafanaAnnotator) -> None:
        """Post the run's span to Grafana (experiment_impact_tracker.grafana); a failure is only a warning."""
        try:
            grafana.annotate(run_annotation(self.record()))
        except GrafanaError as error:
            warn(f"cannot annotate run {self.run_id} of {self.experiment!r} in Grafana: {error}")

    def _abandon(self) -> None:
        """Stop a run that was registered but cannot be handed out (its run.json failed), best effort."""
        self._stopped = True
        if self._monitor is not None:
            try:
                self._monitor.stop()
            except ImpactTrackerError:
                pass
        elif self._client is not None and self.run_id is not None and self.created:
            try:
                self._client.stop_run(self.run_id)
            except ImpactTrackerError:
                pass

    def record(self) -> dict[str, Any]:
        """What run.json holds (see experiment_impact_tracker.rundir)."""
        known = self.final or (self._registration.run if self._registration else {})
        standalone = {}
        if self._monitor is not None:  # what the reporter reads a run directory with samples.csv by (reporter/runs.py)
            standalone = {"hosts": self._monitor.hosts, "methods": self._monitor.methods, "source": "standalone"}
        return {
            "run_id": self.run_id,
            "tracked": self.tracked,
            "untracked_reason": self.untracked_reason,
            "joined": self.tracked and not self.created,
            "experiment": known.get("experiment", self.experiment),
            "set": known.get("set", self.set or ""),
            "labels": known.get("labels", self.labels),
            "exporter": self.address,
            "prometheus_url": self._prometheus_url,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "host": socket.gethostname(),
            "hardware": self._hardware,
            "pid": self.pid,
            "user": known.get("user") or _user_name(),
            "command": self.command,
            "final": self.final,
            "measured_by": self.measured_by,
            **standalone,
        }

    def write(self) -> Path | None:
        """(Re)write ``logdir/run.json`` atomically; None without a logdir."""
        if self.logdir is None:
            return None
        if self._hardware is None:
            self._hardware = describe_hardware()
        return write_run_dir(self.logdir, self.record())

    def _repr_html_(self) -> str:
        """The run's figures as an HTML table: what Jupyter shows for a run (experiment_impact_tracker.notebook)."""
        from experiment_impact_tracker.notebook import html_table

        return html_table(self)

    def __repr__(self) -> str:
        state = f"run_id={self.run_id!r}" if self.tracked else "untracked"
        return f"<Run {self.experiment!r} {state}>"


class RunTracker:
    """What ``track_run(...)`` returns: a context manager giving a Run, and a decorator (one run per call)."""

    def __init__(self, experiment: str, **options: Any) -> None:
        self.experiment = experiment
        self.options = options
        self._runs: list[Run] = []

    def __enter__(self) -> Run:
        run = Run.start(self.experiment, **self.options)
        self._runs.append(run)
        return run

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        # An exception from the block wins over a failure to stop: the latter is only logged then.
        self._runs.pop().stop(raise_errors=exc_type is None)

    def __call__(self, function: F) -> F:
        @functools.wraps(function)
        def tracked(*args: Any, **kwargs: Any) -> Any:
            with RunTracker(self.experiment, **self.options):
                return function(*args, **kwargs)

        return tracked  # type: ignore[return-value]


def track_run(
    experiment: str,
    set: str | None = None,  # noqa: A002
    labels: Mapping[str, Any] | None = None,
    logdir: str | os.PathLike[str] | None = None,
    strict: bool = False,
    *,
    run_id: str | None = None,
    pid: int | None = None,
    client: ExporterClient | None = None,
    standalone: StandaloneOptions | None = None,
) -> RunTracker:
    """Measure a block or function as one run of ``experiment``: ``with track_run(...) as run`` or
    ``@track_run(...)``. See the module docstring for what happens when the exporter is away; ``standalone``
    configures the measurement then."""
    return RunTracker(
        experiment,
        set=set,
        labels=labels,
        logdir=logdir,
        strict=strict,
        run_id=run_id,
        pid=pid,
        client=client,
        standalone=standalone,
    )


def check_run_health(run: Mapping[str, Any], now: float, stale_after: float = STALE_AFTER_SECONDS) -> None:
    """Raise RunUnhealthy, naming every problem, unless the run's figures are current and complete: the run
    is active, the exporter sampled within ``stale_after`` seconds, and every source is up."""
    problems = []
    if run.get("status") != "active":
        problems.append(f"the run is {run.get('status')}, so its figures no longer grow; start a new run")
    last = run.get("last_sample_time")
    if not isinstance(last, (int, float)) or now - last > stale_after:
        age = "never sampled" if not isinstance(last, (int, float)) else f"last sample {now - last:.1f} s ago"
        problems.append(
            f"impact-exporter's samples are stale ({age}, limit {stale_after:g} s): its sampler is stuck; see its log"
        )
    down = [name for name, up in (run.get("sources_up") or {}).items() if not up]
    if down:
        errors = run.get("source_errors") or {}
        listed = ", ".join(f"{name} ({errors.get(name, '?')} errors)" for name in sorted(down))
        problems.append(f"source(s) down: {listed}; that energy is not being measured; see the exporter's log")
    if problems:
        raise RunUnhealthy(f"run {run.get('run_id')}: " + "; ".join(problems))


def warn(message: str) -> None:
    """One warning line: through logging when the application configured it, else on stderr with our name
    (logging's last-resort output would drop the name and so leave the reader guessing who speaks)."""
    if log.hasHandlers():
        log.warning("%s", message)
    else:
        print(f"experiment_impact_tracker: warning: {message}", file=sys.stderr, flush=True)


def _register(
    client: ExporterClient,
    experiment: str,
    set: str | None,  # noqa: A002
    labels: Mapping[str, str],
    pid: int | None,
    run_id: str | None,
) -> Registration:
    """Start or join; on a conflict, use the cgroup run that holds the process (its user's Slurm job), or the
    active run ``run_id`` if it already measures the process."""
    try:
        return client.register(experiment, set=set, labels=labels, pid=pid, run_id=run_id)
    except ExporterError as error:
        if error.status == 409 and (holder := _cgroup_run_holding(error)) is not None:
            log.info(
                "process %d is in cgroup %s of run %s of %r (its job), which measures it: recording that run",
                pid if pid is not None else os.getpid(),
                holder["cgroup"],
                holder.get("run_id"),
                holder.get("experiment"),
            )
            return Registration(run=holder, created=False)
        if error.status != 409 or run_id is None:
            raise
        try:
            existing = client.get_run(run_id)
        except ExporterError as lookup:
            if lookup.status == 404:  # the conflict is about the process (it is in another run), not about the id
                raise error from None
            raise
        process = pid if pid is not None else os.getpid()
        if existing.get("status") != "active" or not measured_by_roots(process, existing.get("pids") or []):
            raise
        log.info(
            "process %d is already measured by run %s of %r (its root or a descendant of it); using that run",
            process,
            run_id,
            existing.get("experiment"),
        )
        return Registration(run=existing, created=False)


def standalone_allowed(environ: Mapping[str, str]) -> bool:
    """Whether a run no exporter answered for may be measured standalone (``$IMPACT_STANDALONE`` is not off)."""
    return environ.get(STANDALONE_ENV, "").strip().lower() not in ("0", "no", "off", "false")


def _standalone(
    experiment: str,
    set: str | None,  # noqa: A002
    labels: Mapping[str, str],
    pid: int | None,
    run_id: str,
    logdir: str | os.PathLike[str] | None,
    options: StandaloneOptions | None,
    unavailable: str,
) -> tuple[StandaloneMonitor | None, str | None]:
    """The standalone monitor of a run no exporter answered for, after one warning line saying so, how it is
    measured and what the monitor noted (RAPL unreadable: estimated); (None, why) with a warning when it cannot
    measure."""
    run_dir = Path(logdir) if logdir is not None else Path(tempfile.mkdtemp(prefix="impact-run-"))
    (run_dir / SAMPLES_CSV).write_text(SAMPLES_HEADER)  # OSError here, not later
    description = {"run_id": run_id, "experiment": experiment, "set": set or "", "labels": dict(labels)}
    try:
        monitor = StandaloneMonitor.start(
            pid if pid is not None else os.getpid(), run_dir, {**description, "user": _user_name()}, options
        )
    except ImpactTrackerError as error:
        (run_dir / SAMPLES_CSV).unlink(missing_ok=True)
        reason = f"{unavailable}; and {_one_line(str(error))}"
        warn(f"not tracking {experiment!r}: {reason}")
        return None, reason
    where = f"into {logdir}" if logdir is not None else "(give it a logdir to keep its samples)"
    notes = "".join(f"; {_one_line(note)}" for note in monitor.notes)
    warn(f"{unavailable}; so {experiment!r} is measured without it, {monitor.measured_by}, {where}{notes}")
    return monitor, None


def _cgroup_run_holding(error: ExporterError) -> dict[str, Any] | None:
    """The active cgroup run of the caller's own that a 409 names as already measuring the process, or None."""
    run = error.body.get("run")
    if isinstance(run, dict) and run.get("cgroup") and run.get("status") == "active" and run.get("run_id"):
        return run
    return None


def _grafana_annotator(environ: Mapping[str, str]) -> GrafanaAnnotator | None:
    """The Grafana annotator configured in ``environ`` (None when off); a half configuration is a warning."""
    try:
        return GrafanaAnnotator.from_environ(environ)
    except GrafanaError as error:
        warn(str(error))
        return None


def _user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _one_line(text: str) -> str:
    return " ".join(text.split())
