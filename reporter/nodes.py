"""Which node a series comes from, and which copy of it: series identity across HA pairs and external labels.

A store holds each exporter's series with the labels the exporter gave them (its own: ``run_id``, ``user``,
``component``, ...) plus the labels the Prometheus that scraped them added: the target's ``instance`` and
``job``, target labels from relabelling, and its external labels (``cluster``, ``replica``) when it writes to
or is read through a shared store. A *node* is its ``instance`` plus every added label but ``job`` and the
replica labels, so ``node1:9100`` of cluster ``site-a`` and of cluster ``site-b`` are two nodes, named
``node1:9100{cluster="site-a"}`` and ``node1:9100{cluster="site-b"}``; a node without such labels is named by its
instance alone.

Replica labels (``replica``, ``prometheus_replica``, ``__replica__``, and any the user names) tell apart the
copies of one node's series that the Prometheus servers of an HA pair each wrote. The reporter reads one copy
per run and node (``one_replica``), never mixing them (Thanos Query's deduplication switches replicas across a
gap), so its figures equal those from one Prometheus of the pair.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from impact_reporter.prometheus import Series

REPLICA_LABELS = ("replica", "prometheus_replica", "__replica__")
"""Replica labels recognised without ``--replica-label``: Prometheus Operator's ``prometheus_replica``, the
common ``replica`` (Thanos' examples) and Cortex/Mimir's ``__replica__``."""
NOT_REPLICA_LABELS = frozenset({"__name__", "instance", "run_id", "user", "component", "unit", "experiment", "set"})
"""Labels that cannot tell copies apart: the series' name, its node's instance, and the exporter's run labels."""

RUN_SERIES_LABELS = frozenset({"__name__", "run_id", "user", "component", "unit"})
"""The exporter's own labels on its per-run counters and times (``impact_run_energy_joules_total`` and the
others but ``impact_run_info``, whose other labels are the run's)."""
HOST_INFO_LABELS = frozenset({"__name__", "hostname", "cpu_model", "cpu_vendor", "cpu_count", "kernel", "region"})
GPU_INFO_LABELS = frozenset(
    {"__name__", "gpu", "uuid", "name", "driver_version", "cuda_version", "memory_total_bytes", "mig"}
)
SOURCE_INFO_LABELS = frozenset({"__name__", "component", "method"})
"""The exporter's own labels of ``impact_host_info``, ``impact_gpu_info`` and ``impact_energy_source_info``."""


@dataclass(frozen=True)
class Origin:
    """Where a series came from: its ``node`` (see the module docstring), the values of its replica labels
    (``replica``, "" for each one it lacks), and every label the store added but the replica labels (``added``,
    which tells copies of one node apart when they differ by a label that is not a replica label)."""

    node: str
    replica: tuple[str, ...]
    added: frozenset[tuple[str, str]]


class SeriesIdentity:
    """Tells nodes and replicas apart in label sets, given the replica labels in use."""

    def __init__(self, replica_labels: Iterable[str] = ()) -> None:
        """``replica_labels``: labels that tell HA replicas apart, besides those of REPLICA_LABELS."""
        self.replica_labels = tuple(sorted(set(REPLICA_LABELS) | set(replica_labels)))

    def origin(self, labels: Mapping[str, str], own: Collection[str]) -> Origin:
        """The node and replica of a series with these labels, given the exporter's ``own`` label names."""
        added = {name: value for name, value in labels.items() if name not in own and name not in self.replica_labels}
        extra = {name: value for name, value in added.items() if name not in ("instance", "job")}
        return Origin(
            node=node_name(added.get("instance", ""), extra),
            replica=tuple(labels.get(name, "") for name in self.replica_labels),
            added=frozenset(added.items()),
        )

    def one_replica(self, series: Iterable[Series], own: Collection[str]) -> list[tuple[str, Series]]:
        """Each series with its node's name, keeping per run and node the series of one replica only: the one
        with the most finite samples over all the series read, the first by its replica label values on a tie.

        One replica for all of a node's series keeps the node's samples on one scrape schedule, so coverage and
        power are those one Prometheus of the pair would give; the one with most samples has the fewest gaps.
        """
        by_replica: dict[tuple[str, str, str], dict[tuple[str, ...], list[Series]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for one in series:
            origin = self.origin(one.labels, own)
            run_node = (one.labels.get("run_id", ""), one.labels.get("user", ""), origin.node)
            by_replica[run_node][origin.replica].append(one)
        kept = []
        for (_, _, node), replicas in by_replica.items():
            chosen = min(replicas, key=lambda replica: (-finite_count(replicas[replica]), replica))
            kept += [(node, one) for one in replicas[chosen]]
        return kept


def added_names(labels: Mapping[str, str], own: Collection[str]) -> set[str]:
    """The names of the labels of a series that the store added, given the exporter's ``own`` label names."""
    return {name for name in labels if name not in own}


def finite_count(series: Sequence[Series]) -> int:
    """How many finite samples the series hold together (staleness markers are not samples)."""
    return sum(int(np.isfinite(one.values).sum()) for one in series)


def node_name(instance: str, extra: Mapping[str, str]) -> str:
    """A node's name: its instance, then its other added labels in braces as PromQL writes them, sorted."""
    if not extra:
        return instance
    pairs = (f'{name}="{_quoted(value)}"' for name, value in sorted(extra.items()))
    return instance + "{" + ",".join(pairs) + "}"


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def copies_problem(run_id: str, instance: str, copies: Collection[frozenset[tuple[str, str]]]) -> str:
    """Why a report must stop when one node's series of a run come in several copies (``copies``: the added
    labels of each) that differ by labels that are not replica labels, and how to fix it."""
    values: dict[str, set[str]] = defaultdict(set)
    for labels in copies:
        present = dict(labels)
        for name in {name for other in copies for name, _ in other}:
            values[name].add(present.get(name, ""))
    names = sorted(name for name, seen in values.items() if len(seen) > 1)
    shown = "; ".join(f"{name}=" + "|".join(sorted(v or '""' for v in values[name])) for name in names)
    return (
        f"run {run_id}: the series of node {instance} come in {len(copies)} copies that differ by "
        f"{', '.join(names)} ({shown}): one exporter's data written twice, as by an HA pair of Prometheus servers, "
        f"and reading both would count the node twice; name the label that tells the copies apart with "
        f"--replica-label {names[0]}, or deduplicate in the store: Thanos Query --dedup with "
        f"--query.replica-label={names[0]}, VictoriaMetrics -dedup.minScrapeInterval=<scrape interval> with "
        "the replicas writing the same labels, or Mimir's HA tracker"
    )
