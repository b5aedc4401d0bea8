"""Reading procfs files: whole-file reads and a cache of descriptors kept open between samples.

A procfs file is read whole with raw ``os.open``/``os.pread`` (the cheapest way in Python; this runs for every
tracked process at every sample). ``OpenFiles`` keeps the per-process files the group walk reads every sample open,
so that each later read is one ``pread``.
"""

from __future__ import annotations

import os
import resource
import weakref
from pathlib import Path

_READ_SIZE = 65536


def read_text(path: Path | str) -> str:
    """Read a procfs file whole. Bytes that are not UTF-8 become U+FFFD (a comm can hold any byte).

    Raw ``os.open``/``os.pread`` rather than pathlib: this runs for every tracked process at every sample, and is
    most of the exporter's own CPU time (docs/performance.md).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return pread_text(fd)
    finally:
        os.close(fd)


def pread_text(fd: int) -> str:
    """The whole text of an open procfs file, read from its start (``pread``: no seek, no reopen)."""
    data = os.pread(fd, _READ_SIZE, 0)
    if len(data) < _READ_SIZE:  # a short read is the end: procfs fills the buffer while it can
        return data.decode("utf-8", errors="replace")
    chunks = [data]
    while len(chunks[-1]) == _READ_SIZE:
        chunks.append(os.pread(fd, _READ_SIZE, _READ_SIZE * len(chunks)))
    return b"".join(chunks).decode("utf-8", errors="replace")


def kept_open_limit() -> int:
    """How many procfs files ``OpenFiles`` may keep open: half this process's open-file limit (RLIMIT_NOFILE), so
    sockets, the run store and the files opened per read always have the other half."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (1 << 20 if soft == resource.RLIM_INFINITY else soft) // 2


class OpenFiles:
    """The ``stat`` and main thread's ``children`` files of tracked processes, kept open between samples, so that
    reading one is a single ``pread`` instead of open, read and close. For one thread at a time.

    An open procfs file stays tied to its process: once that process is reaped, ``stat`` fails with ESRCH even if
    the PID is reused, and the path is opened again. A fresh ``stat`` of a PID first closes its other kept files,
    which may belong to the earlier process (a reaped process's ``children`` reads empty, not ESRCH), so callers
    read ``stat`` before ``children``. At most ``limit`` files stay open (beyond that, each read opens and closes);
    a tree that only imitates procfs gets 0, since its files are replaced and an open one would show old text.
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
                text = pread_text(fd)
            except ProcessLookupError:  # its process was reaped: the path may name a new process now
                self._close(pid)
            else:
                self._used.add(pid)
                return text
        elif name == "stat" and files is not None:
            self._close(pid)
        path = f"{self._prefix}/{pid}/{name}"
        if self._count >= self._limit:
            return read_text(path)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._open.setdefault(pid, {})[name] = fd
        self._count += 1
        self._used.add(pid)
        try:
            return pread_text(fd)
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
