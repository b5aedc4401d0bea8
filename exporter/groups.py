"""Process-group accounting: each run's CPU time and memory per interval, from its root PIDs and all their
descendants, read from procfs at each sample. Stateful: each sample is measured against the one before.

Processes are keyed by ``(pid, start_ticks)``, so a reused PID is never taken for the same process. A member's
total is its own CPU time plus that of the children it reaped (cutime+cstime), and a group's interval CPU is::

    sum(total of the members now) - sum(total at the previous sample of the members counted)

where every member of the previous sample is counted except one that vanished without its time moving into a
member counted now. A vanished member is subtracted only when it died and its last-seen parent is a member now
(or a vanished member subtracted by the same rule): that parent's cutime then holds the child's whole life, so
children that fork and exit between two samples are counted once. A vanished member whose parent is outside the
group, or that is alive but orphaned to init, keeps its time up to the previous sample; later time is not the
group's. A process under two roots of one group is counted once. A group sampled with ``born_in`` (a cgroup run,
exporter/cgroups.py) counts a new root's whole time when it started after the previous sample, or, at the first
sample after ``add_roots`` took the group's baseline (its run's registration), after that baseline: born in the
cgroup, it was the run's from its first tick. Its roots are the members its cgroup holds, so a root that died has
left them; it still gets its final total from its reaper, as below.

A root is usually reaped by a parent outside the group (impact-run, a shell, a job launcher), whose cutime then
holds the root's final total. So each live root's parent is read with each sample (and with ``add_roots``'s
baseline), and once a root has died, the rise of that parent's cutime+cstime stands in for the root's final
total: a run that starts and ends between two samples gets its CPU time, and every run the time its root used
after the last sample. Roots one parent reaped in one interval share the rise beyond their last-seen totals
equally (other children that parent reaped in that interval add to it).

Limits: children of a member that ignores SIGCHLD are auto-reaped and their time is added to no one (their last
counted time is subtracted anyway, and the interval clamped at 0); a root reaped by init or by a parent that
ignores SIGCHLD, or by one that exits itself before the next sample (a Slurm task's slurmstepd), loses its time
after the last sample. Time before a group (or a root added to it) is first
sampled is not the run's: that sample records only the baseline. Zombies are members until reaped;
``root_alive`` is False once every root is a zombie or gone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from impact_exporter.sources import HardwareUnreadable, SourceError
from impact_exporter.sources.procfs import MEMORY_PSS, ProcFS, ProcStat
from impact_exporter.sources.procfs_files import OpenFiles

MEMORY_MAX_AGE_SECONDS = 30.0
"""How long a tracked process's PSS reading is reused at least (ProcessGroups): smaps_rollup is the dearest file to
read. After that it is read again when the process's RSS has changed since, else at MEMORY_UNCHANGED_MAX_AGE_SECONDS."""
MEMORY_UNCHANGED_MAX_AGE_SECONDS = 600.0
"""How long a tracked process's PSS reading is reused while its RSS stays what it was when PSS was read. PSS can
change without RSS when a process that shares its pages starts or exits: that is what this bound catches."""

ProcKey = tuple[int, int]  # (pid, start_ticks)
_Memory = tuple[int, float, int]  # a member's memory reading: (bytes, when read, RSS in pages then)
_Baseline = tuple[str, dict[int, "int | None"], dict[ProcKey, "ProcStat"], dict[ProcKey, "ProcStat"], "int | None"]
# what add_roots queues: group id, roots' start times, members, roots' parents, clock ticks since boot then


@dataclass(frozen=True)
class GroupUsage:
    """What one process group used in the last interval, and what it holds now."""

    cpu_seconds: float
    memory_bytes: int
    processes: int
    root_alive: bool
    pids: frozenset[int] = frozenset()  # the live members now (GPU processes are matched to groups by these)


@dataclass(frozen=True)
class _Group:
    """State kept between samples for one group id: its roots' start times (None when a root was already gone at
    first sight) and each member's stat at the previous sample (its ppid and total CPU time are what count)."""

    roots: Mapping[int, int | None]
    members: Mapping[ProcKey, ProcStat]
    reapers: Mapping[ProcKey, ProcStat] = field(default_factory=dict)  # live root -> its parent outside the group
    foreign: Mapping[ProcKey, ProcStat] = field(default_factory=dict)  # members' children that another group owns


@dataclass(frozen=True)
class _Walked:
    """One group's tree as a sample finds it, before its usage is worked out: roots' start times, the members
    known before (``members``) and those of roots new to the group (``fresh``)."""

    roots: Mapping[int, int | None]
    members: dict[ProcKey, ProcStat]
    fresh: dict[ProcKey, ProcStat]
    foreign: dict[ProcKey, ProcStat] = field(default_factory=dict)  # children of members that another group owns


class ProcessGroups:
    """Per-interval CPU and memory of process groups: one or more root PIDs plus all their descendants.

    Each sample walks the tree down from the roots, so its cost grows with the groups' size, not the machine's.
    The accounting rules are in the module docstring.
    """

    def __init__(
        self,
        procfs: ProcFS,
        memory_max_age_seconds: float = MEMORY_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Keep no groups yet. They appear as ``sample`` is given their ids.

        A member's memory is read when it joins and then again only when the reading is ``memory_max_age_seconds``
        old and the member's RSS (in the stat line each sample reads anyway) has changed since, or when the reading
        is MEMORY_UNCHANGED_MAX_AGE_SECONDS old. PSS comes from ``smaps_rollup``, which walks the process's page
        tables (the dearest read of a sample), while memory changes slowly and only weighs DRAM energy; a process
        whose RSS stays the same changes its PSS only when a process it shares pages with starts or exits. When
        ``procfs`` reads RSS (its default), the reading is taken again whenever the stat line's RSS changed: statm
        shows the same counter, so the memory is always current and costs a read only when it moved.
        """
        self._procfs = procfs
        self._groups: dict[str, _Group] = {}
        self._memory_max_age = memory_max_age_seconds if procfs.memory_basis == MEMORY_PSS else 0.0
        self._clock = clock
        self._memory: dict[ProcKey, _Memory] = {}  # the readings of the members at the last sample
        self._files = procfs.open_files()  # members' stat and children files stay open between samples
        self._added: list[_Baseline] = []  # add_roots' baselines
        self._added_lock = threading.Lock()
        self._last_created_pid: int | None = None
        self._children_lists: dict[int, list[int]] = {}  # the children of each member walked at the last sample
        self._uptime_ticks: int | None = None  # clock ticks since boot at the start of the last sample (born_in)

    def sample(
        self,
        roots: Mapping[str, Collection[int]],
        pause: Callable[[], None] = lambda: None,
        born_in: Collection[str] = (),
        owners: Mapping[int, str] | None = None,
    ) -> dict[str, GroupUsage]:
        """Group id -> root PIDs in, group id -> usage since the previous call out. Forgets ids no longer passed.

        ``owners`` (PID -> group id: the members of cgroup runs, exporter/cgroups.py) take precedence over the
        walks: a process another group owns is neither walked nor counted in this one, nor are its descendants, and
        when a member reaps such a child, the child's total at the previous sample, already that group's, is taken
        off the member's cutime. That group does not read the reaper (``_reapers``), so the child's time after the
        previous sample counts here, once.

        Roots may be added to a group between calls; a root no longer passed stops being part of it. ``pause`` is
        called before each group (the sampler's lets a scrape go first, exporter/scheduling.py).

        A member's ``children`` file is read again only when a task created since the previous call names it as
        parent (``_children_lists_to_reuse``); the other members' lists of the previous call still hold. A group
        that lost a member is walked again from the files, since a member may have adopted the dead one's children.
        (A member that is a child subreaper adopting the orphans of a process outside the group is seen at the next
        full read: when a root is added, a group loses a member, or the PIDs wrap around.)
        """
        registered = self._take_added_roots()
        known = self._children_lists_to_reuse(bool(registered))
        born_after, self._uptime_ticks = self._uptime_ticks, self._read_uptime_ticks() if born_in else None
        lists: dict[int, list[int]] = {}
        children = ChildLookup(self._procfs, self._files, lists, known)
        usage: dict[str, GroupUsage] = {}
        groups: dict[str, _Group] = {}
        memory: dict[ProcKey, _Memory] = {}
        walked: dict[str, _Walked] = {}
        owners = owners or {}
        for group_id, root_pids in roots.items():
            pause()
            previous = self._groups.get(group_id)
            own = [pid for pid in root_pids if owners.get(pid, group_id) == group_id]
            foreign = _Foreign(owners, group_id) if owners else None
            walk = self._walk_group(tuple(own), previous, children, foreign)
            if (
                known is not None
                and previous is not None
                and not previous.members.keys() <= (walk.members.keys() | walk.fresh.keys())
            ):
                foreign = _Foreign(owners, group_id) if owners else None
                lookup = ChildLookup(self._procfs, self._files, lists)
                walk = self._walk_group(tuple(own), previous, lookup, foreign)
            walked[group_id] = walk
        exited = self._exited_roots(walked, born_in)
        parents: dict[int, ProcStat | None] = {}
        # Which group each member is in, where a process can be in a group and its parent in another (cgroup runs).
        holders = (
            {pid: group for group, walk in walked.items() for pid, _ in (*walk.members, *walk.fresh)} if owners else {}
        )
        for group_id, walk in walked.items():
            born_from = registered.get(group_id) if registered.get(group_id) is not None else born_after
            if born_from is not None and group_id in born_in:
                walk = _born_since(walk, born_from)
            usage[group_id], groups[group_id] = self._group_usage(
                walk, self._groups.get(group_id), exited.get(group_id, {}), memory, parents, holders, group_id
            )
        self._groups = groups
        self._memory = memory
        self._children_lists = lists
        self._files.close_unused()
        return usage

    def _read_uptime_ticks(self) -> int | None:
        try:
            return self._procfs.uptime_ticks()
        except SourceError:
            return None

    def add_roots(self, group_id: str, root_pids: Collection[int]) -> None:
        """Record the baseline of ``root_pids`` and their descendants in the group now, not at the next sample.

        Their CPU time then counts from this instant (a run's start calls it). It reads only these roots' trees, and
        may be called from any thread, also while ``sample`` runs: the baseline waits in a queue that the next
        ``sample`` takes first. Roots the group has by then are left as they are; that ``sample`` must be passed the
        roots (it forgets a group or root it is not given).
        """
        children = ChildLookup(self._procfs)
        now = self._read_uptime_ticks()  # a cgroup run's processes born from now on are the run's from their start
        roots: dict[int, int | None] = {}
        fresh: dict[ProcKey, ProcStat] = {}
        for pid in root_pids:
            stat = self._procfs.process(pid)  # without the open files: those belong to the sampling thread
            roots[pid] = stat.start_ticks if stat is not None else None
            self._walk(pid, roots[pid], children, fresh, None)
        reapers = self._reapers(roots, fresh, {}, None)
        with self._added_lock:
            self._added.append((group_id, roots, fresh, reapers, now))

    def _children_lists_to_reuse(self, roots_added: bool) -> Mapping[int, list[int]] | None:
        """The children lists of the previous sample that still hold, or None when every member's must be read.

        The kernel hands out PIDs in increasing order until it wraps around, so the tasks created since the previous
        sample have the PIDs after its ``last_created_pid``, up to the current one. Each of them that still exists
        is read, threads too (a thread's parent is its process's parent: one list more is read than needed), and
        their parents' lists are dropped. A child that was created and has exited already needs no reading: its
        time is in its parent's cutime, or lost as it would be anyway. Every list is read when the PIDs wrapped
        around, when more tasks were created than there are lists (reading each list is cheaper then), when a root
        was added, or when this procfs cannot say (``ProcFS.last_created_pid``).
        """
        created = self._procfs.last_created_pid()
        previous, self._last_created_pid = self._last_created_pid, created
        lists = self._children_lists
        if created is None or previous is None or roots_added or not 0 <= created - previous <= len(lists):
            return None
        parents: set[int] = set()
        for pid in range(previous + 1, created + 1):
            try:
                stat = self._procfs.process(pid)
            except HardwareUnreadable:  # another user's, under hidepid=1: its parent cannot be known
                return None
            if stat is not None:
                parents.add(stat.ppid)
        return {pid: children for pid, children in lists.items() if pid not in parents}

    def _take_added_roots(self) -> dict[str, int | None]:
        """Merge the baselines ``add_roots`` queued into the groups, for roots the groups do not have yet. Returns
        every group id that had one, with the clock ticks since boot when the baseline of a group new then was
        taken (else None): a cgroup run's processes born since were born in it, though no sample saw them yet."""
        with self._added_lock:
            added, self._added = self._added, []
        registered: dict[str, int | None] = {}
        for group_id, roots, baseline, reapers, ticks in added:
            previous = self._groups.get(group_id)
            registered.setdefault(group_id, ticks if previous is None else None)
            known = previous.roots if previous is not None else {}
            if previous is not None and all(pid in known for pid in roots):
                continue
            members = {**baseline, **(previous.members if previous is not None else {})}
            kept = {**reapers, **(previous.reapers if previous is not None else {})}
            self._groups[group_id] = _Group({**roots, **known}, members, kept)
        return registered

    def _group_memory(self, members: Mapping[ProcKey, ProcStat], now: float, kept: dict[ProcKey, _Memory]) -> int:
        """The members' memory in bytes. A member's last reading is reused while it is younger than the maximum
        age, and after that while the member's RSS is what it was at that reading, up to
        MEMORY_UNCHANGED_MAX_AGE_SECONDS.

        Each reading goes into ``kept``, the readings the next sample starts from (so those of members that left
        are dropped). A new reading also replaces the old one at once: a member of two groups is read once.
        """
        total = 0
        for key, stat in members.items():
            reading = self._memory.get(key)
            if reading is None or (
                now - reading[1] >= self._memory_max_age
                and (reading[2] != stat.rss_pages or now - reading[1] >= MEMORY_UNCHANGED_MAX_AGE_SECONDS)
            ):
                reading = self._memory[key] = (self._procfs.memory_bytes(stat.pid) or 0, now, stat.rss_pages)
            kept[key] = reading
            total += reading[0]
        return total

    def _walk_group(
        self,
        root_pids: tuple[int, ...],
        previous: _Group | None,
        children: Callable[[int, int], list[int]],
        foreign: _Foreign | None = None,
    ) -> _Walked:
        """The group's members now: those under roots it had (``members``) and under roots new to it (``fresh``);
        the children that ``foreign`` says another group owns are left out and kept in it."""
        known = previous.roots if previous is not None else {}
        roots = {pid: known[pid] if pid in known else self._start_ticks(pid) for pid in root_pids}
        members: dict[ProcKey, ProcStat] = {}
        for pid in root_pids:
            if pid in known:
                self._walk(pid, roots[pid], children, members, self._files, foreign)
        fresh: dict[ProcKey, ProcStat] = {}
        for pid in root_pids:
            if pid not in known:
                self._walk(pid, roots[pid], children, fresh, self._files, foreign)
        return _Walked(roots, members, fresh, foreign.children if foreign is not None else {})

    def _group_usage(
        self,
        walk: _Walked,
        previous: _Group | None,
        exited: Mapping[ProcKey, ProcStat],
        memory: dict[ProcKey, _Memory],
        parents: dict[int, ProcStat | None],
        holders: Mapping[int, str] | None = None,
        group_id: str = "",
    ) -> tuple[GroupUsage, _Group]:
        """Usage of one group and the state to keep for the next sample; its members' memory readings go to
        ``memory``. ``exited``: its roots that died since the previous sample, with their final totals as their
        reaper shows them (``_exited_roots``); ``parents``: the parents read in this sample, shared by groups;
        ``holders``: the group of each PID in a group now, so that a root whose parent is in another group leaves
        its reaping to that group."""
        members, fresh = walk.members, walk.fresh
        if previous is None:
            cpu_seconds = 0.0
        elif fresh:
            before = {**fresh, **previous.members}
            cpu_seconds = self._interval_cpu(before, {**fresh, **members, **exited})
        else:  # the usual case: no root joined since the previous sample
            cpu_seconds = self._interval_cpu(previous.members, {**members, **exited} if exited else members)
        if previous is not None and previous.foreign:
            cpu_seconds = max(0.0, cpu_seconds - self._foreign_reaped(previous.foreign, walk))
        members.update(fresh)
        now = self._clock()
        usage = GroupUsage(
            cpu_seconds=cpu_seconds,
            memory_bytes=self._group_memory(members, now, memory),
            processes=len(members),
            pids=frozenset(pid for pid, _ in members),
            root_alive=any(
                (stat := members.get((pid, start))) is not None and stat.state not in ("Z", "X")
                for pid, start in walk.roots.items()
                if start is not None
            ),
        )
        reapers = self._reapers(walk.roots, members, parents, self._files, holders or {}, group_id)
        return usage, _Group(walk.roots, members, reapers, walk.foreign)

    def _foreign_reaped(self, foreign: Mapping[ProcKey, ProcStat], walk: _Walked) -> float:
        """The CPU seconds, at the previous sample, of the children another group owned that a member has reaped
        since: their parent's cutime now holds them, but they were that group's."""
        present = {pid for pid, _ in (*walk.members, *walk.fresh)}
        return sum(
            child.total_cpu_seconds
            for key, child in foreign.items()
            if key not in walk.foreign and child.ppid in present and not self._still_alive(key)
        )

    def _reapers(
        self,
        roots: Mapping[int, int | None],
        members: Mapping[ProcKey, ProcStat],
        parents: dict[int, ProcStat | None],
        files: OpenFiles | None,
        holders: Mapping[int, str] | None = None,
        group_id: str = "",
    ) -> dict[ProcKey, ProcStat]:
        """Each live root's parent as it is now, where that parent is outside the group, in no other group
        (``holders``: that group counts what it reaps) and not init: the process that will reap the root and so
        hold its final CPU time. ``parents`` caches reads within one sample."""
        holders = holders or {}
        member_pids = {pid for pid, _ in members}
        reapers: dict[ProcKey, ProcStat] = {}
        for pid, start in roots.items():
            root = members.get((pid, start)) if start is not None else None
            if (
                root is None
                or root.ppid <= 1
                or root.ppid in member_pids
                or holders.get(root.ppid, group_id) != group_id
            ):
                continue
            if root.ppid not in parents:
                try:
                    parents[root.ppid] = self._procfs.process(root.ppid, files)
                except SourceError:  # not readable (hidepid): this root's last moments stay uncounted
                    parents[root.ppid] = None
            parent = parents[root.ppid]
            if parent is not None:
                reapers[root.key] = parent
        return reapers

    def _exited_roots(
        self, walked: Mapping[str, _Walked], born_in: Collection[str] = ()
    ) -> dict[str, dict[ProcKey, ProcStat]]:
        """Per group, its roots that died since the previous sample and whose parent has since reaped them, each
        with its total CPU time replaced by its final one (see the module docstring). A root no longer passed is
        not the group's any more, except in a group of ``born_in`` (a cgroup run): its roots are the members the
        cgroup holds, and a process that died has left it.

        A parent's cutime+cstime rises by the whole total of each child it reaps; minus the totals the roots it
        reaped had at their last sample, the rest is what they used since, shared equally among them. A rise
        smaller than those totals means the parent did not reap them all, and none is given anything.
        """
        claims: dict[ProcKey, list[tuple[str, ProcStat, ProcStat]]] = {}
        for group_id, walk in walked.items():
            previous = self._groups.get(group_id)
            if previous is None:
                continue
            present = walk.members.keys() | walk.fresh.keys()
            for (pid, start), parent in previous.reapers.items():
                root = previous.members.get((pid, start))
                if root is None or (pid, start) in present:
                    continue
                if walk.roots.get(pid) != start and (group_id not in born_in or pid in walk.roots):
                    continue
                claims.setdefault(parent.key, []).append((group_id, root, parent))
        exited: dict[str, dict[ProcKey, ProcStat]] = {}
        for (parent_pid, parent_start), claimed in claims.items():
            try:
                parent = self._procfs.process(parent_pid, self._files)
                if (
                    parent is None
                    or parent.start_ticks != parent_start
                    or any(self._still_alive(root.key) for _, root, _ in claimed)
                ):
                    continue
            except SourceError:
                continue
            rise = parent.children_cpu_seconds - min(before.children_cpu_seconds for _, _, before in claimed)
            since = rise - sum(root.total_cpu_seconds for _, root, _ in claimed)
            if since < 0:
                continue
            for group_id, root, _ in claimed:
                final = root._replace(cpu_seconds=root.cpu_seconds + since / len(claimed))
                exited.setdefault(group_id, {})[root.key] = final
        return exited

    def _start_ticks(self, pid: int) -> int | None:
        """Start time of ``pid`` now, or None when it is gone: the identity a root keeps for its whole run."""
        stat = self._procfs.process(pid, self._files)
        return stat.start_ticks if stat is not None else None

    def _walk(
        self,
        root_pid: int,
        root_start: int | None,
        children: Callable[[int, int], list[int]],
        members: dict[ProcKey, ProcStat],
        files: OpenFiles | None,
        foreign: _Foreign | None = None,
    ) -> None:
        """Add the root (when it is still the same process) and every descendant to ``members``, reading through
        ``files`` (the sampling thread's open files, or None); a child ``foreign`` says another group owns goes
        there instead, and its descendants nowhere."""
        root = self._procfs.process(root_pid, files) if root_start is not None else None
        if root is None or root.start_ticks != root_start or root.key in members:
            return
        members[root.key] = root
        stack = [root]
        while stack:
            parent = stack.pop()
            for pid in children(parent.pid, parent.threads):
                child = self._procfs.process(pid, files)
                # The list can be stale by the time the child is read: the PID may have been reused meanwhile.
                if child is None or child.ppid != parent.pid or child.key in members:
                    continue
                if foreign is not None and foreign.owns(child):
                    continue
                members[child.key] = child
                stack.append(child)

    def _interval_cpu(self, before: Mapping[ProcKey, ProcStat], now: Mapping[ProcKey, ProcStat]) -> float:
        """CPU seconds the group used since ``before``, following the rules in the module docstring, clamped at 0."""
        total_now = sum(stat.total_cpu_seconds for stat in now.values())
        if before.keys() <= now.keys():  # the usual case: every member of the previous sample is still one
            counted: Iterable[ProcStat] = before.values()
        else:
            reaped = self._reaped_into_group(before, now, [key for key in before if key not in now])
            counted = (seen for key, seen in before.items() if key in now or key in reaped)
        return max(0.0, total_now - sum(seen.total_cpu_seconds for seen in counted))

    def _reaped_into_group(
        self, before: Mapping[ProcKey, ProcStat], now: Mapping[ProcKey, ProcStat], vanished: list[ProcKey]
    ) -> set[ProcKey]:
        """The ``vanished`` members (in ``before``, not in ``now``) whose time now sits in the cutime of a counted
        member."""
        dead = {key for key in vanished if not self._still_alive(key)}
        by_pid = {pid: (pid, start) for pid, start in before}
        decided: dict[ProcKey, bool] = {}

        def reaped(key: ProcKey) -> bool:
            if key not in decided:
                decided[key] = False  # a cycle cannot happen in a tree, but a reused PID could fake one
                parent = by_pid.get(before[key].ppid)
                decided[key] = key in dead and parent is not None and (parent in now or reaped(parent))
            return decided[key]

        return {key for key in vanished if reaped(key)}

    def _still_alive(self, key: ProcKey) -> bool:
        """Whether the process ``key`` still exists (it left the group without dying)."""
        stat = self._procfs.process(key[0], self._files)
        return stat is not None and stat.start_ticks == key[1]


class _Foreign:
    """Which children a group's walk leaves out: those ``owners`` gives to another group (exporter/cgroups.py);
    each one met is kept in ``children``."""

    def __init__(self, owners: Mapping[int, str], group_id: str) -> None:
        self._owners = owners
        self._group_id = group_id
        self.children: dict[ProcKey, ProcStat] = {}

    def owns(self, child: ProcStat) -> bool:
        """Whether another group owns ``child`` (it is then kept in ``children``)."""
        if self._owners.get(child.pid, self._group_id) == self._group_id:
            return False
        self.children[child.key] = child
        return True


def _born_since(walk: _Walked, ticks: int) -> _Walked:
    """``walk`` with the fresh members that started at ``ticks`` or later counted as members from their start: the
    interval's CPU time then includes their whole total, as for a child forked in the group."""
    born = {key: stat for key, stat in walk.fresh.items() if stat.start_ticks >= ticks}
    if not born:
        return walk
    fresh = {key: stat for key, stat in walk.fresh.items() if key not in born}
    return _Walked(walk.roots, {**walk.members, **born}, fresh, walk.foreign)


class ChildLookup:
    """``children(pid)`` for one sample. Without per-thread children files, one ``/proc`` scan serves every lookup.

    Each answer is also put in ``seen``. With ``known`` (the previous sample's lists that still hold, see
    ``ProcessGroups._children_lists_to_reuse``), a PID listed there is answered from it without a read.
    """

    def __init__(
        self,
        procfs: ProcFS,
        files: OpenFiles | None = None,
        seen: dict[int, list[int]] | None = None,
        known: Mapping[int, list[int]] | None = None,
    ) -> None:
        self._procfs = procfs
        self._files = files
        self._scan: dict[int, list[int]] | None = None
        self._seen = seen if seen is not None else {}
        self._known = known or {}

    def __call__(self, pid: int, threads: int | None = None) -> list[int]:
        found = self._known.get(pid)
        if found is None:
            found = self._read(pid, threads)
        self._seen[pid] = found
        return found

    def _read(self, pid: int, threads: int | None) -> list[int]:
        if self._procfs.children_files_supported is not False:
            return self._procfs.children(pid, threads, self._files)
        if self._scan is None:
            self._scan = self._procfs.scan_children()
        return self._scan.get(pid, [])
