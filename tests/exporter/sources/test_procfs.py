"""procfs source: pure parsers on literal text, the readers on a fake procfs tree, and a real process tree (read
through the readers, the descriptor cache and group accounting)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from impact_exporter.groups import ProcessGroups
from impact_exporter.sources import HardwareNotFound
from impact_exporter.sources.procfs import (
    CpuInfo,
    CpuTimes,
    MemInfo,
    ProcFS,
    parse_cpuinfo,
    parse_loadavg_last_pid,
    parse_meminfo,
    parse_pid_stat,
    parse_smaps_rollup_pss_bytes,
    parse_stat,
    parse_statm_rss_bytes,
    parse_status_effective_capabilities,
    parse_status_uid,
)
from impact_exporter.sources.procfs_files import OpenFiles
from tests.fakes.procfs import AMD_CPUINFO, MEMINFO, PAGE, TICKS, FakeProc

# --- pure parsers --------------------------------------------------------------------------------------------------

PROC_STAT = """\
cpu  1000 200 300 4000 500 60 70 80 900 100
cpu0 500 100 150 2000 250 30 35 40 450 50
cpu1 500 100 150 2000 250 30 35 40 450 50
intr 12345 0 0
ctxt 987654
"""


def test_parse_stat_leaves_guest_time_inside_user_and_nice():
    times = parse_stat(PROC_STAT, TICKS)
    # busy = user+nice+system+irq+softirq+steal = 1000+200+300+60+70+80; guest 900 and guest_nice 100 not added.
    assert times == CpuTimes(busy_seconds=17.10, idle_seconds=45.00)


def test_parse_stat_old_kernel_with_four_columns():
    assert parse_stat("cpu  10 20 30 40\n", 10) == CpuTimes(busy_seconds=6.0, idle_seconds=4.0)


def test_parse_stat_without_aggregate_line_is_an_error():
    with pytest.raises(ValueError, match="cpu"):
        parse_stat("cpu0 1 2 3 4 5\n", TICKS)


def test_parse_pid_stat_with_spaces_and_parens_in_comm():
    text = "4242 ((a) b)) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 50 1200 300 20 0 1 0 987654 1000 10\n"
    stat = parse_pid_stat(text, TICKS)
    assert stat.pid == 4242
    assert stat.comm == "(a) b)"
    assert stat.state == "S"
    assert stat.ppid == 17
    assert stat.start_ticks == 987654
    assert stat.cpu_seconds == pytest.approx(3.0)
    assert stat.children_cpu_seconds == pytest.approx(15.0)
    assert stat.rss_pages == 10
    assert stat.key == (4242, 987654)


def test_parse_pid_stat_rejects_truncated_text():
    with pytest.raises(ValueError):
        parse_pid_stat("4242 (python) S 1 2 3", TICKS)


def test_parse_meminfo():
    assert parse_meminfo(MEMINFO) == MemInfo(total_bytes=16318480 * 1024, available_bytes=9876544 * 1024)


def test_parse_meminfo_without_memavailable_estimates_it():
    text = MEMINFO.replace("MemAvailable:    9876544 kB\n", "")
    assert parse_meminfo(text).available_bytes == (1203212 + 412340 + 7012000) * 1024


SMAPS_ROLLUP = """\
55d0c6a4e000-7ffd8a1f2000 ---p 00000000 00:00 0                          [rollup]
Rss:               45872 kB
Pss:               21337 kB
Pss_Dirty:         12000 kB
Pss_Anon:          11800 kB
Shared_Clean:      20000 kB
"""


def test_parse_smaps_rollup_pss():
    assert parse_smaps_rollup_pss_bytes(SMAPS_ROLLUP) == 21337 * 1024


def test_parse_smaps_rollup_empty_is_an_error():
    with pytest.raises(ValueError, match="Pss"):
        parse_smaps_rollup_pss_bytes("")


def test_parse_loadavg_last_pid_is_the_last_field():
    assert parse_loadavg_last_pid("0.52 0.58 0.59 2/1019 391447\n") == 391447
    with pytest.raises(ValueError):
        parse_loadavg_last_pid("0.52 0.58 0.59\n")


def test_parse_statm_rss():
    assert parse_statm_rss_bytes("765 405 377 5 0 123 0\n", PAGE) == 405 * PAGE


def test_parse_status_effective_capabilities_is_the_capeff_mask():
    status = "CapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t0000000000080000\n"
    assert parse_status_effective_capabilities(status) == 1 << 19  # CAP_SYS_PTRACE alone
    with pytest.raises(ValueError):
        parse_status_effective_capabilities("Uid:\t0\t0\t0\t0\n")


def test_parse_status_uid_is_the_real_uid():
    assert parse_status_uid("Name:\tpython\nPPid:\t1\nUid:\t1000\t0\t0\t0\nGid:\t100\t100\t100\t100\n") == 1000


INTEL_CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz
flags\t\t: fpu vme

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz

processor\t: 2
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz

processor\t: 3
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz
"""


ARM64_CPUINFO = """\
processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x3
CPU part\t: 0xd0c
CPU revision\t: 1

processor\t: 1
CPU implementer\t: 0x41
CPU part\t: 0xd0c
"""


def test_parse_cpuinfo_intel():
    info = parse_cpuinfo(INTEL_CPUINFO)
    assert info == CpuInfo(model="Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz", vendor="GenuineIntel", logical_cpus=4)


def test_parse_cpuinfo_amd():
    assert parse_cpuinfo(AMD_CPUINFO) == CpuInfo(
        model="AMD EPYC 7742 64-Core Processor", vendor="AuthenticAMD", logical_cpus=2
    )


def test_parse_cpuinfo_arm64_without_model_name_uses_implementer_and_part():
    assert parse_cpuinfo(ARM64_CPUINFO) == CpuInfo(model="Neoverse-N1", vendor="ARM", logical_cpus=2)


def test_parse_cpuinfo_arm_unknown_part_and_board_hardware():
    unknown_part = ARM64_CPUINFO.replace("0xd0c", "0xd05")
    assert parse_cpuinfo(unknown_part).model == "ARM part 0xd05"
    assert parse_cpuinfo(unknown_part + "Hardware\t: BCM2835\n").model == "BCM2835"


def test_parse_cpuinfo_without_any_known_field_is_unknown():
    assert parse_cpuinfo("processor\t: 0\nflags\t: x\n") == CpuInfo(model="unknown", vendor="unknown", logical_cpus=1)


@pytest.fixture(params=[True, False], ids=["children-files", "stat-scan"])
def fake(request: pytest.FixtureRequest, tmp_path: Path) -> FakeProc:
    """Every reader test runs with per-thread children files and on a kernel without them (ppid scan)."""
    return FakeProc(tmp_path / "proc", children_files=request.param)


ROOT = 100


# --- ProcFS readers on the fake tree -------------------------------------------------------------------------------


def test_missing_procfs_names_the_path_and_the_flag(tmp_path: Path):
    with pytest.raises(HardwareNotFound, match=r"nowhere/stat.*--path\.procfs"):
        ProcFS(tmp_path / "nowhere")


def test_procfs_readers(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000, utime=120, stime=30, comm="train (gpu)", uid=4321)
    fake.spawn(101, ROOT, start=1001)
    fake.spawn(102, ROOT, start=1002)
    procfs = fake.procfs()

    assert procfs.cpu_times() == CpuTimes(busy_seconds=fake.busy_ticks / TICKS, idle_seconds=fake.idle_ticks / TICKS)
    assert procfs.meminfo().total_bytes == 16318480 * 1024
    assert procfs.cpuinfo().logical_cpus == 2
    stat = procfs.process(ROOT)
    assert stat is not None and (stat.comm, stat.cpu_seconds, stat.start_ticks) == ("train (gpu)", 1.5, 1000)
    assert procfs.process(999) is None
    assert procfs.uid(ROOT) == 4321
    assert procfs.uid(999) is None
    assert sorted(procfs.children(ROOT)) == [101, 102]
    assert procfs.children(999) == []
    assert procfs.children_files_supported is fake.children_files


# --- the real /proc ------------------------------------------------------------------------------------------------

FORKING_PARENT = textwrap.dedent(
    """
    import os, sys, time

    def burn(seconds):
        start = time.process_time()
        while time.process_time() - start < seconds:
            pass

    print("ready", flush=True)
    sys.stdin.readline()
    start = time.process_time()
    read_end, write_end = os.pipe()
    children = []
    for _ in range(50):
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            burn(0.02)
            os.write(write_end, f"{time.process_time()}\\n".encode())
            os._exit(0)
        children.append(pid)
    os.close(write_end)
    for pid in children:
        os.waitpid(pid, 0)
    with os.fdopen(read_end) as reports:
        children_seconds = sum(float(line) for line in reports)
    print(children_seconds + time.process_time() - start, flush=True)
    sys.stdin.readline()
    """
)

BUSY_CHILD = textwrap.dedent(
    """
    import os, sys, time

    print("ready", flush=True)
    sys.stdin.readline()
    pid = os.fork()
    if pid == 0:
        start = time.process_time()
        while time.process_time() - start < 0.5:
            pass
        print(time.process_time(), flush=True)
        sys.stdin.readline()
        os._exit(0)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
    sys.stdin.readline()
    """
)


@pytest.fixture
def spawn() -> Iterator:
    """Start a Python script with pipes, and make sure it is gone after the test."""
    started: list[subprocess.Popen[str]] = []

    def start(script: str) -> subprocess.Popen[str]:
        command = [sys.executable, "-c", script]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        return process

    yield start
    for process in started:
        if process.stdin:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tell(process: subprocess.Popen[str], line: str) -> str:
    """Send a line to the script and return the next line it prints."""
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()
    return process.stdout.readline()


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux procfs")
def test_real_group_counts_children_that_exited_and_were_reaped(spawn):
    parent = spawn(FORKING_PARENT)
    groups = ProcessGroups(ProcFS(Path("/proc")))
    assert groups.sample({"run": (parent.pid,)})["run"].cpu_seconds == 0.0

    reported = float(tell(parent, "go"))  # the 50 children's CPU plus the parent's, as they measured it

    usage = groups.sample({"run": (parent.pid,)})["run"]
    assert reported >= 50 * 0.02
    assert reported - 0.05 <= usage.cpu_seconds <= reported * 1.25 + 0.1
    assert usage.processes == 1
    assert usage.root_alive is True
    assert usage.memory_bytes > 1_000_000


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux procfs")
def test_real_busy_child_is_measured_live_and_not_again_when_reaped(spawn):
    parent = spawn(BUSY_CHILD)
    groups = ProcessGroups(ProcFS(Path("/proc")))
    groups.sample({"run": (parent.pid,)})

    child_seconds = float(tell(parent, "go"))
    live = groups.sample({"run": (parent.pid,)})["run"]
    assert live.processes == 2
    assert child_seconds - 0.03 <= live.cpu_seconds <= child_seconds + 0.1

    assert tell(parent, "exit") == "reaped\n"  # the child reads this line, exits, and the parent reaps it
    reaped = groups.sample({"run": (parent.pid,)})["run"]
    assert reaped.processes == 1
    assert reaped.cpu_seconds < 0.05


THREADS_WITH_CHILDREN = textwrap.dedent(
    """
    import subprocess, sys, threading
    started, release, pids = threading.Barrier(3), threading.Event(), []

    def fork_and_wait():
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        pids.append(child.pid)
        started.wait()
        release.wait()
        child.stdin.close()
        child.wait()

    threads = [threading.Thread(target=fork_and_wait) for _ in range(2)]
    for thread in threads:
        thread.start()
    started.wait()
    print("ready", flush=True)
    print(*pids, flush=True)
    sys.stdin.readline()
    release.set()
    for thread in threads:
        thread.join()
    """
)


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux procfs")
def test_real_children_forked_by_two_threads_are_read_from_each_threads_file(spawn):
    parent = spawn(THREADS_WITH_CHILDREN)  # each of its two threads forks one child: one per thread's children file
    assert parent.stdout is not None
    children = sorted(int(pid) for pid in parent.stdout.readline().split())
    procfs = ProcFS(Path("/proc"))
    stat = procfs.process(parent.pid)

    assert stat is not None and stat.threads == 3
    assert sorted(procfs.children(parent.pid, stat.threads, procfs.open_files())) == children
    assert ProcessGroups(procfs).sample({"run": (parent.pid,)})["run"].pids == {parent.pid, *children}


def open_proc_files(pid: int) -> list[str]:
    """What this test process has open under /proc/<pid>/ (kept-open files of ``pid``)."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # the descriptor listdir itself used
    return [target for target in targets if target.startswith(f"/proc/{pid}/")]


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux procfs")
def test_real_member_files_stay_open_between_samples_and_close_when_the_group_goes(spawn):
    parent = spawn(BUSY_CHILD)
    groups = ProcessGroups(ProcFS(Path("/proc")))
    groups.sample({"run": (parent.pid,)})
    kept = [f"/proc/{parent.pid}/stat", f"/proc/{parent.pid}/task/{parent.pid}/children"]
    assert sorted(open_proc_files(parent.pid)) == kept

    child_seconds = float(tell(parent, "go"))  # read again through the open files: they show the new times
    live = groups.sample({"run": (parent.pid,)})["run"]
    assert live.processes == 2
    assert child_seconds - 0.03 <= live.cpu_seconds <= child_seconds + 0.1

    groups.sample({})
    assert open_proc_files(parent.pid) == []


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux procfs")
def test_real_open_stat_of_a_reaped_process_reads_as_gone():
    procfs = ProcFS(Path("/proc"))
    files = procfs.open_files()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        assert procfs.process(sleeper.pid, files).comm == "sleep"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert procfs.process(sleeper.pid, files) is None  # ESRCH on the open file, and no process at the path
    assert files.open_count == 0


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux procfs")
def test_real_reads_beyond_the_open_file_limit_open_and_close_each_time():
    procfs = ProcFS(Path("/proc"))
    files = OpenFiles("/proc", limit=1)
    sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    try:
        for _ in range(2):
            stats = [procfs.process(sleeper.pid, files) for sleeper in sleepers]
            assert [stat.pid for stat in stats] == [sleeper.pid for sleeper in sleepers]
            assert files.open_count == 1
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()


def test_fake_procfs_files_are_never_kept_open(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000, utime=100)  # the fake replaces files: an open one would show old times
    files = fake.procfs().open_files()
    assert fake.procfs().process(ROOT, files).cpu_seconds == 1.0
    fake.run(ROOT, 50)
    assert fake.procfs().process(ROOT, files).cpu_seconds == 1.5
    assert files.open_count == 0


@pytest.mark.skipif(not Path("/proc/loadavg").is_file(), reason="needs Linux procfs")
def test_real_last_created_pid_changes_when_a_process_is_created(tmp_path: Path):
    procfs = ProcFS(Path("/proc"))
    before = procfs.last_created_pid()
    subprocess.run(["true"], check=True)
    assert before is not None and procfs.last_created_pid() != before

    other = FakeProc(tmp_path / "proc")
    (other.root / "self").unlink()
    (other.root / "self").symlink_to("1")  # another PID namespace's procfs: its loadavg would show ours
    assert other.procfs().last_created_pid() is None
