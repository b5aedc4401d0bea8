"""A process counts in one run at a time: which active run already holds a process, above it or below it.

A run measures its roots and all their descendants (exporter/groups.py). A process in two runs would count twice:
the runs' CPU time (or memory) would add up to more than the system's, and attribution (exporter/attribution.py)
would have to cut the runs' claims to fit. So the registry (exporter/runs.py) refuses to
register a process that an active run already holds: it, or one of its ancestors, is a root of that run. It also
refuses a process one of whose descendants is a run's root: each run is then a subtree of its own, and no run's
member can reap another run's process, whose whole CPU time would then move into the member's cutime.

Both look-ups read procfs now, not the last sample, so a child forked since is found. They cost the depth of the
process in the tree plus the size of its subtree.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from impact_exporter.groups import ChildLookup, ProcKey
from impact_exporter.run import RunKey
from impact_exporter.sources import SourceError
from impact_exporter.sources.procfs import ProcFS, ProcStat

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holder:
    """The run that holds a process: its key, and its root ``root_pid``, an ancestor of the process (or the process
    itself) when ``above``, else a descendant."""

    run: RunKey
    root_pid: int
    above: bool

    def relation(self, pid: int) -> str:
        """How the run holds ``pid``, in words: "process 7 is", "process 7 descends from process 5, the root of"."""
        if self.root_pid == pid:
            return f"process {pid} is a root of"
        if self.above:
            return f"process {pid} descends from process {self.root_pid}, a root of"
        return f"process {pid} has a descendant, process {self.root_pid}, that is a root of"


def holding_run(procfs: ProcFS, pid: int, roots: Mapping[ProcKey, RunKey]) -> Holder | None:
    """The run among ``roots`` (root process -> run key) that holds ``pid`` itself or one of its descendants, or
    None. A process that cannot be read ends that direction's look-up: the sampler could not read it into a run
    either."""
    try:
        stat = procfs.process(pid)
    except SourceError as error:
        log.debug("cannot read process %d: %s", pid, error)
        return None
    if stat is None:
        return None
    return _readable(_run_above, procfs, stat, roots) or _readable(_run_below, procfs, stat, roots)


def _readable(
    look_up: Callable[[ProcFS, ProcStat, Mapping[ProcKey, RunKey]], Holder | None],
    procfs: ProcFS,
    stat: ProcStat,
    roots: Mapping[ProcKey, RunKey],
) -> Holder | None:
    """``look_up``'s answer, or None when a process on its way cannot be read."""
    try:
        return look_up(procfs, stat, roots)
    except SourceError as error:
        log.debug("cannot follow the process tree of %d: %s", stat.pid, error)
        return None


def _run_above(procfs: ProcFS, stat: ProcStat, roots: Mapping[ProcKey, RunKey]) -> Holder | None:
    """The run whose root is ``stat``'s process or its nearest ancestor among ``roots``."""
    seen: set[int] = set()
    current: ProcStat | None = stat
    while current is not None and current.pid not in seen:
        run = roots.get(current.key)
        if run is not None:
            return Holder(run, current.pid, above=True)
        if current.ppid <= 0:
            return None
        seen.add(current.pid)
        current = procfs.process(current.ppid)
    return None


def _run_below(procfs: ProcFS, stat: ProcStat, roots: Mapping[ProcKey, RunKey]) -> Holder | None:
    """A run whose root descends from ``stat``'s process."""
    children = ChildLookup(procfs)
    seen = {stat.key}
    stack = [stat]
    while stack:
        parent = stack.pop()
        for pid in children(parent.pid, parent.threads):
            child = procfs.process(pid)
            if child is None or child.ppid != parent.pid or child.key in seen:
                continue
            run = roots.get(child.key)
            if run is not None:
                return Holder(run, child.pid, above=False)
            seen.add(child.key)
            stack.append(child)
    return None
