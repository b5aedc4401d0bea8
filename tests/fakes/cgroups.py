"""A writer of real cgroupfs trees, laid out as the kernel and Slurm lay them out, kept in step with a FakeProc.

A hybrid host (cgroup v1 hierarchies under ``<root>/<controller>``, the unified one under ``<root>/unified``), as
this project's CI machines mount it. Every cgroup directory has its ``cgroup.procs``; ``place`` moves a process,
rewriting both the ``cgroup.procs`` files and the process's ``/proc/<pid>/cgroup``::

    cgroups = FakeCgroups(tmp_path / "cgroup", proc)
    job = cgroups.slurm_job(uid=1000, job_id=42, steps=("batch", "0"))   # freezer:/slurm_node1/uid_1000/job_42
    cgroups.place(4242, f"{job}/step_0")
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.fakes.procfs import FakeProc

SLURM_CONTROLLERS = ("freezer", "cpuacct", "memory")
"""The v1 hierarchies in which Slurm's proctrack/cgroup, jobacct_gather/cgroup and task/cgroup make a job's tree."""


class FakeCgroups:
    """A cgroupfs tree whose cgroups tests make, fill and remove."""

    def __init__(self, root: Path, proc: FakeProc) -> None:
        self.root = root
        self.proc = proc
        for hierarchy in (*SLURM_CONTROLLERS, "unified"):
            self._make_directory(root / hierarchy)

    def directory(self, hierarchy: str, path: str) -> Path:
        return self.root / (hierarchy or "unified") / path.lstrip("/")

    def make(self, hierarchy: str, path: str) -> None:
        """Make the cgroup and those above it, each with an empty ``cgroup.procs``."""
        directory = self.root / (hierarchy or "unified")
        for segment in path.strip("/").split("/"):
            directory = directory / segment
            self._make_directory(directory)

    def slurm_job(self, uid: int, job_id: int, steps: tuple[str, ...], node: str = "node1") -> str:
        """Make a job's cgroups as Slurm's cgroup/v1 plugin does (``slurm_<node>/uid_<uid>/job_<id>/step_<step>``
        in each of SLURM_CONTROLLERS; Debian builds Slurm for several slurmd per host, hence ``_<node>``); its path."""
        job = f"/slurm_{node}/uid_{uid}/job_{job_id}"
        for controller in SLURM_CONTROLLERS:
            for step in steps:
                self.make(controller, f"{job}/step_{step}")
        return job

    def place(self, pid: int, path: str, hierarchies: tuple[str, ...] = SLURM_CONTROLLERS) -> None:
        """Move ``pid`` into cgroup ``path`` of each of ``hierarchies`` ("" is the unified one)."""
        for hierarchy in hierarchies:
            self._leave(pid, hierarchy)
            procs = self.directory(hierarchy, path) / "cgroup.procs"
            procs.write_text(procs.read_text() + f"{pid}\n")
        self._write_proc_cgroup(pid)

    def drop(self, pid: int) -> None:
        """``pid`` exited and was reaped: the kernel takes it out of every ``cgroup.procs``."""
        for hierarchy in (*SLURM_CONTROLLERS, ""):
            self._leave(pid, hierarchy)

    def remove(self, hierarchy: str, path: str) -> None:
        """Remove an (empty) cgroup and those below it, as Slurm does when a job ends."""
        shutil.rmtree(self.directory(hierarchy, path))

    def _leave(self, pid: int, hierarchy: str) -> None:
        for procs in (self.root / (hierarchy or "unified")).rglob("cgroup.procs"):
            pids = procs.read_text().split()
            if str(pid) in pids:
                procs.write_text("".join(f"{other}\n" for other in pids if other != str(pid)))

    def _write_proc_cgroup(self, pid: int) -> None:
        """``/proc/<pid>/cgroup`` as the kernel shows it: one line per hierarchy, the unified one as ``0::``."""
        lines = []
        for number, hierarchy in enumerate(("", *SLURM_CONTROLLERS)):
            path = "/"
            for procs in (self.root / (hierarchy or "unified")).rglob("cgroup.procs"):
                if str(pid) in procs.read_text().split():
                    path = "/" + str(procs.parent.relative_to(self.root / (hierarchy or "unified")))
            lines.append(f"{number}:{hierarchy}:{path.rstrip('/.') or '/'}")
        self.proc.update(pid, cgroup="\n".join(reversed(lines)))

    @staticmethod
    def _make_directory(directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cgroup.procs").touch()
