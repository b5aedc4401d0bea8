"""The run model: what a run was, and the raw samples of its counters, from Prometheus or from an archive.

Everything downstream (figures, tables, appendices) takes ``Run`` objects and does not care where they came
from. ``load_runs`` discovers runs in Prometheus through ``impact_run_info``; ``load_run_dirs`` reads run
directories (``run.json`` written by the experiment library, plus ``samples.csv`` once archived).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from experiment_impact_tracker.errors import RunDirError
from experiment_impact_tracker.rundir import read_run_dir, write_run_dir
from impact_reporter.nodes import (
    GPU_INFO_LABELS,
    HOST_INFO_LABELS,
    RUN_SERIES_LABELS,
    SOURCE_INFO_LABELS,
    SeriesIdentity,
    added_names,
    copies_problem,
)
from impact_reporter.prometheus import PrometheusClient, Series

T = TypeVar("T")
RUN_TIMES = ("impact_run_start_time_seconds", "impact_run_end_time_seconds", "impact_run_active")
RUN_TIME_SUMMARIES = {
    "impact_run_start_time_seconds": "min_over_time",
    "impact_run_end_time_seconds": "max_over_time",
    "impact_run_active": "last_over_time",
}
"""How each of RUN_TIMES is summarised per series by the store (PrometheusRuns._batch_times)."""
RUN_COUNTERS = (
    "impact_run_energy_joules_total",
    "impact_run_cpu_seconds_total",
    "impact_run_gpu_seconds_total",
    "impact_run_work_units_total",  # its unit label goes in the samples' component column
)
SAMPLE_COLUMNS = ["metric", "instance", "component", "timestamp", "value"]
MEASURED_BY_EXPORTER = "impact-exporter"
"""``Run.measured_by`` of runs an exporter measured (read from Prometheus, or archives of them)."""
DESCRIPTIVE = frozenset(
    {"__name__", "instance", "job", "run_id", "experiment", "set", "user", "pod_uid", "container_id"}
)
MATCHER = re.compile(r"\{.*\}", re.DOTALL)
DEFAULT_SETTLE_SECONDS = 60.0
"""How long after a run's end its final samples may still be on their way to the store (scrape interval,
remote_write batching, VictoriaMetrics' 30 s ``-search.latencyOffset``): a report within it waits for them."""
END_MARGIN_SECONDS = 300.0
"""Samples read past a run's end: finished runs stay exported a while, and their last scrape may come late."""
MAX_QUERY_BYTES = 8192
"""Longest PromQL the reporter sends: VictoriaMetrics refuses queries over 16 KB by default
(``-search.maxQueryLen``), so queries that name runs are split into batches below this."""
ID_BUDGET_BYTES = MAX_QUERY_BYTES - 512
"""What the run-id and user regexes of one batch may take; the rest of the query is well under 512 bytes."""


RunKey = tuple[str, str]
"""A run as Prometheus tells runs apart: its run id and its user."""
UNSCOPED = ""
"""The user of series from exporters that labelled per-run series by run id alone: they are read with the run of
that id whose ``impact_run_info`` names the user."""


class RunDataError(Exception):
    """Runs cannot be read as asked: no run matched, a run has no samples, a run directory is unusable."""


@dataclass(frozen=True)
class Host:
    """One node a run ran on, as its exporter's ``impact_host_info`` describes it."""

    instance: str
    hostname: str = ""
    cpu_model: str = ""
    cpu_vendor: str = ""
    cpu_count: str = ""
    kernel: str = ""
    gpus: tuple[str, ...] = ()  # "NVIDIA A100-SXM4-40GB (driver 550.54.15)", from impact_gpu_info
    region: str = ""  # the grid region its exporter was given (--carbon.region), "" when none


@dataclass(frozen=True)
class Run:
    """One experiment run: its identity and labels, where and when it ran, and its counters' raw samples.

    ``samples`` has one row per raw sample: ``metric`` (e.g. ``impact_run_energy_joules_total``),
    ``instance`` (the node's name: its instance, with the store's other labels such as ``node1:9100{cluster="a"}``,
    see impact_reporter.nodes), ``component`` (the unit for ``impact_run_work_units_total``, "" for counters
    without either), ``timestamp`` (unix seconds) and ``value``.
    ``end_time`` is None for a run still active when it was read. ``methods`` says per component how its
    energy was obtained (``rapl``, ``nvml``, ``estimate``), ``source`` where the run was read from.
    ``not_measured`` is why the run has no figures although it was found ("" when it may have them): no start
    time among its samples (``start_time`` is then its first sample's, or the window's start, only to list it),
    or a run that ended too recently for its final samples to have reached the store. ``measured_by`` is what
    measured it: "impact-exporter", or the standalone monitor with its sources (exporter/standalone.py), as the
    run directory's run.json says.
    """

    run_id: str
    experiment: str
    set: str
    labels: Mapping[str, str]
    user: str
    start_time: float
    end_time: float | None
    hosts: tuple[Host, ...]
    methods: Mapping[str, str]
    samples: pd.DataFrame = field(repr=False, compare=False)
    source: str = ""
    not_measured: str = ""
    measured_by: str = MEASURED_BY_EXPORTER

    @property
    def instances(self) -> tuple[str, ...]:
        return tuple(host.instance for host in self.hosts)

    def metadata(self) -> dict[str, Any]:
        """Everything but the samples, as plain JSON-able data (what an archive's run.json holds)."""
        return {
            "run_id": self.run_id,
            "experiment": self.experiment,
            "set": self.set,
            "labels": dict(self.labels),
            "user": self.user,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "hosts": [{**host.__dict__, "gpus": list(host.gpus)} for host in self.hosts],
            "methods": dict(self.methods),
            "source": self.source,
            "measured_by": self.measured_by,
        }


def run_info_selectors(matchers: Sequence[str]) -> list[str]:
    """``impact_run_info{...}`` selectors for the user's label matchers (each ``{...}``; none means all runs)."""
    if not matchers:
        return ["impact_run_info"]
    selectors = []
    for matcher in matchers:
        matcher = matcher.strip()
        if not MATCHER.fullmatch(matcher):
            raise ValueError(f"--match {matcher!r}: expected label matchers in braces, e.g. '{{experiment=\"x\"}}'")
        selectors.append(f"impact_run_info{matcher}")
    return selectors


@dataclass(frozen=True)
class _Found:
    """A run as discovery sees it before its samples are read: one user's run id (exporters scope ids by user),
    the ``instance``s of its ``impact_run_info`` series and their label sets (``info``: one per node and copy)."""

    run_id: str
    user: str
    labels: Mapping[str, str]
    instances: tuple[str, ...]
    info: tuple[Mapping[str, str], ...] = ()
    seen: tuple[float, float] = (-math.inf, math.inf)  # the span of the windows with its impact_run_info samples


@dataclass
class _Times:
    """Per (run id, user), from the raw samples of its times: start (earliest over nodes), end (latest), when the
    newest sample saying it is active was taken (``active_at``: present only for runs some node's newest sample
    says are active), the same for runs that some node says ended but whose end time that node's series do not
    hold yet (``end_pending``), and the names of the labels the store added to its series."""

    starts: dict[RunKey, float] = field(default_factory=dict)
    ends: dict[RunKey, float] = field(default_factory=dict)
    active_at: dict[RunKey, float] = field(default_factory=dict)
    end_pending: dict[RunKey, float] = field(default_factory=dict)
    added: dict[RunKey, set[str]] = field(default_factory=dict)

    def update(self, other: _Times) -> None:
        self.starts.update(other.starts)
        self.ends.update(other.ends)
        self.active_at.update(other.active_at)
        self.end_pending.update(other.end_pending)
        self.added.update(other.added)

    def key(self, own: RunKey) -> RunKey:
        """The key a run's times are under: its own, or its run id alone for series without a user (older
        exporters)."""
        return own if own in self.starts else (own[0], UNSCOPED)

    def known_until(self, key: RunKey) -> float | None:
        """How far the store knows a run that has no end time yet: the newest sample saying it is active. None
        for a run whose end the store holds."""
        if key in self.active_at:
            return self.active_at[key]
        return self.end_pending.get(key)

    def end(self, key: RunKey) -> float | None:
        """The run's end; None while the store knows it only up to some sample (``known_until``)."""
        return None if self.known_until(key) is not None else self.ends.get(key)

    def read_until(self, key: RunKey, end: float, now: float) -> float:
        """How far the run's counter samples are read: a little past its end, and no further than the window's
        end, now, or, for a run without its end, the newest sample saying it is active (counter samples the
        store received since, as remote_write delivers series in any order, may already hold the run's end, and
        a finished run's counters stay exported after it)."""
        run_end = self.end(key)
        until = min(end, now, (run_end or end) + END_MARGIN_SECONDS)
        known_until = self.known_until(key)
        return until if known_until is None else min(until, known_until)


class PrometheusRuns:
    """Reads runs from a Prometheus (or anything that speaks its HTTP API)."""

    def __init__(
        self,
        client: PrometheusClient,
        clock: Callable[[], float] = time.time,
        settle_seconds: float = DEFAULT_SETTLE_SECONDS,
        replica_labels: Sequence[str] = (),
    ) -> None:
        """``settle_seconds``: a run that ended less long ago whose final samples (at or after its end, from every
        node) are not all in the store yet is listed as not measured, still settling; 0 reports it as it is.
        ``replica_labels``: labels that tell HA replicas apart, besides the common ones (impact_reporter.nodes)."""
        self._client = client
        self._clock = clock
        self._settle_seconds = settle_seconds
        self._identity = SeriesIdentity(replica_labels)

    def load(
        self,
        matchers: Sequence[str],
        start: float,
        end: float,
        progress: Callable[[int, int, str], None] | None = None,
    ) -> list[Run]:
        """Every run with an ``impact_run_info`` series in [start, end] that matches one of ``matchers``."""
        found = self._discover(run_info_selectors(matchers), start, end)
        if not found:
            shown = " or ".join(matchers) if matchers else "any run"
            raise RunDataError(f"no run matches {shown} between {_iso(start)} and {_iso(end)}")
        return self._load_found(found, start, end, progress)

    def load_ids(self, run_ids: Sequence[str], start: float, end: float, user: str = "") -> list[Run]:
        """The runs with these ids (say, from run directories), of ``user`` when given, looked for in [start, end]."""
        of_user = f',user="{_quoted(user)}"' if user else ""
        found = self._discover([f'impact_run_info{{run_id="{run_id}"{of_user}}}' for run_id in run_ids], start, end)
        missing = set(run_ids) - {run.run_id for run in found}
        if missing:
            raise RunDataError(
                f"run {', '.join(sorted(missing))} has no impact_run_info in Prometheus between {_iso(start)} and "
                f"{_iso(end)}: check --prometheus, or that its data is still retained (archive runs with "
                "'impact-report archive' to keep them)"
            )
        return self._load_found(found, start, end, None)

    def _load_found(
        self, found: list[_Found], start: float, end: float, progress: Callable[[int, int, str], None] | None
    ) -> list[Run]:
        times = self._times(found, start, end)
        host_info = self._info("impact_host_info", start, end)
        hosts = self._hosts(host_info, start, end)
        host_added = self._host_added(host_info)
        methods = self._methods(start, end)
        now = self._clock()
        nodes: dict[RunKey, tuple[str, ...]] = {}
        windows: dict[RunKey, tuple[float, float]] = {}  # the (start, end] each run's samples are read in
        for run in found:
            own = (run.run_id, run.user)
            key = times.key(own)
            added = times.added.get(key, set()).union(*(host_added.get(instance, ()) for instance in run.instances))
            nodes[own] = self._nodes(run, added)
            run_start = times.starts.get(key, start)
            windows[own] = (run_start - 1.0, max(times.read_until(key, end, now), run_start))
        samples = self._samples(found, windows, progress)
        runs = []
        for run in found:
            own = (run.run_id, run.user)
            key = times.key(own)
            known_start = times.starts.get(key)
            run_start = start if known_start is None else known_start
            run_end = times.end(key)
            run_samples = samples[own]
            if known_start is None:
                not_measured = (
                    f"run {run.run_id} has no impact_run_start_time_seconds sample between {_iso(start)} and "
                    f"{_iso(end)}: its start is unknown, so no figure would be right; widen the window (--since, "
                    "--start) to include its start"
                )
                if len(run_samples):
                    run_start = float(run_samples["timestamp"].min())
            elif key in times.end_pending:
                not_measured = self._end_pending(run, times.end_pending[key])
            else:
                not_measured = self._settling(run, nodes[own], run_end, run_samples)
            runs.append(
                Run(
                    run_id=run.run_id,
                    experiment=run.labels.get("experiment", ""),
                    set=run.labels.get("set", ""),
                    labels=self._run_labels(run, added),
                    user=run.user,
                    start_time=run_start,
                    end_time=run_end,
                    hosts=tuple(hosts.get(node, Host(node)) for node in nodes[own]),
                    methods=_merge_methods(methods, nodes[own]),
                    samples=run_samples,
                    source=self._client.url,
                    not_measured=not_measured,
                )
            )
        return sorted(runs, key=lambda run: (run.start_time, run.run_id))

    def _run_labels(self, run: _Found, added: set[str]) -> dict[str, str]:
        """The run's own labels: those of its ``impact_run_info`` but the descriptive ones and those the store
        added (``added``: found on its per-run series or its nodes' ``impact_host_info``, which carry none of the
        run's labels), such as external labels (``cluster``, ``replica``). A run label that a replica label is
        named like (an experiment's ``replica="3"``) is the run's: the exporter's series do not carry it."""
        return {name: value for name, value in run.labels.items() if name not in DESCRIPTIVE and name not in added}

    def _nodes(self, run: _Found, added: set[str]) -> tuple[str, ...]:
        """The names of the nodes the run's ``impact_run_info`` series come from, each once however many copies."""
        return tuple(
            sorted({self._identity.origin(info, set(info) - added - {"instance", "job"}).node for info in run.info})
        )

    def _settling(self, run: _Found, nodes: Sequence[str], run_end: float | None, samples: pd.DataFrame) -> str:
        """Why the run must wait ("" when it need not): it ended less than the settle time ago, and some node's
        energy samples do not reach its end yet."""
        if run_end is None:
            return ""
        ago = self._clock() - run_end
        if ago >= self._settle_seconds:
            return ""
        energy = samples[samples["metric"] == "impact_run_energy_joules_total"]
        newest = energy.groupby("instance")["timestamp"].max()
        if all(newest.get(node, -math.inf) >= run_end for node in nodes):
            return ""
        return (
            f"run {run.run_id} is still settling: it ended {ago:.0f} s ago and the store does not hold its final "
            f"samples from every node yet; report again in {self._settle_seconds - ago:.0f} s, or pass --settle=0 "
            "to report it as it is"
        )

    def _end_pending(self, run: _Found, last_active: float) -> str:
        """Why a run that a node says ended, but whose end time the store does not hold, has no figures ("" with
        --settle=0: it is reported as it is, active up to ``last_active``, the newest sample saying so)."""
        if self._settle_seconds <= 0:
            return ""
        ago = self._clock() - last_active
        if ago < self._settle_seconds:
            return (
                f"run {run.run_id} is still settling: it ended less than {ago:.0f} s ago and the store does not "
                f"hold its end time from every node yet; report again in {self._settle_seconds - ago:.0f} s, or pass "
                "--settle=0 to report it as it is (active up to its last sample saying so)"
            )
        return (
            f"run {run.run_id} ended (impact_run_active went to 0 {ago:.0f} s ago) but the store holds no "
            "impact_run_end_time_seconds for it from every node, so its duration is unknown: check that no "
            "relabelling rule drops that metric, or pass --settle=0 to report it as active up to its last sample "
            "saying so"
        )

    def _discover(self, selectors: list[str], start: float, end: float) -> list[_Found]:
        """The runs the selectors find, one per run id and user; RunDataError for a run id of several users.

        A run counts only where its ``impact_run_info`` has a finite sample inside the window, which the store
        tells per series and 6-hour window (``last_over_time``, which skips staleness markers) rather than by
        sending every sample: ``/api/v1/series`` may answer for more (VictoriaMetrics answers it from a per-day
        index), and a query evaluated at the window's end misses a series whose last sample there is a staleness
        marker. A run's ``seen`` is the span of the 6-hour windows it has samples in.
        """
        by_run: dict[tuple[str, str], dict[str, Any]] = {}
        rollups = self._client.window_rollups
        answers = (answer for selector in selectors for answer in rollups("last_over_time", selector, start, end))
        for window, sample in ((answer, sample) for answer in answers for sample in answer.samples):
            labels = {name: value for name, value in sample.labels.items() if name != "__name__"}
            run_id = labels.get("run_id", "")
            if not run_id or not math.isfinite(sample.value):
                continue
            entry = by_run.setdefault(
                (run_id, labels.get("user", "")), {"labels": labels, "info": [], "seen": (math.inf, -math.inf)}
            )
            if labels not in entry["info"]:
                entry["info"].append(labels)
            entry["seen"] = (min(entry["seen"][0], window.start), max(entry["seen"][1], window.end))
        found = [
            _Found(
                run_id,
                user,
                entry["labels"],
                tuple(sorted({info.get("instance", "") for info in entry["info"]})),
                tuple(entry["info"]),
                entry["seen"],
            )
            for (run_id, user), entry in sorted(by_run.items(), key=lambda item: item[0])
        ]
        _refuse_shared_run_ids(found)
        return found

    def _times(self, found: list[_Found], start: float, end: float) -> _Times:
        """The runs' times (see _batch_times), asked in batches of runs whose queries stay under MAX_QUERY_BYTES.

        Runs are batched in the order of their first ``impact_run_info`` sample, and a batch is read only over
        the windows its runs' info samples lie in (the gauges come in the same scrapes), not the whole window: over a
        month, a batch of runs taken in id order would span all of it, and its times would take a request per
        6 hours of the month.
        """

        def spanned_times(batch: list[_Found]) -> _Times:
            first = max(start, min(run.seen[0] for run in batch))
            last = min(end, max(run.seen[1] for run in batch))
            return self._batch_times(batch, first, last)

        times = _Times()
        for _, batch_times in each_batch(spanned_times, run_batches(sorted(found, key=lambda run: run.seen))):
            times.update(batch_times)
        return times

    def _batch_times(self, found: list[_Found], start: float, end: float) -> _Times:
        """The times of a batch of runs (see _raw_times), summarised by the store: each series' earliest start,
        latest end and last activity in (start, end] (``*_over_time``), a value per series instead of every
        sample of three gauges. Only runs that some node does not show as ended (last activity 0, end time
        stored) are read again from the raw samples, which alone tell when the newest sample was taken.
        """
        times = _Times()
        copies: dict[tuple[RunKey, str, float], set[frozenset[tuple[str, str]]]] = defaultdict(set)
        ended_nodes: set[tuple[RunKey, str]] = set()
        last_activity: dict[frozenset[tuple[str, str]], tuple[RunKey, str, float]] = {}  # per series
        for metric, function in RUN_TIME_SUMMARIES.items():
            for window in self._client.window_rollups(function, batch_selector(found, [metric]), start, end):
                for sample in (sample for sample in window.samples if math.isfinite(sample.value)):
                    key = (sample.labels.get("run_id", ""), sample.labels.get("user", ""))
                    origin = self._identity.origin(sample.labels, RUN_SERIES_LABELS)
                    times.added.setdefault(key, set()).update(added_names(sample.labels, RUN_SERIES_LABELS))
                    if metric == "impact_run_start_time_seconds":
                        times.starts[key] = min(times.starts.get(key, math.inf), sample.value)
                        copies[(key, sample.labels.get("instance", ""), sample.value)].add(origin.added)
                    elif metric == "impact_run_end_time_seconds":
                        times.ends[key] = max(times.ends.get(key, -math.inf), sample.value)
                        ended_nodes.add((key, origin.node))
                    else:
                        series = frozenset(sample.labels.items())  # a later window's value replaces an earlier one's
                        last_activity[series] = (key, origin.node, sample.value)
        _refuse_copies(copies)
        unsettled = {key for key, node, active in last_activity.values() if active or (key, node) not in ended_nodes}
        raw = [run for run in found if times.key((run.run_id, run.user)) in unsettled]
        if raw:
            times.update(self._raw_times(raw, start, end))
        return times

    def _raw_times(self, found: list[_Found], start: float, end: float) -> _Times:
        """Per (run id, user): start (earliest over nodes), end (latest), whether any node's newest sample says
        the run is still active, and whether a node says it ended without its end time in the store (remote_write
        may deliver ``impact_run_active``'s 0 before the new end-time series), all read from the raw samples in
        (start, end]; and the labels the store added.

        Read from the samples rather than evaluated at the window's end, these do not depend on when the store
        considers its newest data complete (VictoriaMetrics answers queries near now as of 30 s earlier) nor on
        how late remote_write delivers; stale markers (non-finite) are gaps. A node's activity is its newest
        sample over its copies (HA replicas), so a replica that stopped writing while the run was active does
        not keep it active. RunDataError when one node's series come in copies that no replica label tells
        apart (see _refuse_copies).
        """
        selector = batch_selector(found, RUN_TIMES)
        times = _Times()
        newest: dict[tuple[RunKey, str], tuple[float, float]] = {}
        last_active: dict[RunKey, float] = {}
        ended_nodes: set[tuple[RunKey, str]] = set()
        copies: dict[tuple[RunKey, str, float], set[frozenset[tuple[str, str]]]] = defaultdict(set)
        for series in self._client.raw_samples(selector, start, end):
            finite = np.isfinite(series.values)
            if not finite.any():
                continue
            values, timestamps = series.values[finite], series.timestamps[finite]
            key = (series.labels.get("run_id", ""), series.labels.get("user", ""))
            origin = self._identity.origin(series.labels, RUN_SERIES_LABELS)
            times.added.setdefault(key, set()).update(added_names(series.labels, RUN_SERIES_LABELS))
            name = series.labels.get("__name__", "")
            if name == "impact_run_start_time_seconds":
                first = float(values.min())
                times.starts[key] = min(times.starts.get(key, math.inf), first)
                copies[(key, series.labels.get("instance", ""), first)].add(origin.added)
            elif name == "impact_run_end_time_seconds":
                times.ends[key] = max(times.ends.get(key, -math.inf), float(values.max()))
                ended_nodes.add((key, origin.node))
            else:
                if (values == 1.0).any():
                    last_active[key] = max(last_active.get(key, -math.inf), float(timestamps[values == 1.0][-1]))
                if (key, origin.node) not in newest or timestamps[-1] > newest[(key, origin.node)][0]:
                    newest[(key, origin.node)] = (float(timestamps[-1]), float(values[-1]))
        for (key, node), (when, value) in newest.items():
            if value == 1.0:
                times.active_at[key] = max(times.active_at.get(key, -math.inf), when)
            elif (key, node) not in ended_nodes:
                times.end_pending[key] = last_active.get(key, times.starts.get(key, when))
        for key in times.active_at:
            times.end_pending.pop(key, None)
        _refuse_copies(copies)
        return times

    def _info(self, metric: str, start: float, end: float) -> list[dict[str, str]]:
        """The label sets of an info metric's series in [start, end]: its labels are its data, and reading them
        from the series index does not depend on how recent data a store answers queries with."""
        return self._client.series([metric], start, end)

    def _hosts(self, host_info: list[dict[str, str]], start: float, end: float) -> dict[str, Host]:
        """Each node's host, by node name, from the label sets of ``impact_host_info``."""
        gpus = self._gpus(start, end)
        hosts = {}
        for labels in host_info:
            node = self._identity.origin(labels, HOST_INFO_LABELS).node
            hosts[node] = Host(
                instance=node,
                hostname=labels.get("hostname", ""),
                cpu_model=labels.get("cpu_model", ""),
                cpu_vendor=labels.get("cpu_vendor", ""),
                cpu_count=labels.get("cpu_count", ""),
                kernel=labels.get("kernel", ""),
                gpus=gpus.get(node, ()),
                region=labels.get("region", ""),
            )
        return hosts

    def _host_added(self, host_info: list[dict[str, str]]) -> dict[str, set[str]]:
        """Per instance, the names of the labels the store added to its ``impact_host_info``."""
        added: dict[str, set[str]] = defaultdict(set)
        for labels in host_info:
            added[labels.get("instance", "")].update(added_names(labels, HOST_INFO_LABELS))
        return added

    def _gpus(self, start: float, end: float) -> dict[str, tuple[str, ...]]:
        """Each node's GPUs with their driver, in index order (each once, however many copies of the node)."""
        found: dict[str, set[tuple[int, str]]] = defaultdict(set)
        for labels in self._info("impact_gpu_info", start, end):
            index = int(labels.get("gpu", "0") or 0)
            found[self._identity.origin(labels, GPU_INFO_LABELS).node].add(
                (index, f"{labels.get('name', '')} (driver {labels.get('driver_version', '') or 'unknown'})")
            )
        return {node: tuple(text for _, text in sorted(gpus)) for node, gpus in found.items()}

    def _methods(self, start: float, end: float) -> dict[str, dict[str, str]]:
        """Per node, each component's energy method."""
        methods: dict[str, dict[str, str]] = defaultdict(dict)
        for labels in self._info("impact_energy_source_info", start, end):
            node = self._identity.origin(labels, SOURCE_INFO_LABELS).node
            methods[node][labels.get("component", "")] = labels.get("method", "")
        return methods

    def _samples(
        self,
        found: list[_Found],
        windows: Mapping[RunKey, tuple[float, float]],
        progress: Callable[[int, int, str], None] | None,
    ) -> dict[RunKey, pd.DataFrame]:
        """Each run's raw counter samples in its own window (start, end], keyed by (run id, user).

        Read for a batch of runs at a time (see run_batches: one selector under MAX_QUERY_BYTES), over the
        windows of the batch together; runs are batched in the order of their windows, so that a batch spans
        little time and its requests grow with the batches, not the runs.
        """
        ordered = sorted(found, key=lambda run: windows[(run.run_id, run.user)])
        samples: dict[RunKey, pd.DataFrame] = {}
        for batch, batch_samples in each_batch(lambda batch: self._batch_samples(batch, windows), run_batches(ordered)):
            samples.update(batch_samples)
            if progress is not None:
                progress(len(samples), len(found), batch[-1].run_id)
        return samples

    def _batch_samples(
        self, batch: list[_Found], windows: Mapping[RunKey, tuple[float, float]]
    ) -> dict[RunKey, pd.DataFrame]:
        """The samples of one batch, one replica per node (SeriesIdentity.one_replica): a series goes to the run of
        its run id and user, or, without a user (older exporters), to the run of its run id; each run keeps the
        samples in its own window."""
        selector = batch_selector(batch, RUN_COUNTERS)
        own = [(run.run_id, run.user) for run in batch]
        unscoped = {run_id: (run_id, user) for run_id, user in own}
        first = min(windows[key][0] for key in own)
        last = max(windows[key][1] for key in own)
        pieces: dict[RunKey, list[tuple[str, Series]]] = {key: [] for key in own}
        read = self._client.raw_samples(selector, first, last)
        for node, series in self._identity.one_replica(read, RUN_SERIES_LABELS):
            key = (series.labels.get("run_id", ""), series.labels.get("user", ""))
            if key not in pieces:
                if key[1] != UNSCOPED or key[0] not in unscoped:
                    continue
                key = unscoped[key[0]]
            window_start, window_end = (round(edge * 1000) for edge in windows[key])
            millis = np.round(series.timestamps * 1000).astype(np.int64)
            keep = (millis > window_start) & (millis <= window_end)
            if keep.any():
                pieces[key].append((node, Series(series.labels, series.timestamps[keep], series.values[keep])))
        return samples_frames(pieces)


READERS = 2
"""Batches read at once: while the store answers one, the reporter decodes another."""


def each_batch(read: Callable[[list[_Found]], T], batches: list[list[_Found]]) -> Iterator[tuple[list[_Found], T]]:
    """Each batch with what ``read`` gives for it, in order, READERS batches read at a time."""
    with ThreadPoolExecutor(max_workers=READERS) as pool:
        yield from zip(batches, pool.map(read, batches), strict=True)


def batch_selector(batch: Sequence[_Found], names: Sequence[str]) -> str:
    """The selector of the series named ``names`` of a batch of runs (run_batches keeps it under
    MAX_QUERY_BYTES), with the series of older exporters, which have no user label."""
    ids = _id_regex(run.run_id for run in batch)
    users = "|".join(_quoted(re.escape(user)) for user in {run.user for run in batch} | {UNSCOPED})
    return f'{{__name__=~"{"|".join(names)}",run_id=~"{ids}",user=~"{users}"}}'


def samples_frames(pieces: Mapping[RunKey, Sequence[tuple[str, Series]]]) -> dict[RunKey, pd.DataFrame]:
    """Each run's series, with the name of the node each came from, as its samples table (SAMPLE_COLUMNS), stale
    markers left out; a work counter's unit goes in the component column.

    One table is built for all the runs and each run gets its own rows of it: pandas spends about half a
    millisecond making a table however few its rows, which a report of thousands of runs paid once per run.
    """
    series = [(key, s) for key, run_series in pieces.items() for _, s in run_series]
    node_names = [node for run_series in pieces.values() for node, _ in run_series]
    finite = [np.isfinite(s.values) for _, s in series]
    lengths = [int(keep.sum()) for keep in finite]

    def repeated(texts: list[str]) -> np.ndarray:
        return np.repeat(np.array(texts, dtype=object), lengths)

    def column(values: Callable[[Series], np.ndarray]) -> np.ndarray:
        return np.concatenate([values(s)[keep] for (_, s), keep in zip(series, finite, strict=True)] or [[]])

    frame = pd.DataFrame(
        {
            "metric": repeated([s.labels.get("__name__", "") for _, s in series]),
            "instance": repeated(node_names),
            "component": repeated([s.labels.get("component", "") or s.labels.get("unit", "") for _, s in series]),
            "timestamp": column(lambda s: s.timestamps),
            "value": column(lambda s: s.values),
        },
        columns=SAMPLE_COLUMNS,
    )
    rows: dict[RunKey, int] = dict.fromkeys(pieces, 0)
    for (key, _), length in zip(series, lengths, strict=True):
        rows[key] += length
    ends = np.cumsum(list(rows.values())).tolist()
    return {
        key: frame.iloc[end - count : end].reset_index(drop=True)
        for (key, count), end in zip(rows.items(), ends, strict=True)
    }


def finite_samples(samples: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``samples`` whose value is a finite number.

    A store returns Prometheus' staleness markers (a target that stopped being scraped: an exporter restart, a
    node gone after its run) as NaN samples, as VictoriaMetrics does; they mark a gap, not a value, so every
    figure is computed over the finite samples alone, as Prometheus' own range selectors do.
    """
    finite = np.isfinite(pd.to_numeric(samples["value"], errors="coerce").to_numpy(dtype=float))
    return samples if finite.all() else samples[finite].reset_index(drop=True)


def _merge_methods(methods: Mapping[str, Mapping[str, str]], instances: Iterable[str]) -> dict[str, str]:
    """Per component, the method every node used; "mixed: a, b" where nodes differ."""
    seen: dict[str, set[str]] = defaultdict(set)
    for instance in instances:
        for component, method in methods.get(instance, {}).items():
            seen[component].add(method)
    return {
        component: ", ".join(sorted(m)) if len(m) == 1 else "mixed: " + ", ".join(sorted(m))
        for component, m in seen.items()
    }


def _refuse_copies(copies: Mapping[tuple[RunKey, str, float], set[frozenset[tuple[str, str]]]]) -> None:
    """RunDataError when one node's series of a run come in copies with different labels that no replica label
    tells apart (``copies``: per run, instance and start time, the added labels of each copy).

    Copies of one node are told by the run's start time on the node, the exporter's clock when it registered the
    run: one exporter's copies, written by several Prometheus servers, share it, while two nodes, even with the
    same instance (two clusters' ``node1:9100``), registered the run at different moments.
    """
    for ((run_id, _), instance, _), labels in copies.items():
        if len(labels) > 1:
            raise RunDataError(copies_problem(run_id, instance, labels))


def _refuse_shared_run_ids(found: Sequence[_Found]) -> None:
    """RunDataError when a run id belongs to more than one user: exporters keep such runs apart (ids are scoped by
    user), and reading them as one run would add one user's energy to another's."""
    users: dict[str, list[_Found]] = defaultdict(list)
    for run in found:
        users[run.run_id].append(run)
    shared = {run_id: runs for run_id, runs in users.items() if len(runs) > 1}
    if not shared:
        return
    run_id, runs = next(iter(shared.items()))
    held = " and ".join(f"{run.user or '(no user)'} ({', '.join(run.instances)})" for run in runs)
    raise RunDataError(
        f"run id {run_id} belongs to several users: {held}; they are different runs, so the report would mix "
        f'them: choose one user\'s with --match \'{{run_id="{run_id}",user="{runs[0].user}"}}\''
        + (
            f' ({len(shared) - 1} more run ids are shared too: add user="..." to every --match)'
            if len(shared) > 1
            else ""
        )
    )


def run_batches(found: Sequence[_Found], budget: int = ID_BUDGET_BYTES) -> list[list[_Found]]:
    """``found`` in consecutive batches whose run-id and user regexes together take at most ``budget`` bytes
    (a single run longer than that is a batch of its own)."""
    batches: list[list[_Found]] = []
    batch: list[_Found] = []
    users: set[str] = set()
    size = 0
    for run in found:
        cost = len(_id_regex([run.run_id]).encode()) + 1
        if run.user not in users:
            cost += len(_quoted(re.escape(run.user)).encode()) + 1
        if batch and size + cost > budget:
            batches.append(batch)
            batch, users, size = [], set(), 0
            cost = len(_id_regex([run.run_id]).encode()) + len(_quoted(re.escape(run.user)).encode()) + 2
        batch.append(run)
        users.add(run.user)
        size += cost
    return batches + [batch] if batch else batches


def _quoted(text: str) -> str:
    """``text`` escaped for a double-quoted PromQL string."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _id_regex(run_ids: Iterable[str]) -> str:
    """A PromQL regex (inside a double-quoted string) matching exactly these run ids."""
    return "|".join(run_id.replace(".", "\\\\.") for run_id in run_ids)


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


ARCHIVE_SAMPLES = "samples.csv"


def load_run_dirs(
    directories: Sequence[Path],
    prometheus: Callable[[str | None], PrometheusRuns],
    clock: Callable[[], float] = time.time,
) -> list[Run]:
    """Runs from run directories: archived ones and experiment-impact-tracker 0.1's logs from their own files, the
    others from their Prometheus.

    Each path may be a run directory, an old log's ``impacttracker/`` folder, or a directory under which they are
    found (``legacy.run_directories``). ``prometheus(url)`` gives the reader for a run.json's ``prometheus_url``
    (the CLI's --prometheus, when given, overrides it).
    """
    from impact_reporter import legacy  # legacy builds Run objects from this module, so it imports it first

    runs = []
    for directory in legacy.expand(directories):
        if legacy.is_legacy_dir(directory):
            runs.append(legacy.legacy_run(directory))
            continue
        try:
            record = read_run_dir(directory)
        except RunDirError as error:
            raise RunDataError(str(error)) from error
        if (Path(directory) / ARCHIVE_SAMPLES).exists():
            runs.append(read_archive(Path(directory), record))
            continue
        if not record.get("run_id") or record.get("tracked") is False:
            raise RunDataError(f"{directory}: the run was not tracked by an exporter, so it has no measurements")
        start = float(record["start_time"]) - 60.0
        end = min(clock(), float(record.get("end_time") or clock()) + END_MARGIN_SECONDS)
        reader = prometheus(record.get("prometheus_url"))
        runs.extend(reader.load_ids([record["run_id"]], start, end, record.get("user") or ""))
    return runs


def read_archive(directory: Path, record: Mapping[str, Any]) -> Run:
    """A run saved by ``write_archive``, or measured by a standalone monitor: its run.json and its samples.csv."""
    try:
        samples = pd.read_csv(directory / ARCHIVE_SAMPLES, dtype={"component": str, "instance": str}).fillna(
            {"component": ""}
        )
    except (OSError, ValueError) as error:
        raise RunDataError(f"cannot read {directory / ARCHIVE_SAMPLES}: {error}") from error
    return Run(
        run_id=record["run_id"],
        experiment=record["experiment"],
        set=record.get("set") or "",
        labels=dict(record.get("labels") or {}),
        user=record.get("user", ""),
        start_time=float(record["start_time"]),
        end_time=None if record.get("end_time") is None else float(record["end_time"]),
        hosts=tuple(Host(**{**host, "gpus": tuple(host.get("gpus", ()))}) for host in record.get("hosts", [])),
        methods=dict(record.get("methods") or {}),
        samples=finite_samples(samples[SAMPLE_COLUMNS]),
        source=f"archive {directory}",
        measured_by=str(record.get("measured_by") or MEASURED_BY_EXPORTER),
    )


def write_archive(run: Run, directory: Path) -> Path:
    """Save a run (its metadata as run.json, its raw samples as samples.csv) so reports work months later.

    Both files are replaced atomically; ``read_archive`` (through ``load_run_dirs``) reads them back.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{ARCHIVE_SAMPLES}.")
    with os.fdopen(fd, "w") as file:
        run.samples[SAMPLE_COLUMNS].to_csv(file, index=False, float_format="%.17g")
    os.replace(temp, directory / ARCHIVE_SAMPLES)
    return write_run_dir(directory, {**run.metadata(), "archived_at": time.time()})
