"""procfs: system CPU time, memory, CPU model, and the CPU and memory of process groups.

Everything is read from files under one procfs root (``--path.procfs``). A container that mounts the host's procfs
at ``/host/proc`` therefore sees the host's processes. Nothing here uses psutil or any ``os`` call that reads
this process's own ``/proc``. The ``parse_*`` functions are pure: they take file text and raise ``ValueError`` on
text they cannot read. ``ProcFS`` turns ``OSError`` and ``ValueError`` into the source errors the sampler
understands.
"""

from __future__ import annotations

import os
import resource
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar

from exporter.sources import HardwareNotFound, HardwareUnreadable, SourceError

# The errors that mean "the process is gone". A process can exit between the directory listing and the read, or
# during the read itself (ESRCH).
_GONE = (FileNotFoundError, ProcessLookupError, NotADirectoryError)

# /proc/<pid>/stat fields after the ")" that ends comm, counted from 0 at the state field (field 3 in proc(5)).
_STATE, _PPID, _UTIME, _STIME, _CUTIME, _CSTIME, _THREADS, _STARTTIME, _RSS = 0, 1, 11, 12, 13, 14, 17, 19, 21

# ARM "CPU implementer" codes (arch/arm64/include/asm/cputype.h) and a few common "CPU part" codes.
_ARM_IMPLEMENTERS = {
    0x41: "ARM",
    0x42: "Broadcom",
    0x43: "Cavium",
    0x46: "Fujitsu",
    0x48: "HiSilicon",
    0x4E: "NVIDIA",
    0x50: "APM",
    0x51: "Qualcomm",
    0x53: "Samsung",
    0x56: "Marvell",
    0x61: "Apple",
    0x69: "Intel",
    0xC0: "Ampere",
}
_ARM_PARTS = {
    (0x41, 0xD03): "Cortex-A53",
    (0x41, 0xD08): "Cortex-A72",
    (0x41, 0xD0B): "Cortex-A76",
    (0x41, 0xD0C): "Neoverse-N1",
    (0x41, 0xD40): "Neoverse-V1",
    (0x41, 0xD49): "Neoverse-N2",
    (0x41, 0xD4F): "Neoverse-V2",
    (0xC0, 0xAC3): "AmpereOne",
}
UNKNOWN = "unknown"

_T = TypeVar("_T")

_READ_SIZE = 65536
MEMORY_MAX_AGE_SECONDS = 30.0
"""How long a tracked process's PSS reading is reused at least (ProcessGroups): smaps_rollup is the dearest file to
read. After that it is read again when the process's RSS has changed since, else at MEMORY_UNCHANGED_MAX_AGE_SECONDS."""
MEMORY_UNCHANGED_MAX_AGE_SECONDS = 600.0
"""How long a tracked process's PSS reading is reused while its RSS stays what it was when PSS was read. PSS can
change without RSS when a process that shares its pages starts or exits: that is what this bound catches."""


# --- system-wide CPU time ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuTimes:
    """CPU time of all CPUs together since boot, in seconds, split into busy and idle."""

    busy_seconds: float
    idle_seconds: float


def parse_stat(text: str, ticks_per_second: int) -> CpuTimes:
    """Read the aggregate ``cpu`` line of ``/proc/stat``.

    Busy is user+nice+system+irq+softirq+steal. The guest and guest_nice columns are left out because the
    kernel already counts guest time inside user and nice. Idle is idle+iowait. Older kernels print fewer
    columns, and the missing ones count as 0.
    """
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            if len(fields) < 5:
                raise ValueError(f"/proc/stat cpu line has too few columns: {line!r}")
            ticks = [int(value) for value in fields[1:9]] + [0] * (9 - len(fields))
            user, nice, system, idle, iowait, irq, softirq, steal = ticks
            busy = user + nice + system + irq + softirq + steal
            return CpuTimes(busy_seconds=busy / ticks_per_second, idle_seconds=(idle + iowait) / ticks_per_second)
    raise ValueError("/proc/stat has no aggregate 'cpu' line")


# --- one process ---------------------------------------------------------------------------------------------------


class ProcStat(NamedTuple):
    """The fields of ``/proc/<pid>/stat`` that group accounting needs.

    ``(pid, start_ticks)`` identifies a process even when its PID is reused later. ``children_cpu_seconds`` is the
    CPU time of children this process has waited for. The kernel adds that time when it reaps them. A named tuple,
    not a frozen dataclass: one is built per tracked process per sample, and a tuple is built several times faster.
    """

    pid: int
    comm: str
    state: str
    ppid: int
    start_ticks: int
    cpu_seconds: float
    children_cpu_seconds: float
    threads: int = 1  # num_threads: a process with one thread has all its children in one children file
    rss_pages: int = 0  # resident pages: while they stay the same, PSS moves only when a sharer starts or exits

    @property
    def key(self) -> tuple[int, int]:
        """``(pid, start_ticks)``: the same only for the same process."""
        return (self.pid, self.start_ticks)

    @property
    def total_cpu_seconds(self) -> float:
        """Own CPU time plus that of reaped children: what this process accounts for."""
        return self.cpu_seconds + self.children_cpu_seconds


def parse_pid_stat(text: str, ticks_per_second: int) -> ProcStat:
    """Read ``/proc/<pid>/stat``.

    comm may contain spaces and parentheses, so the line is split at the first ``(`` and the last ``)``. Only the
    fields up to rss are split off (the line has about 50).
    """
    open_paren, close_paren = text.find("("), text.rfind(")")
    if open_paren < 0 or close_paren < open_paren:
        raise ValueError(f"not a /proc/<pid>/stat line: {text[:80]!r}")
    fields = text[close_paren + 1 :].split(None, _RSS + 1)
    if len(fields) <= _RSS:
        raise ValueError(f"/proc/<pid>/stat has too few fields: {text[:80]!r}")
    return ProcStat(
        int(text[:open_paren]),
        text[open_paren + 1 : close_paren],
        fields[_STATE],
        int(fields[_PPID]),
        int(fields[_STARTTIME]),
        (int(fields[_UTIME]) + int(fields[_STIME])) / ticks_per_second,
        (int(fields[_CUTIME]) + int(fields[_CSTIME])) / ticks_per_second,
        int(fields[_THREADS]),
        int(fields[_RSS]),
    )


def parse_smaps_rollup_pss_bytes(text: str) -> int:
    """Read the proportional set size (PSS) from ``/proc/<pid>/smaps_rollup``.

    PSS splits shared pages among the processes that map them, so a group's sum counts them once.
    """
    return _kib_field(text, "Pss", "smaps_rollup")


def parse_loadavg_last_pid(text: str) -> int:
    """Read the PID of the most recently created process or thread, the last field of ``/proc/loadavg``."""
    fields = text.split()
    if len(fields) < 5:
        raise ValueError(f"/proc/loadavg has too few fields: {text!r}")
    return int(fields[4])


def parse_statm_rss_bytes(text: str, page_size: int) -> int:
    """Read the resident set size from ``/proc/<pid>/statm`` (second column, in pages), for when PSS is unreadable."""
    fields = text.split()
    if len(fields) < 2:
        raise ValueError(f"/proc/<pid>/statm has too few fields: {text!r}")
    return int(fields[1]) * page_size


def parse_status_uid(text: str) -> int:
    """Read the real uid from the ``Uid:`` line of ``/proc/<pid>/status`` (real, effective, saved, filesystem)."""
    for line in text.splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise ValueError("/proc/<pid>/status has no Uid: line")


# --- memory --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemInfo:
    """Total memory and the memory still available to new work, in bytes."""

    total_bytes: int
    available_bytes: int


_MEMINFO_NAMES = frozenset({"MemTotal", "MemAvailable", "MemFree", "Buffers", "Cached"})


def parse_meminfo(text: str) -> MemInfo:
    """Read ``/proc/meminfo``.

    Kernels before 3.14 have no MemAvailable line. For them, available memory is estimated as
    MemFree+Buffers+Cached.
    """
    values = _kib_fields(text, _MEMINFO_NAMES)
    if "MemTotal" not in values:
        raise ValueError("/proc/meminfo has no MemTotal line")
    available = values.get("MemAvailable")
    if available is None:
        available = sum(values.get(name, 0) for name in ("MemFree", "Buffers", "Cached"))
    return MemInfo(total_bytes=values["MemTotal"], available_bytes=available)


def _kib_fields(text: str, names: Collection[str]) -> dict[str, int]:
    """Read the ``Name:   123 kB`` lines of ``names`` as bytes. The first of each name wins; lines without a number
    are skipped. It stops once every name is found: the sampler reads /proc/meminfo every second, and its ~55
    lines cost five times the read when all are split, while the ones wanted come first."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        name = name.strip()
        if not sep or name not in names or name in values:
            continue
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
            if len(values) == len(names):
                break
    return values


def _kib_field(text: str, name: str, what: str) -> int:
    """One ``Name: N kB`` value in bytes. Raises ``ValueError`` naming the file when the name is absent."""
    values = _kib_fields(text, (name,))
    if name not in values:
        raise ValueError(f"{what} has no {name} line")
    return values[name]


# --- CPU model -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuInfo:
    """CPU model and vendor as the kernel names them, and how many logical CPUs it shows."""

    model: str
    vendor: str
    logical_cpus: int


def parse_cpuinfo(text: str) -> CpuInfo:
    """Read ``/proc/cpuinfo``. Each field comes from its first occurrence; absent ones become ``"unknown"``.

    On x86 this uses "model name" and "vendor_id". 64-bit ARM has neither. There the vendor comes from
    "CPU implementer", and the model from "Hardware" or a known "CPU implementer"/"CPU part" pair. Logical CPUs
    are counted from the "processor" lines.
    """
    fields: dict[str, str] = {}
    processors = 0
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep:
            continue
        if name == "processor":
            processors += 1
        fields.setdefault(name, value.strip())
    implementer = _hex_or_none(fields.get("CPU implementer"))
    return CpuInfo(
        model=fields.get("model name") or fields.get("Hardware") or _arm_model(implementer, fields),
        vendor=fields.get("vendor_id") or _arm_vendor(implementer),
        logical_cpus=processors,
    )


def _arm_vendor(implementer: int | None) -> str:
    """Vendor name for an ARM implementer code, ``"implementer 0x.."`` for one not in the table, else unknown."""
    if implementer is None:
        return UNKNOWN
    return _ARM_IMPLEMENTERS.get(implementer, f"implementer 0x{implementer:02x}")


def _arm_model(implementer: int | None, fields: Mapping[str, str]) -> str:
    """Core name for a known implementer/part pair, ``"<vendor> part 0x..."`` for another part, else unknown."""
    part = _hex_or_none(fields.get("CPU part"))
    if implementer is None or part is None:
        return UNKNOWN
    return _ARM_PARTS.get((implementer, part), f"{_arm_vendor(implementer)} part 0x{part:03x}")


def _hex_or_none(value: str | None) -> int | None:
    """``"0x41"`` -> 65. Returns None when the value is absent or not a number."""
    try:
        return int(value, 0) if value else None
    except ValueError:
        return None


# --- reading one procfs mount --------------------------------------------------------------------------------------


def _read_text(path: Path | str) -> str:
    """Read a procfs file whole. Bytes that are not UTF-8 become U+FFFD (a comm can hold any byte).

    Raw ``os.open``/``os.read`` cost a third of ``Path.read_bytes``: this runs for every tracked process at
    every sample, so it is most of the exporter's own CPU time.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _pread_text(fd)
    finally:
        os.close(fd)


def _pread_text(fd: int) -> str:
    """The whole text of an open procfs file, read from its start (``pread``: no seek, no reopen)."""
    data = os.pread(fd, _READ_SIZE, 0)
    if len(data) < _READ_SIZE:  # a short read is the end: procfs fills the buffer while it can
        return data.decode("utf-8", errors="replace")
    chunks = [data]
    while len(chunks[-1]) == _READ_SIZE:
        chunks.append(os.pread(fd, _READ_SIZE, _READ_SIZE * len(chunks)))
    return b"".join(chunks).decode("utf-8", errors="replace")


def _is_readers_pid_namespace(prefix: str) -> bool:
    """Whether the procfs at ``prefix`` shows this process's PID namespace: its ``self`` link names our PID."""
    try:
        return os.readlink(f"{prefix}/self") == str(os.getpid())
    except OSError:
        return False


def kept_open_limit() -> int:
    """How many procfs files ``OpenFiles`` may keep open: half this process's open-file limit (RLIMIT_NOFILE), so
    sockets, the run store and the files opened per read always have the other half."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (1 << 20 if soft == resource.RLIM_INFINITY else soft) // 2


class OpenFiles:
    """The ``stat`` and main thread's ``children`` files of tracked processes, kept open between samples.

    Reading a kept file is one ``pread`` instead of open, read and close; on this kernel that is a third of the
    time for ``stat`` and a tenth for ``children``. A procfs file stays tied to the process it was opened for: once
    that process is reaped, a read of ``stat`` fails with ESRCH even when the PID belongs to a new process by then,
    so the file is closed and the path opened again. A fresh ``stat`` of a PID closes that PID's other kept files
    first, as they may belong to the earlier process (a reaped process's ``children`` reads as empty, not ESRCH).
    Callers read ``stat`` before ``children``, as the tree walk does.

    At most ``limit`` files stay open; beyond that files are opened, read and closed each time. ``close_unused``
    closes those of processes not read since its previous call. For one thread at a time. A directory tree that
    only imitates procfs gets ``limit=0``: its files are replaced when they change, and an open one would keep
    showing the old text.
    """

    def __init__(self, prefix: str, limit: int) -> None:
        """Keep files under ``prefix`` (the procfs root as a string), at most ``limit`` at once."""
        self._prefix = prefix
        self._limit = limit
        self._open: dict[int, dict[str, int]] = {}  # pid -> file name under /proc/<pid> -> descriptor
        self._count = 0
        self._used: set[int] = set()
        weakref.finalize(self, _close_all, self._open)

    @property
    def open_count(self) -> int:
        """How many files are open now."""
        return self._count

    def read(self, pid: int, name: str) -> str:
        """The text of ``<root>/<pid>/<name>``. Raises the ``OSError`` of ``open`` when the file is gone."""
        files = self._open.get(pid)
        fd = files.get(name) if files is not None else None
        if fd is not None:
            try:
                text = _pread_text(fd)
            except ProcessLookupError:  # its process was reaped: the path may name a new process now
                self._close(pid)
            else:
                self._used.add(pid)
                return text
        elif name == "stat" and files is not None:
            self._close(pid)
        path = f"{self._prefix}/{pid}/{name}"
        if self._count >= self._limit:
            return _read_text(path)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._open.setdefault(pid, {})[name] = fd
        self._count += 1
        self._used.add(pid)
        try:
            return _pread_text(fd)
        except OSError:
            self._close(pid)
            raise

    def close_unused(self) -> None:
        """Close the files of processes not read since the previous call (they left every group, or died)."""
        for pid in self._open.keys() - self._used:
            self._close(pid)
        self._used = set()

    def _close(self, pid: int) -> None:
        for fd in self._open.pop(pid, {}).values():
            os.close(fd)
            self._count -= 1


def _close_all(open_files: dict[int, dict[str, int]]) -> None:
    """Close every descriptor of an ``OpenFiles`` that is being collected."""
    for files in open_files.values():
        for fd in files.values():
            os.close(fd)


class ProcFS:
    """Reads one procfs mount.

    The system-wide readers raise ``HardwareNotFound``, ``HardwareUnreadable`` or ``SourceError``. Per-process
    readers return None when the process is gone, because processes exit between any two reads.
    """

    def __init__(self, root: Path, *, ticks_per_second: int | None = None, page_size: int | None = None) -> None:
        """Check that ``root`` looks like procfs. Tick and page size default to this host's (sysconf, not /proc)."""
        self._root = Path(root)
        self._prefix = str(self._root)  # per-process paths are built as strings: pathlib's joins are slow
        if not (self._root / "stat").is_file():
            raise HardwareNotFound(f"{self._root / 'stat'} does not exist: point --path.procfs at a procfs mount")
        self._ticks = ticks_per_second or os.sysconf("SC_CLK_TCK")
        self._page_size = page_size or os.sysconf("SC_PAGE_SIZE")
        self._children_files: bool | None = None
        self._kernel_procfs = (self._root / "stat").stat().st_size == 0  # procfs generates files: size 0
        self._readers_namespace = _is_readers_pid_namespace(self._prefix)

    def open_files(self) -> OpenFiles:
        """A cache of open per-process files for one reader thread (``process`` and ``children`` take it). It keeps
        files open only on a real procfs: there an open file shows the process's current state."""
        return OpenFiles(self._prefix, kept_open_limit() if self._kernel_procfs else 0)

    @property
    def root(self) -> Path:
        """The procfs mount this reads."""
        return self._root

    @property
    def children_files_supported(self) -> bool | None:
        """Whether this kernel has ``task/<tid>/children`` (CONFIG_PROC_CHILDREN). None until a lookup has shown it."""
        return self._children_files

    # system-wide

    def cpu_times(self) -> CpuTimes:
        """Busy and idle CPU seconds of the whole machine since boot."""
        return self._parse_system_file("stat", lambda text: parse_stat(text, self._ticks))

    def last_created_pid(self) -> int | None:
        """The PID of the most recently created process or thread; unchanged between two calls, it means that no
        process was created meanwhile. None when it cannot be read, or when this procfs is another PID namespace's:
        the kernel reports the namespace of the reader, not the mount's (an exporter in a container of its own
        reading the host's procfs)."""
        if not self._readers_namespace:
            return None
        try:
            return parse_loadavg_last_pid(_read_text(f"{self._prefix}/loadavg"))
        except (OSError, ValueError):
            return None

    def meminfo(self) -> MemInfo:
        """Total and available memory of the machine."""
        return self._parse_system_file("meminfo", parse_meminfo)

    def cpuinfo(self) -> CpuInfo:
        """CPU model, vendor and logical CPU count."""
        return self._parse_system_file("cpuinfo", parse_cpuinfo)

    def _parse_system_file(self, name: str, parse: Callable[[str], _T]) -> _T:
        """Read ``<root>/<name>`` and parse it, turning each failure into the matching source error."""
        path = f"{self._prefix}/{name}"  # a string: a new Path per read costs more than the read of /proc/stat
        try:
            return parse(_read_text(path))
        except FileNotFoundError as error:
            raise HardwareNotFound(f"{path} does not exist") from error
        except PermissionError as error:
            raise HardwareUnreadable(f"{path}: permission denied") from error
        except (OSError, ValueError) as error:
            raise SourceError(f"{path}: {error}") from error

    # per process

    def process(self, pid: int, files: OpenFiles | None = None) -> ProcStat | None:
        """The stat of ``pid``, or None when it is gone. Zombies are still present until reaped. ``files`` keeps
        the file open for the next read."""
        text = self._read_pid_file(pid, "stat", files)
        if not text:  # gone, or exited while it was read (the kernel then returns nothing)
            return None
        try:
            return parse_pid_stat(text, self._ticks)
        except ValueError as error:
            raise SourceError(f"{self._root / str(pid) / 'stat'}: {error}") from error

    def memory_bytes(self, pid: int) -> int | None:
        """PSS from smaps_rollup when this process may read it, else RSS from statm. None when the process is gone.

        smaps_rollup needs ptrace access to the process and kernel 4.14 or later. statm needs neither. Zombies and
        kernel threads have an empty smaps_rollup and fall through to statm, which shows 0 for them.
        """
        try:
            return parse_smaps_rollup_pss_bytes(_read_text(f"{self._prefix}/{pid}/smaps_rollup"))
        except (OSError, ValueError):
            pass  # absent on this kernel, not permitted, empty, or gone: statm decides which
        text = self._read_pid_file(pid, "statm")
        if not text:
            return None
        try:
            return parse_statm_rss_bytes(text, self._page_size)
        except ValueError as error:
            raise SourceError(f"{self._root / str(pid) / 'statm'}: {error}") from error

    def uid(self, pid: int) -> int | None:
        """Real uid of ``pid``, or None when it is gone."""
        text = self._read_pid_file(pid, "status")
        if not text:
            return None
        try:
            return parse_status_uid(text)
        except ValueError as error:
            raise SourceError(f"{self._root / str(pid) / 'status'}: {error}") from error

    def cgroup(self, pid: int) -> str:
        """The text of ``/proc/<pid>/cgroup`` (its cgroup paths), or "" when the process is gone."""
        return self._read_pid_file(pid, "cgroup") or ""

    def children(self, pid: int, threads: int | None = None, files: OpenFiles | None = None) -> list[int]:
        """Direct children of ``pid``, or [] when it is gone.

        These are read from ``task/*/children`` of every thread, since a child belongs to the thread that forked
        it. ``threads=1`` (the process's num_threads, from its stat) skips listing ``task/``: the main thread's
        file is the only one. ``files`` keeps the main thread's file open; read ``process(pid, files)`` first. A
        kernel without those files needs a scan of every ``<root>/*/stat`` instead.
        """
        if self._children_files is not False:
            found = self._children_from_files(pid, threads == 1, files)
            if found is not None:
                return found
        return self.scan_children().get(pid, [])

    def scan_children(self) -> dict[int, list[int]]:
        """Parent PID -> child PIDs from one pass over every ``<root>/<pid>/stat`` (one read per process)."""
        tree: dict[int, list[int]] = {}
        for stat in self._all_processes():
            tree.setdefault(stat.ppid, []).append(stat.pid)
        return tree

    def _all_processes(self) -> Iterable[ProcStat]:
        """The stat of every process under the root. Processes that exit during the pass are skipped."""
        for entry in sorted(os.listdir(self._root)):
            if entry.isdigit():
                stat = self.process(int(entry))
                if stat is not None:
                    yield stat

    def _children_from_files(
        self, pid: int, single_threaded: bool = False, files: OpenFiles | None = None
    ) -> list[int] | None:
        """Children from the per-thread children files. Returns None, and remembers it, when the kernel has none.

        A single-threaded process has one such file, its main thread's: once the kernel is known to have the
        files, it is read without listing ``task/`` (one system call in three).
        """
        task_dir = f"{self._prefix}/{pid}/task"
        main_thread = str(pid)
        if single_threaded and self._children_files:
            tids = [main_thread]
        else:
            try:
                tids = sorted(os.listdir(task_dir))
            except _GONE:
                return []
        children: list[int] = []
        for tid in tids:
            try:
                if files is not None and tid == main_thread:  # other threads' TIDs can be reused within the process
                    text = files.read(pid, f"task/{tid}/children")
                else:
                    text = _read_text(f"{task_dir}/{tid}/children")
            except _GONE:
                if os.path.isdir(f"{task_dir}/{tid}"):  # the thread is there but the file is not: the kernel lacks it
                    self._children_files = False
                    return None
                continue  # the thread exited
            except OSError as error:
                raise SourceError(f"{task_dir}/{tid}/children: {error}") from error
            self._children_files = True
            if text:
                children += map(int, text.split())
        return children if len(tids) == 1 else list(dict.fromkeys(children))  # a child is in one thread's file

    def _read_pid_file(self, pid: int, name: str, files: OpenFiles | None = None) -> str | None:
        """``<root>/<pid>/<name>``, or None when the process is gone. Other OS errors become source errors."""
        try:
            return files.read(pid, name) if files is not None else _read_text(f"{self._prefix}/{pid}/{name}")
        except _GONE:
            return None
        except PermissionError as error:  # for example procfs mounted with hidepid=1
            raise HardwareUnreadable(f"{self._prefix}/{pid}/{name}: permission denied") from error
        except OSError as error:
            raise SourceError(f"{self._prefix}/{pid}/{name}: {error}") from error


# --- process groups ------------------------------------------------------------------------------------------------

ProcKey = tuple[int, int]  # (pid, start_ticks)
_Memory = tuple[int, float, int]  # a member's memory reading: (bytes, when read, RSS in pages then)
_Baseline = tuple[str, dict[int, "int | None"], dict[ProcKey, "ProcStat"], dict[ProcKey, "ProcStat"]]
# what add_roots queues: group id, roots' start times, members, roots' parents


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


@dataclass(frozen=True)
class _Walked:
    """One group's tree as a sample finds it, before its usage is worked out: roots' start times, the members
    known before (``members``) and those of roots new to the group (``fresh``)."""

    roots: Mapping[int, int | None]
    members: dict[ProcKey, ProcStat]
    fresh: dict[ProcKey, ProcStat]


class ProcessGroups:
    """Per-interval CPU and memory of process groups: one or more root PIDs plus all their descendants.

    Each sample walks the tree down from the roots, so the cost grows with the group's size and not the machine's.
    Processes are keyed by ``(pid, start_ticks)`` so that a reused PID is never taken for the same process.
    A member's total is its own CPU time plus that of the children it has reaped (cutime+cstime). A group's
    interval CPU is the sum of totals of the members now, minus the sum of totals of the members at the previous
    sample. The exception is a member that vanished since then. It is subtracted only when its time has moved into
    a member that is counted now: it died, and its last-seen parent is a member now, or is itself a vanished member
    subtracted by this same rule. The parent's cutime then carries the child's whole life, including the part after
    the last sample, and the child is counted there exactly once. A vanished member whose parent is outside the
    group (a root itself, or a parent that is gone too) is not subtracted. Neither is a member that is still alive
    but no longer a descendant (orphaned to init). Their time up to the previous sample stays counted, and later time
    is not the group's. So children that fork and exit between two samples are not lost, as long as a member reaps
    them. A process under two roots of one group is counted once.

    A root's parent is usually outside the group (impact-run, a shell, a job launcher), and it reaps the root when
    the root exits: the root's whole CPU time then lands in that parent's cutime. So the stat of each live root's
    parent is kept with each sample (and with the baseline ``add_roots`` takes), and when a root has died since,
    the rise of that same parent's cutime+cstime stands in for the root's final total. This is what gives a run
    that starts and ends between two samples (a 0.3 s command under impact-run, which reaps it before it stops
    the run) its CPU time, and every run the CPU its root used after the last sample. Roots reaped by one parent
    in the same interval share the rise beyond their last-seen totals equally. A parent that also reaps other
    children in that interval gives their time to the root too; a parent that ignores SIGCHLD, or init (pid 1,
    which reaps every orphan), gives nothing, and the root's time after the last sample is lost as before.

    Limits: a member that ignores SIGCHLD has its children auto-reaped, and their time is added to no one. Their
    last counted time is then subtracted anyway, and the interval is clamped at 0. On the first sample of a group,
    and of a root added to it later, only the baseline is recorded, because time used before tracking is not the
    run's. Zombies count as members until reaped. ``root_alive`` is False once every root is a zombie or gone.
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
        tables (hundreds of microseconds for a small process, milliseconds for a large one), while memory changes
        slowly and only weighs DRAM energy; a process whose RSS stays the same changes its PSS only when a process
        it shares pages with starts or exits.
        """
        self._procfs = procfs
        self._groups: dict[str, _Group] = {}
        self._memory_max_age = memory_max_age_seconds
        self._clock = clock
        self._memory: dict[ProcKey, _Memory] = {}  # the readings of the members at the last sample
        self._files = procfs.open_files()  # members' stat and children files stay open between samples
        self._added: list[_Baseline] = []  # add_roots' baselines
        self._added_lock = threading.Lock()
        self._last_created_pid: int | None = None
        self._children_lists: dict[int, list[int]] = {}  # the children of each member walked at the last sample

    def sample(
        self, roots: Mapping[str, Collection[int]], pause: Callable[[], None] = lambda: None
    ) -> dict[str, GroupUsage]:
        """Group id -> root PIDs in, group id -> usage since the previous call out. Forgets ids no longer passed.

        Roots may be added to a group between calls; a root no longer passed stops being part of it. ``pause`` is
        called before each group (the sampler's lets a scrape go first, exporter/scheduling.py).

        A member's ``children`` file is read again only when a task created since the previous call names it as
        parent (``_children_lists_to_reuse``); the other members' lists of the previous call still hold. A group
        that lost a member is walked again from the files, since a member may have adopted the dead one's children.
        (A member that is a child subreaper adopting the orphans of a process outside the group is seen at the next
        full read: when a root is added, a group loses a member, or the PIDs wrap around.)
        """
        known = self._children_lists_to_reuse(self._take_added_roots())
        lists: dict[int, list[int]] = {}
        children = _ChildLookup(self._procfs, self._files, lists, known)
        usage: dict[str, GroupUsage] = {}
        groups: dict[str, _Group] = {}
        memory: dict[ProcKey, _Memory] = {}
        walked: dict[str, _Walked] = {}
        for group_id, root_pids in roots.items():
            pause()
            previous = self._groups.get(group_id)
            walk = self._walk_group(tuple(root_pids), previous, children)
            if known is not None and previous is not None and not previous.members.keys() <= (
                walk.members.keys() | walk.fresh.keys()
            ):
                walk = self._walk_group(tuple(root_pids), previous, _ChildLookup(self._procfs, self._files, lists))
            walked[group_id] = walk
        exited = self._exited_roots(walked)
        parents: dict[int, ProcStat | None] = {}
        for group_id, walk in walked.items():
            usage[group_id], groups[group_id] = self._group_usage(
                walk, self._groups.get(group_id), exited.get(group_id, {}), memory, parents
            )
        self._groups = groups
        self._memory = memory
        self._children_lists = lists
        self._files.close_unused()
        return usage

    def add_roots(self, group_id: str, root_pids: Collection[int]) -> None:
        """Record the baseline of ``root_pids`` and their descendants in the group now, not at the next sample.

        Their CPU time then counts from this instant (a run's start calls it). It reads only these roots' trees, and
        may be called from any thread, also while ``sample`` runs: the baseline waits in a queue that the next
        ``sample`` takes first. Roots the group has by then are left as they are; that ``sample`` must be passed the
        roots (it forgets a group or root it is not given).
        """
        children = _ChildLookup(self._procfs)
        roots: dict[int, int | None] = {}
        fresh: dict[ProcKey, ProcStat] = {}
        for pid in root_pids:
            stat = self._procfs.process(pid)  # without the open files: those belong to the sampling thread
            roots[pid] = stat.start_ticks if stat is not None else None
            self._walk(pid, roots[pid], children, fresh, None)
        reapers = self._reapers(roots, fresh, {}, None)
        with self._added_lock:
            self._added.append((group_id, roots, fresh, reapers))

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

    def _take_added_roots(self) -> bool:
        """Merge the baselines ``add_roots`` queued into the groups, for roots the groups do not have yet; True
        when there were any."""
        with self._added_lock:
            added, self._added = self._added, []
        for group_id, roots, baseline, reapers in added:
            previous = self._groups.get(group_id)
            known = previous.roots if previous is not None else {}
            if all(pid in known for pid in roots):
                continue
            members = {**baseline, **(previous.members if previous is not None else {})}
            kept = {**reapers, **(previous.reapers if previous is not None else {})}
            self._groups[group_id] = _Group({**roots, **known}, members, kept)
        return bool(added)

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
        self, root_pids: tuple[int, ...], previous: _Group | None, children: Callable[[int, int], list[int]]
    ) -> _Walked:
        """The group's members now: those under roots it had (``members``) and under roots new to it (``fresh``)."""
        known = previous.roots if previous is not None else {}
        roots = {pid: known[pid] if pid in known else self._start_ticks(pid) for pid in root_pids}
        members: dict[ProcKey, ProcStat] = {}
        for pid in root_pids:
            if pid in known:
                self._walk(pid, roots[pid], children, members, self._files)
        fresh: dict[ProcKey, ProcStat] = {}
        for pid in root_pids:
            if pid not in known:
                self._walk(pid, roots[pid], children, fresh, self._files)
        return _Walked(roots, members, fresh)

    def _group_usage(
        self,
        walk: _Walked,
        previous: _Group | None,
        exited: Mapping[ProcKey, ProcStat],
        memory: dict[ProcKey, _Memory],
        parents: dict[int, ProcStat | None],
    ) -> tuple[GroupUsage, _Group]:
        """Usage of one group and the state to keep for the next sample; its members' memory readings go to
        ``memory``. ``exited``: its roots that died since the previous sample, with their final totals as their
        reaper shows them (``_exited_roots``); ``parents``: the parents read in this sample, shared by groups."""
        members, fresh = walk.members, walk.fresh
        if previous is None:
            cpu_seconds = 0.0
        elif fresh:
            before = {**fresh, **previous.members}
            cpu_seconds = self._interval_cpu(before, {**fresh, **members, **exited})
        else:  # the usual case: no root joined since the previous sample
            cpu_seconds = self._interval_cpu(previous.members, {**members, **exited} if exited else members)
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
        return usage, _Group(walk.roots, members, self._reapers(walk.roots, members, parents, self._files))

    def _reapers(
        self,
        roots: Mapping[int, int | None],
        members: Mapping[ProcKey, ProcStat],
        parents: dict[int, ProcStat | None],
        files: OpenFiles | None,
    ) -> dict[ProcKey, ProcStat]:
        """Each live root's parent as it is now, where that parent is outside the group and not init: the process
        that will reap the root and so hold its final CPU time. ``parents`` caches reads within one sample."""
        member_pids = {pid for pid, _ in members}
        reapers: dict[ProcKey, ProcStat] = {}
        for pid, start in roots.items():
            root = members.get((pid, start)) if start is not None else None
            if root is None or root.ppid <= 1 or root.ppid in member_pids:
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

    def _exited_roots(self, walked: Mapping[str, _Walked]) -> dict[str, dict[ProcKey, ProcStat]]:
        """Per group, its roots that died since the previous sample and whose parent has since reaped them, each
        with its total CPU time replaced by its final one (see the class docstring).

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
                if root is None or (pid, start) in present or walk.roots.get(pid) != start:
                    continue
                claims.setdefault(parent.key, []).append((group_id, root, parent))
        exited: dict[str, dict[ProcKey, ProcStat]] = {}
        for (parent_pid, parent_start), claimed in claims.items():
            try:
                parent = self._procfs.process(parent_pid, self._files)
                if parent is None or parent.start_ticks != parent_start or any(
                    self._still_alive(root.key) for _, root, _ in claimed
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
    ) -> None:
        """Add the root (when it is still the same process) and every descendant to ``members``, reading through
        ``files`` (the sampling thread's open files, or None)."""
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
                if child is not None and child.ppid == parent.pid and child.key not in members:
                    members[child.key] = child
                    stack.append(child)

    def _interval_cpu(self, before: Mapping[ProcKey, ProcStat], now: Mapping[ProcKey, ProcStat]) -> float:
        """CPU seconds the group used since ``before``, following the rules in the class docstring, clamped at 0."""
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


class _ChildLookup:
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
