"""Limits on what callers of the run API can make the exporter hold: runs, registrations, labels and stored runs.

One user in the socket's group must not be able to grow the exporter's memory, its ``/metrics`` or its store
without bound, nor crowd out other users' runs. Every limit is a flag (``add_limit_flags``), so an operator can
raise it where legitimate use needs more; every refusal names its flag. Per-user limits bind every uid but 0:
root (and a TCP token holder, who acts as root) may already register any process and is the node's
administrator. ``--limits.runs`` binds everyone, root included: it is what bounds memory and ``/metrics``.

A bound that follows from the defaults: ``/metrics`` holds at most ``runs`` runs, each with at most
``SERIES_PER_RUN`` series and one ``impact_run_info`` series of at most ``labels`` user labels whose names and
values, experiment and set included, take at most ``label_bytes`` bytes.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

from experiment_impact_tracker.durations import parse_duration

SERIES_PER_RUN = 9
"""Series of one run in /metrics at most: info, start, end, active, cpu time, GPU time, and energy of cpu, dram
and gpu (exporter/collector.py RUN_FAMILIES)."""


@dataclass(frozen=True)
class Limits:
    """The limits, with their defaults. Counts are of runs held in memory (and so in ``/metrics``)."""

    active_runs_per_user: int = 64
    retained_runs_per_user: int = 256
    runs: int = 2000
    registrations_per_second: float = 10.0
    registration_burst: int = 64
    labels: int = 32
    label_name_length: int = 64
    label_value_length: int = 256
    label_bytes: int = 2048
    run_id_length: int = 128
    stored_runs_per_user: int = 10_000
    store_retain_finished_seconds: float = 30 * 86400.0


FLAGS: dict[str, str] = {
    "active_runs_per_user": "--limits.active-runs-per-user",
    "retained_runs_per_user": "--limits.retained-runs-per-user",
    "runs": "--limits.runs",
    "registrations_per_second": "--limits.registrations-per-second",
    "registration_burst": "--limits.registration-burst",
    "labels": "--limits.labels",
    "label_name_length": "--limits.label-name-length",
    "label_value_length": "--limits.label-value-length",
    "label_bytes": "--limits.label-bytes",
    "run_id_length": "--limits.run-id-length",
    "stored_runs_per_user": "--store.runs-per-user",
    "store_retain_finished_seconds": "--store.retain-finished",
}
"""The flag of each limit, as refusals and log lines name it."""

HELP: dict[str, str] = {
    "active_runs_per_user": "active runs one user may have; another start is refused with 429",
    "retained_runs_per_user": "finished runs of one user kept in /metrics; beyond it the oldest leave before "
    "--runs.retain-finished",
    "runs": "runs held in memory and /metrics, active and finished, of all users together, root included; "
    "another start is refused with 429",
    "registrations_per_second": "sustained rate at which one user may send run starts (joins included); faster "
    "starts are refused with 429",
    "registration_burst": "starts one user may send at once before --limits.registrations-per-second applies",
    "labels": "labels of one run; more is a 400",
    "label_name_length": "characters of a label name; longer is a 400",
    "label_value_length": "characters of a label value, an experiment or a set; longer is a 400",
    "label_bytes": "bytes (UTF-8) of a run's label names and values, experiment and set included; more is a 400",
    "run_id_length": "characters of a run id; longer is a 400",
    "stored_runs_per_user": "finished runs of one user kept in the store; beyond it the oldest are deleted",
    "store_retain_finished_seconds": "how long finished runs stay in the store (--state-dir) after they end; "
    "older ones are deleted",
}

DEFAULT_LIMITS = Limits()


def label_bytes(experiment: str, set_name: str, labels: Mapping[str, str]) -> int:
    """The UTF-8 bytes of a run's label names and values, experiment and set included."""
    texts = [experiment, set_name, *labels, *labels.values()]
    return sum(len(text.encode(errors="replace")) for text in texts)


def broken_label_limit(experiment: str, set_name: str, labels: Mapping[str, str], limits: Limits) -> str | None:
    """The name of the first label limit a run's labels break, or None: for runs that did not come through the
    API's validation (a store written under other limits)."""
    if len(labels) > limits.labels:
        return "labels"
    if any(len(name) > limits.label_name_length for name in labels):
        return "label_name_length"
    if any(len(text) > limits.label_value_length for text in (experiment, set_name, *labels.values())):
        return "label_value_length"
    if label_bytes(experiment, set_name, labels) > limits.label_bytes:
        return "label_bytes"
    return None


def number_text(value: float) -> str:
    """A limit's value as a flag takes it: 10000, 0.5."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def flag(name: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """``--flag=value`` of one limit, as a refusal names it."""
    unit = "s" if name == "store_retain_finished_seconds" else ""
    return f"{FLAGS[name]}={number_text(getattr(limits, name))}{unit}"


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per limit, in a group of its own, each with its default in its help."""
    group = parser.add_argument_group("limits (root is exempt from per-user limits)")
    for field in fields(Limits):
        name = field.name
        default = getattr(DEFAULT_LIMITS, name)
        if name == "store_retain_finished_seconds":
            group.add_argument(
                FLAGS[name], dest=name, default="30d", metavar="DURATION", help=f"{HELP[name]} (default: 30d)"
            )
        else:
            group.add_argument(
                FLAGS[name],
                dest=name,
                type=type(default),
                default=default,
                metavar="N",
                help=f"{HELP[name]} (default: {number_text(default)})",
            )


def limits_from_args(args: argparse.Namespace) -> Limits:
    """The limits the parsed flags give; ValueError naming the flag for a value that cannot work."""
    values = {field.name: getattr(args, field.name) for field in fields(Limits)}
    values["store_retain_finished_seconds"] = parse_duration(values["store_retain_finished_seconds"])
    for name, value in values.items():
        if not value > 0 or value != value or value == float("inf"):
            raise ValueError(f"{FLAGS[name]}={value}: must be a positive number")
    return Limits(**values)


class RegistrationRate:
    """A token bucket per uid: ``burst`` starts at once, then ``per_second``. Root is not limited."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_second = limits.registrations_per_second
        self._burst = float(limits.registration_burst)
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[int, tuple[float, float]] = {}  # uid -> (tokens, when counted)

    def wait_seconds(self, uid: int) -> float:
        """0 after taking one start from ``uid``'s bucket; else the seconds until the bucket holds one again."""
        if uid == 0:
            return 0.0
        now = self._clock()
        with self._lock:
            tokens, then = self._buckets.get(uid, (self._burst, now))
            tokens = min(self._burst, tokens + (now - then) * self._per_second)
            if tokens < 1.0:
                self._buckets[uid] = (tokens, now)
                return (1.0 - tokens) / self._per_second
            self._buckets[uid] = (tokens - 1.0, now)
            return 0.0
