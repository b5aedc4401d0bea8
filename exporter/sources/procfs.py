"""procfs: system CPU time, memory, CPU model, and per-process stat, memory and children.

Everything is read from files under one procfs root (``--path.procfs``). A container that mounts the host's procfs
at ``/host/proc`` therefore sees the host's processes. Nothing here uses psutil or any ``os`` call that reads
this process's own ``/proc``. The ``parse_*`` functions are pure: they take file text and raise ``ValueError`` on
text they cannot read. ``ProcFS`` turns ``OSError`` and ``ValueError`` into the source errors the sampler
understands. Process-group accounting on top of these readers is exporter/groups.py; the descriptor cache is
procfs_files.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

from impact_exporter.sources import HardwareNotFound, HardwareUnreadable, SourceError
from impact_exporter.sources.procfs_files import OpenFiles, kept_open_limit, read_text

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
MEMORY_RSS, MEMORY_PSS = "rss", "pss"
"""What a process's memory is (``ProcFS(memory=...)``, ``--collector.memory``): its resident set size from
``statm``, which anyone may read, or its proportional set size from ``smaps_rollup``, which counts pages shared
with other processes once but needs ptrace-read access to the process."""

_T = TypeVar("_T")


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
    not a frozen dataclass: one is built per tracked process per sample, and a tuple is cheaper to build.
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
    """Read the resident set size from ``/proc/<pid>/statm`` (second column, in pages): the same counter as the
    rss field of ``stat``, readable by anyone."""
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


def parse_status_effective_capabilities(text: str) -> int:
    """Read the effective capability set, a bit mask, from the ``CapEff:`` line of ``/proc/<pid>/status``."""
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise ValueError("/proc/<pid>/status has no CapEff: line")


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
    are skipped. It stops once every name is found: the sampler reads /proc/meminfo at every sample, and the
    names it wants come first among some 55 lines."""
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


def _is_readers_pid_namespace(prefix: str) -> bool:
    """Whether the procfs at ``prefix`` shows this process's PID namespace: its ``self`` link names our PID."""
    try:
        return os.readlink(f"{prefix}/self") == str(os.getpid())
    except OSError:
        return False


class ProcFS:
    """Reads one procfs mount.

    The system-wide readers raise ``HardwareNotFound``, ``HardwareUnreadable`` or ``SourceError``. Per-process
    readers return None when the process is gone, because processes exit between any two reads.
    """

    def __init__(
        self,
        root: Path,
        *,
        ticks_per_second: int | None = None,
        page_size: int | None = None,
        memory: str = MEMORY_RSS,
    ) -> None:
        """Check that ``root`` looks like procfs. Tick and page size default to this host's (sysconf, not /proc);
        ``memory`` is what ``memory_bytes`` reads (MEMORY_RSS or MEMORY_PSS)."""
        if memory not in (MEMORY_RSS, MEMORY_PSS):
            raise ValueError(f"memory must be {MEMORY_RSS!r} or {MEMORY_PSS!r}, not {memory!r}")
        self._memory = memory
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
    def memory_basis(self) -> str:
        """What ``memory_bytes`` reads: MEMORY_RSS or MEMORY_PSS."""
        return self._memory

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
            return parse_loadavg_last_pid(read_text(f"{self._prefix}/loadavg"))
        except (OSError, ValueError):
            return None

    def uptime_ticks(self) -> int:
        """Clock ticks since boot, from ``uptime``: the clock of a process's start_ticks."""
        return self._parse_system_file("uptime", lambda text: int(float(text.split()[0]) * self._ticks))

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
            return parse(read_text(path))
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
        """RSS from statm; with MEMORY_PSS, PSS from smaps_rollup where this process may read it, else RSS. None when
        the process is gone.

        smaps_rollup needs ptrace-read access to the process (CAP_SYS_PTRACE for another user's) and kernel 4.14 or
        later. statm needs neither. Zombies and kernel threads have an empty smaps_rollup and fall through to statm,
        which shows 0 for them.
        """
        if self._memory == MEMORY_PSS:
            try:
                return parse_smaps_rollup_pss_bytes(read_text(f"{self._prefix}/{pid}/smaps_rollup"))
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
                    text = read_text(f"{task_dir}/{tid}/children")
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
            return files.read(pid, name) if files is not None else read_text(f"{self._prefix}/{pid}/{name}")
        except _GONE:
            return None
        except PermissionError as error:  # for example procfs mounted with hidepid=1
            raise HardwareUnreadable(f"{self._prefix}/{pid}/{name}: permission denied") from error
        except OSError as error:
            raise SourceError(f"{self._prefix}/{pid}/{name}: {error}") from error
