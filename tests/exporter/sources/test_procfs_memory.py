"""--collector.memory on real processes: RSS from statm by default, PSS from smaps_rollup only when asked for, and
PSS of another user's process unreadable without ptrace access (it then counts its RSS)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from impact_exporter.groups import ProcessGroups
from impact_exporter.sources.procfs import MEMORY_PSS, ProcFS, parse_smaps_rollup_pss_bytes
from tests.users import as_uid

PROC = Path("/proc")
PAGE = os.sysconf("SC_PAGE_SIZE")
SHARED_MIB = 32
NOBODY = 65534

# A parent that touches SHARED_MIB MiB, then forks: parent and child share those pages until either writes them.
# The parent names the child once the child is about to sleep, so that neither copies pages while they are read.
PARENT_AND_CHILD = textwrap.dedent(
    f"""
    import os, sys, time
    block = bytearray(b"x" * ({SHARED_MIB} << 20))
    ready, tell = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(tell, b"x")
        time.sleep(60)
        os._exit(0)
    os.read(ready, 1)
    print(child, flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
def sharing() -> Iterator[tuple[int, int]]:
    """(parent pid, child pid) of two processes that share SHARED_MIB MiB of memory."""
    process = subprocess.Popen([sys.executable, "-c", PARENT_AND_CHILD], stdout=subprocess.PIPE, text=True)
    child = int(process.stdout.readline())
    try:
        yield process.pid, child
    finally:
        os.kill(child, signal.SIGKILL)
        process.kill()
        process.wait()


def statm_rss(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def smaps_pss(pid: int) -> int:
    return parse_smaps_rollup_pss_bytes(Path(f"/proc/{pid}/smaps_rollup").read_text())


def test_rss_by_default_and_pss_when_asked_on_real_processes(sharing: tuple[int, int]) -> None:
    parent, child = sharing
    rss, pss = ProcFS(PROC), ProcFS(PROC, memory=MEMORY_PSS)

    for pid in (parent, child):  # the interpreters still touch a page now and then: within 2%
        assert rss.memory_bytes(pid) == pytest.approx(statm_rss(pid), rel=0.02)
        assert pss.memory_bytes(pid) == pytest.approx(smaps_pss(pid), rel=0.02)

    rss_total = ProcessGroups(rss).sample({"run": (parent,)})["run"].memory_bytes
    pss_total = ProcessGroups(pss).sample({"run": (parent,)})["run"].memory_bytes
    assert rss_total >= 2 * SHARED_MIB << 20, "RSS counts the shared pages in each process"
    assert SHARED_MIB << 20 <= pss_total <= rss_total - (SHARED_MIB << 20) * 0.9, "PSS counts them once"


def test_pss_of_another_users_process_needs_ptrace_access_and_falls_back_to_rss(sharing: tuple[int, int]) -> None:
    """Root's process, read by an exporter running as nobody without CAP_SYS_PTRACE: what --collector.memory=pss
    documents that it needs."""
    parent, _ = sharing

    def read_as_nobody() -> list[object]:
        try:
            Path(f"/proc/{parent}/smaps_rollup").read_text()
            smaps = "readable"
        except PermissionError:
            smaps = "permission denied"
        return [smaps, ProcFS(PROC, memory=MEMORY_PSS).memory_bytes(parent)]

    smaps, memory = as_uid(NOBODY, NOBODY, read_as_nobody)
    assert smaps == "permission denied"
    assert memory == pytest.approx(statm_rss(parent), rel=0.02)
    assert memory > 1.5 * smaps_pss(parent), "its RSS, not its PSS: the pages it shares count whole"
