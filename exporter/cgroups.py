"""Runs that are cgroups: which processes a cgroup holds, and who may make a cgroup a run.

A cgroup run holds every process in its cgroup and the cgroups below it, however it got there: a daemon that
double-forks and leaves the process tree stays in its cgroup, so it stays in the run. A cgroup is named as
``/proc/<pid>/cgroup`` names it: ``/path`` in the unified hierarchy (cgroup v2), ``controller:/path`` in the v1
hierarchy of that controller (``freezer:/slurm/uid_1000/job_42``, ``name=systemd:/...`` for a named one).

Membership is read from ``cgroup.procs`` under one cgroupfs root (``--path.cgroupfs``, /sys/fs/cgroup), so tests
point it at a tree of files laid out as the kernel (and Slurm) lays it out; the other side, the cgroups of one
process, is its ``/proc/<pid>/cgroup`` (ProcFS.cgroup). At each sample a cgroup run's roots are its members whose
parent is not a member (exporter/groups.py walks their descendants, as for any run): so a child that its parent
reaps is counted through the parent's cutime, as in a process run, and a daemon reparented to init is a root of
its own. Only the exporter's operators (root, or the group ``--runs.cgroup-operators``) may register a cgroup run:
it measures other users' processes.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from impact_exporter.groups import ChildLookup
from impact_exporter.sources import SourceError
from impact_exporter.sources.procfs import ProcFS

log = logging.getLogger(__name__)

UNIFIED = ""
"""The hierarchy of cgroup v2, as ``0::/path`` names it in ``/proc/<pid>/cgroup``."""
HIERARCHY = re.compile(r"(name=)?[a-z_][a-z0-9_]*")
SEGMENT = re.compile(r"[A-Za-z0-9_.@:=+-]+")
"""The characters of one directory name in a cgroup path (Slurm's uid_1000, systemd's user@1000.service)."""
MAX_PATH_LENGTH = 1024

_K = TypeVar("_K")


@dataclass(frozen=True)
class Cgroup:
    """A cgroup: its hierarchy (UNIFIED, a v1 controller such as ``freezer``, or ``name=NAME``) and its absolute
    path in that hierarchy."""

    hierarchy: str
    path: str

    def __str__(self) -> str:
        return self.path if self.hierarchy == UNIFIED else f"{self.hierarchy}:{self.path}"

    def contains(self, other: Cgroup) -> bool:
        """Whether ``other`` is this cgroup or one below it, in the same hierarchy."""
        if other.hierarchy != self.hierarchy:
            return False
        return self.path == "/" or other.path == self.path or other.path.startswith(self.path + "/")

    def overlaps(self, other: Cgroup) -> bool:
        """Whether one of the two holds the other: their runs would hold the same processes."""
        return self.contains(other) or other.contains(self)


def parse_cgroup(text: str) -> Cgroup:
    """A cgroup as a run request names it: ``/path`` (v2) or ``controller:/path`` (v1); ValueError saying the rule
    it breaks. Paths are normalised, so no ``..`` or ``//`` can climb out of the cgroupfs root."""
    hierarchy, sep, path = ("", "", text) if text.startswith("/") else text.partition(":")
    if sep and not HIERARCHY.fullmatch(hierarchy):
        raise ValueError(f"cgroup {text[:64]!r}: the hierarchy before ':' must be a v1 controller, e.g. freezer")
    if len(path) > MAX_PATH_LENGTH or not path.startswith("/"):
        raise ValueError(
            f"cgroup must be /PATH (cgroup v2) or CONTROLLER:/PATH (v1), at most {MAX_PATH_LENGTH} characters, "
            "as /proc/<pid>/cgroup shows it"
        )
    segments = [segment for segment in path.split("/") if segment]
    if any(not SEGMENT.fullmatch(segment) or segment in (".", "..") for segment in segments):
        raise ValueError(f"cgroup {text[:64]!r}: each directory is letters, digits and _.@:=+- (no '.' or '..')")
    return Cgroup(hierarchy, "/" + "/".join(segments))


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/<pid>/cgroup`` as hierarchy -> path: ``0::/a`` gives UNIFIED, ``4:cpu,cpuacct:/b`` each controller,
    ``1:name=systemd:/c`` the named hierarchy. Lines it cannot read are skipped."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        _, sep, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if not sep or not sep2:
            continue
        for hierarchy in controllers.split(",") if controllers else [UNIFIED]:
            paths[hierarchy] = path
    return paths


def cgroups_of(text: str) -> list[Cgroup]:
    """Every cgroup a process is in, from its ``/proc/<pid>/cgroup``."""
    return [Cgroup(hierarchy, path) for hierarchy, path in parse_proc_cgroup(text).items()]


class CgroupFS:
    """Reads cgroup membership under one cgroupfs root (``--path.cgroupfs``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def directory(self, cgroup: Cgroup) -> Path:
        """The cgroup's directory: v2 under the root when it is the unified mount, else under ``unified/`` (a
        hybrid host); v1 under the controller's mount, ``name=X`` under ``X``."""
        if cgroup.hierarchy == UNIFIED:
            base = self.root if (self.root / "cgroup.controllers").exists() else self.root / "unified"
        else:
            base = self.root / cgroup.hierarchy.removeprefix("name=")
        return base / cgroup.path.lstrip("/")

    def processes(self, cgroup: Cgroup) -> list[int] | None:
        """The PIDs in the cgroup and every cgroup below it, or None when it does not exist (yet, or any more).
        SourceError when a ``cgroup.procs`` cannot be read for another reason than the cgroup going away."""
        top = self.directory(cgroup)
        if not top.is_dir():
            return None
        pids: list[int] = []
        for directory, _, files in os.walk(top):
            if "cgroup.procs" not in files:
                continue
            try:
                text = Path(directory, "cgroup.procs").read_text()
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed while walked
            except OSError as error:
                raise SourceError(f"{directory}/cgroup.procs: {error.strerror or error}") from error
            pids += (int(word) for word in text.split() if word.isdigit())
        return pids

    def exists(self, cgroup: Cgroup) -> bool:
        return self.directory(cgroup).is_dir()


def member_roots(procfs: ProcFS, pids: Collection[int]) -> tuple[int, ...]:
    """The members ``pids`` of a cgroup whose parent is not a member. The walk from these roots
    (exporter/groups.py) finds the other members."""
    members = set(pids)
    roots = []
    for pid in sorted(members):
        try:
            stat = procfs.process(pid)
        except SourceError:
            stat = None
        if stat is not None and stat.ppid not in members:
            roots.append(pid)
    return tuple(roots)


def with_cgroup_roots(
    procfs: ProcFS, cgroupfs: CgroupFS, roots: Mapping[_K, tuple[int, ...]], cgroups: Mapping[_K, Cgroup]
) -> tuple[dict[_K, tuple[int, ...]], dict[int, _K]]:
    """``roots`` (run -> root PIDs) with each cgroup run's roots as its cgroup holds them now, and the owner of
    every process in a cgroup run: a process counts in one run, and a cgroup run, its operator's, comes first. A
    process in the cgroups of two runs (of two v1 hierarchies) is the first's; a cgroup that does not exist, or
    cannot be read, holds none. ProcessGroups.sample leaves the owned processes out of every other run's walk."""
    resolved = dict(roots)
    owners: dict[int, _K] = {}
    for key, cgroup in cgroups.items():
        try:
            pids = cgroupfs.processes(cgroup) or []
        except SourceError as error:
            log.debug("cannot read the members of cgroup %s: %s", cgroup, error)
            pids = []
        mine = [pid for pid in pids if owners.setdefault(pid, key) == key]
        resolved[key] = member_roots(procfs, mine)
    return resolved, owners


def cgroup_holding(procfs: ProcFS, pid: int, cgroups: Mapping[Cgroup, _K]) -> _K | None:
    """The value in ``cgroups`` of the first cgroup that holds process ``pid``, or None (also when it is gone)."""
    try:
        text = procfs.cgroup(pid)
    except SourceError:
        return None
    for member_of in cgroups_of(text):
        for cgroup, value in cgroups.items():
            if cgroup.contains(member_of):
                return value
    return None


def tree_in_cgroup(procfs: ProcFS, pid: int, cgroups: Mapping[Cgroup, _K]) -> tuple[int, _K] | None:
    """A process of the tree under ``pid`` (it first) that one of ``cgroups`` holds, with that cgroup's value; or
    None. A process run of ``pid`` would hold that process too."""
    if not cgroups:
        return None
    children = ChildLookup(procfs)
    stack = [pid]
    seen: set[int] = set()
    while stack:
        current = stack.pop()
        held = cgroup_holding(procfs, current, cgroups)
        if held is not None:
            return current, held
        seen.add(current)
        try:
            stack += (child for child in children(current) if child not in seen)
        except SourceError:
            continue
    return None


class Operators:
    """Who may register cgroup runs: root, and the members of one group (``--runs.cgroup-operators``): a caller
    whose effective gid it is, or a user the group database lists in it."""

    def __init__(self, group: int | None = None) -> None:
        self._gid = group

    def includes(self, uid: int, gid: int | None) -> bool:
        if uid == 0:
            return True
        if self._gid is None:
            return False
        if gid == self._gid:
            return True
        try:
            return pwd.getpwuid(uid).pw_name in grp.getgrgid(self._gid).gr_mem
        except KeyError:
            return False
