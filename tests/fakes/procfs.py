"""A writer of real procfs trees, for tests that need full control of CPU time and processes.

Files are replaced atomically, so an exporter reading the tree concurrently sees each file old or new, never
half written and never missing while its process lives. CPU times are in ticks of 1/100 s (Linux's USER_HZ)::

    proc = FakeProc(tmp_path / "proc")
    proc.spawn(4242, ppid=1, start=1000, uid=0)
    proc.advance(busy_ticks=200, idle_ticks=0, running={4242: 100})   # the run used half the busy time
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from impact_exporter.sources.procfs import MEMORY_RSS, ProcFS

TICKS = 100
PAGE = 4096

MEMINFO = """\
MemTotal:       16318480 kB
MemFree:         1203212 kB
MemAvailable:    9876544 kB
Buffers:          412340 kB
Cached:          7012000 kB
HugePages_Total:       0
"""

AMD_CPUINFO = """\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7742 64-Core Processor

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7742 64-Core Processor
"""


@dataclass(frozen=True)
class FakeProcess:
    """One process of the fake tree. CPU times are in ticks (1/100 s)."""

    pid: int
    ppid: int
    start: int
    utime: int = 0
    stime: int = 0
    cutime: int = 0
    cstime: int = 0
    state: str = "S"
    comm: str = "worker"
    pss_kib: int | None = None
    rss_pages: int = 0
    uid: int = 1000
    cgroup: str = "0::/user.slice/user-1000.slice/session-1.scope"

    @property
    def total(self) -> int:
        return self.utime + self.stime + self.cutime + self.cstime


class FakeProc:
    """A procfs tree of real files that mirrors how the kernel moves CPU time on reaping."""

    def __init__(self, root: Path, *, children_files: bool = True, hostname: str = "fakehost") -> None:
        self.root = root
        self.children_files = children_files
        self.processes: dict[int, FakeProcess] = {}
        self.busy_ticks = 100_000
        self.idle_ticks = 1_000_000
        self.uptime_ticks = 1_000_000  # the clock of start times; advance moves it by the ticks of one CPU
        self._created: set[tuple[int, int]] = set()  # (pid, start) of every process the tree has shown
        root.mkdir(parents=True, exist_ok=True)
        # Like the procfs of this process's PID namespace, where the kernel's loadavg shows the latest new PID.
        (root / "self").unlink(missing_ok=True)
        (root / "self").symlink_to(str(os.getpid()))
        (root / "sys" / "kernel").mkdir(parents=True, exist_ok=True)
        _write_atomically(root / "sys" / "kernel" / "hostname", f"{hostname}\n")
        _write_atomically(root / "sys" / "kernel" / "osrelease", "6.1.0-fake\n")
        _write_atomically(root / "meminfo", MEMINFO)
        _write_atomically(root / "cpuinfo", AMD_CPUINFO)
        self._write_stat()
        self._write_loadavg()

    def procfs(self, memory: str = MEMORY_RSS) -> ProcFS:
        """A reader of this tree; ``memory`` as ``--collector.memory`` sets it."""
        return ProcFS(self.root, ticks_per_second=TICKS, page_size=PAGE, memory=memory)

    def spawn(self, pid: int, ppid: int, start: int, **fields: object) -> None:
        self.processes[pid] = FakeProcess(pid, ppid, start, **fields)  # type: ignore[arg-type]
        self._write()

    def run(self, pid: int, ticks: int) -> None:
        """``pid`` burns ``ticks`` of user time."""
        process = self.processes[pid]
        self.update(pid, utime=process.utime + ticks)

    def advance(self, busy_ticks: int, idle_ticks: int, running: dict[int, int] | None = None) -> None:
        """The machine spends ``busy_ticks`` busy and ``idle_ticks`` idle; ``running`` says who used what."""
        for pid, ticks in (running or {}).items():
            process = self.processes[pid]
            self.processes[pid] = replace(process, utime=process.utime + ticks)
        self.busy_ticks += busy_ticks
        self.idle_ticks += idle_ticks
        self.uptime_ticks += max(1, busy_ticks + idle_ticks)
        self._write()

    def update(self, pid: int, **fields: object) -> None:
        self.processes[pid] = replace(self.processes[pid], **fields)  # type: ignore[arg-type]
        self._write()

    def reap(self, pid: int) -> None:
        """``pid`` exits and its parent waits for it: its whole total lands in the parent's cutime."""
        child = self.processes.pop(pid)
        parent = self.processes[child.ppid]
        cutime, cstime = parent.cutime + child.utime + child.cutime, parent.cstime + child.stime + child.cstime
        self.processes[parent.pid] = replace(parent, cutime=cutime, cstime=cstime)
        self._write()

    def vanish(self, pid: int) -> None:
        """``pid`` is gone and its time lands nowhere we can see (reaped by init, or auto-reaped)."""
        del self.processes[pid]
        self._write()

    def _write(self) -> None:
        # The machine's busy time first: an exporter reads /proc/stat before the processes, so a sample taken while
        # this writes sees the busy time without the processes' share of it (made up in the next interval), not
        # the share without the busy time, which gives a process more than its share of the interval's energy.
        self._write_stat()
        for entry in self.root.iterdir():
            if entry.name.isdigit() and int(entry.name) not in self.processes:
                shutil.rmtree(entry)
        for process in self.processes.values():
            self._write_process(process)
        self._write_loadavg()

    def _write_loadavg(self) -> None:
        """Its last field is the PID of the process that appeared last, as the kernel's latest new PID."""
        created = [(process.pid, process.start) for process in self.processes.values()]
        new = [key for key in created if key not in self._created]
        if new or not (self.root / "loadavg").exists():
            self._created.update(new)
            last_pid = new[-1][0] if new else 0
            _write_atomically(self.root / "loadavg", f"0.00 0.00 0.00 1/{len(self.processes)} {last_pid}\n")

    def _write_stat(self) -> None:
        _write_atomically(self.root / "stat", f"cpu  {self.busy_ticks} 0 0 {self.idle_ticks} 0 0 0 0 0 0\n")
        _write_atomically(self.root / "uptime", f"{self.uptime_ticks / TICKS:.2f} 0.00\n")

    def _write_process(self, p: FakeProcess) -> None:
        directory = self.root / str(p.pid)
        task = directory / "task" / str(p.pid)
        task.mkdir(parents=True, exist_ok=True)
        fields = [p.state, p.ppid, p.pid, p.pid, 0, -1, 4194304, 0, 0, 0, 0]
        fields += [p.utime, p.stime, p.cutime, p.cstime, 20, 0, 1, 0, p.start, 123456, p.rss_pages]
        _write_atomically(directory / "stat", f"{p.pid} ({p.comm}) {' '.join(map(str, fields))}\n")
        _write_atomically(directory / "statm", f"{p.rss_pages * 2} {p.rss_pages} 10 5 0 20 0\n")
        uids = "\t".join([str(p.uid)] * 4)
        _write_atomically(directory / "status", f"Name:\t{p.comm}\nPPid:\t{p.ppid}\nUid:\t{uids}\nGid:\t0\t0\t0\t0\n")
        _write_atomically(directory / "cgroup", f"{p.cgroup}\n")
        if p.pss_kib is not None:
            _write_atomically(
                directory / "smaps_rollup", f"00-ff ---p 0 00:00 0 [rollup]\nRss: 1 kB\nPss: {p.pss_kib} kB\n"
            )
        if self.children_files:
            children = [q.pid for q in self.processes.values() if q.ppid == p.pid]
            _write_atomically(task / "children", "".join(f"{child} " for child in children))


def _write_atomically(path: Path, text: str) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.chmod(temp, 0o644)
    os.replace(temp, path)
