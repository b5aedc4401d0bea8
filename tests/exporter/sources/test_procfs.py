"""procfs source: pure parsers on literal text, group accounting on a fake procfs tree, and a real process tree."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.sources import HardwareNotFound
from exporter.sources.procfs import (
    MEMORY_MAX_AGE_SECONDS,
    MEMORY_UNCHANGED_MAX_AGE_SECONDS,
    CpuInfo,
    CpuTimes,
    GroupUsage,
    MemInfo,
    OpenFiles,
    ProcessGroups,
    ProcFS,
    parse_cpuinfo,
    parse_loadavg_last_pid,
    parse_meminfo,
    parse_pid_stat,
    parse_smaps_rollup_pss_bytes,
    parse_stat,
    parse_statm_rss_bytes,
    parse_status_uid,
)
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
    """Every group test runs with per-thread children files and on a kernel without them (ppid scan)."""
    return FakeProc(tmp_path / "proc", children_files=request.param)


ROOT = 100


def test_first_sample_is_a_baseline_of_zero(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000, utime=500, cutime=300)
    fake.spawn(101, ROOT, start=1010, utime=200)
    groups = ProcessGroups(fake.procfs())

    usage = groups.sample({"run": (ROOT,)})["run"]

    assert usage.cpu_seconds == 0.0
    assert usage.processes == 2
    assert usage.root_alive is True


def test_cpu_of_live_members_is_the_interval_delta(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000, utime=500)
    fake.spawn(101, ROOT, start=1010, utime=200)
    groups = ProcessGroups(fake.procfs())
    groups.sample({"run": (ROOT,)})

    fake.run(ROOT, 30)
    fake.run(101, 70)
    fake.spawn(102, 101, start=1020, utime=25)  # forked since the last sample: all its time is the interval's

    usage = groups.sample({"run": (ROOT,)})["run"]
    assert usage.cpu_seconds == pytest.approx(1.25)
    assert usage.processes == 3


def test_child_reaped_by_root_between_samples_is_counted_once(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000, utime=100)
    fake.spawn(101, ROOT, start=1010, utime=30)
    groups = ProcessGroups(fake.procfs())
    groups.sample({"run": (ROOT,)})

    fake.run(101, 20)  # 0.2 s after the last sample, then exits
    fake.reap(101)  # root's cutime now holds all 0.5 s of the child
    fake.run(ROOT, 10)

    usage = groups.sample({"run": (ROOT,)})["run"]
    assert usage.cpu_seconds == pytest.approx(0.3)
    assert usage.processes == 1

    fake.run(ROOT, 5)
    assert groups.sample({"run": (ROOT,)})["run"].cpu_seconds == pytest.approx(0.05)


def test_root_added_later_counts_only_from_when_it_joined(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000, utime=100)
    fake.spawn(300, 1, start=1300, utime=900)  # a second rank of the same run, already busy before joining
    groups = ProcessGroups(fake.procfs())
    groups.sample({"run": (ROOT,)})

    fake.run(ROOT, 10)
    fake.run(300, 50)  # before it joined: not the run's
    assert groups.sample({"run": (ROOT, 300)})["run"].cpu_seconds == pytest.approx(0.10)

    fake.run(ROOT, 10)
    fake.run(300, 20)
    usage = groups.sample({"run": (ROOT, 300)})["run"]
    assert usage.cpu_seconds == pytest.approx(0.30)
    assert usage.processes == 2


def test_roots_added_between_samples_count_from_when_they_were_added(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000, utime=100)
    fake.spawn(101, ROOT, start=1010, utime=40)
    fake.spawn(300, 1, start=1300, utime=900)
    groups = ProcessGroups(fake.procfs())
    groups.add_roots("run", [ROOT])  # a run's start: its baseline now, not at the next sample

    fake.run(ROOT, 10)
    fake.run(101, 15)
    fake.run(300, 50)  # not in the run yet
    groups.add_roots("run", [ROOT, 300])  # a second rank joins; ROOT keeps its baseline
    fake.run(300, 20)

    usage = groups.sample({"run": (ROOT, 300)})["run"]
    assert usage.cpu_seconds == pytest.approx(0.45)
    assert usage.processes == 3


def test_roots_added_but_not_passed_to_the_next_sample_are_forgotten(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000, utime=100)
    groups = ProcessGroups(fake.procfs())
    groups.add_roots("run", [ROOT])
    groups.sample({})  # the run was stopped meanwhile

    fake.run(ROOT, 10)
    assert groups.sample({"run": (ROOT,)})["run"].cpu_seconds == 0.0  # a new baseline, as for any new group


def test_process_under_two_roots_of_one_group_is_counted_once(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000)
    fake.spawn(101, ROOT, start=1010)  # registered as a root too, and a descendant of the first root
    groups = ProcessGroups(fake.procfs())
    groups.sample({"run": (ROOT, 101)})

    fake.run(101, 40)
    usage = groups.sample({"run": (ROOT, 101)})["run"]
    assert usage.cpu_seconds == pytest.approx(0.40)
    assert usage.processes == 2


def test_group_lives_while_any_root_lives(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000)
    fake.spawn(300, 1, start=1300)
    groups = ProcessGroups(fake.procfs())
    groups.sample({"run": (ROOT, 300)})

    fake.vanish(ROOT)
    assert groups.sample({"run": (ROOT, 300)})["run"].root_alive is True
    fake.vanish(300)
    assert groups.sample({"run": (ROOT, 300)})["run"].root_alive is False


def test_children_that_fork_and_exit_between_samples_are_not_lost(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000)
    groups = ProcessGroups(fake.procfs())
    groups.sample({"run": (ROOT,)})

    for offset in range(5):  # never seen by any sample
        fake.spawn(200 + offset, ROOT, start=1100 + offset, utime=4, stime=2)
        fake.reap(200 + offset)

    assert groups.sample({"run": (ROOT,)})["run"].cpu_seconds == pytest.approx(0.30)


def test_grandchild_reaped_by_child_reaped_by_root(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000)
    fake.spawn(101, ROOT, start=1010, utime=10)
    fake.spawn(102, 101, start=1020, utime=40)
    groups = ProcessGroups(fake.procfs())
    groups.sample({"run": (ROOT,)})

    fake.run(102, 15)
    fake.reap(102)
    fake.run(101, 5)
    fake.reap(101)

    assert groups.sample({"run": (ROOT,)})["run"].cpu_seconds == pytest.approx(0.20)


def test_pid_reuse_with_a_new_start_time_is_a_new_process(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000)
    fake.spawn(101, ROOT, start=1010, utime=80)
    groups = ProcessGroups(fake.procfs())
    groups.sample({"run": (ROOT,)})

    fake.run(101, 10)
    fake.reap(101)  # the old 101 ends with 0.9 s, 0.1 s of it new
    fake.spawn(101, ROOT, start=1500, utime=30)  # a new process with the same PID

    usage = groups.sample({"run": (ROOT,)})["run"]
    assert usage.cpu_seconds == pytest.approx(0.1 + 0.3)
    assert usage.processes == 2


def test_reused_pid_of_a_member_that_left_the_group_is_counted_from_zero(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000)
    fake.spawn(101, ROOT, start=1010, utime=10)
    fake.spawn(102, 101, start=1020, utime=10)
    fake.spawn(103, 102, start=1030, utime=60)
    groups = ProcessGroups(fake.procfs())
    groups.sample({"run": (ROOT,)})

    fake.run(101, 10)
    fake.reap(101)  # 102 is orphaned to init and leaves the group
    fake.update(102, ppid=1)
    fake.reap(103)  # by 102, outside the group now: 103's 0.6 s stay counted
    fake.spawn(103, ROOT, start=1600, utime=30)  # the root forks a new process that gets PID 103

    usage = groups.sample({"run": (ROOT,)})["run"]
    # Taken for the old 103, the new one would net 0.3 - 0.6 and the interval would clamp to 0.
    assert usage.cpu_seconds == pytest.approx(0.1 + 0.3)
    assert usage.processes == 2


def test_reused_root_pid_is_not_the_root(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000, utime=50)
    groups = ProcessGroups(fake.procfs())
    groups.sample({"run": (ROOT,)})

    fake.vanish(ROOT)
    fake.spawn(ROOT, 1, start=9000, utime=700)  # an unrelated process got the PID
    fake.spawn(101, ROOT, start=9001, utime=300)

    usage = groups.sample({"run": (ROOT,)})["run"]
    assert usage.root_alive is False
    assert usage.processes == 0
    assert usage.cpu_seconds == 0.0
    assert usage.memory_bytes == 0


def test_reparented_orphan_keeps_its_counted_time_and_stops_counting(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000)
    fake.spawn(101, ROOT, start=1010, utime=20)
    fake.spawn(102, 101, start=1020, utime=50)
    groups = ProcessGroups(fake.procfs())
    groups.sample({"run": (ROOT,)})

    fake.run(101, 10)
    fake.reap(101)  # 101's 0.3 s land in the root; 102 is orphaned to init
    fake.update(102, ppid=1)
    fake.run(102, 40)

    usage = groups.sample({"run": (ROOT,)})["run"]
    # 101's interval time (0.1) counts; 102's earlier 0.5 s is not taken back, its later time is not the run's.
    assert usage.cpu_seconds == pytest.approx(0.1)
    assert usage.processes == 1

    fake.run(102, 40)
    fake.vanish(102)  # init reaps it
    assert groups.sample({"run": (ROOT,)})["run"].cpu_seconds == 0.0


def test_root_reaped_by_its_outside_parent_keeps_counted_time(fake: FakeProc):
    fake.spawn(1, 0, start=1)
    fake.spawn(ROOT, 1, start=1000, utime=10)
    fake.spawn(101, ROOT, start=1010, utime=60)
    groups = ProcessGroups(fake.procfs())
    groups.sample({"run": (ROOT,)})

    fake.run(101, 10)
    fake.reap(101)
    fake.reap(ROOT)  # the shell that started the run waits for it

    usage = groups.sample({"run": (ROOT,)})["run"]
    # Neither the root's final time nor 101's (inside it) can be seen; what was counted is not taken back.
    assert usage.cpu_seconds == 0.0
    assert usage.root_alive is False
    assert usage.processes == 0


LAUNCHER = 50  # impact-run, a shell or a test: the parent outside the run that waits for its root


def test_root_reaped_by_its_launcher_counts_its_last_moments_and_its_reaped_child_once(fake: FakeProc):
    fake.spawn(LAUNCHER, 1, start=500, cutime=300)  # it reaped other children before the run
    fake.spawn(ROOT, LAUNCHER, start=1000, utime=10)
    fake.spawn(101, ROOT, start=1010, utime=60)
    groups = ProcessGroups(fake.procfs())
    groups.sample({"run": (ROOT,)})

    fake.run(ROOT, 7)
    fake.run(101, 10)
    fake.reap(101)  # 101's whole 70 ticks move into ROOT's cutime
    fake.reap(ROOT)  # the launcher waits for the root: 10 + 7 + 70 ticks move into its cutime

    usage = groups.sample({"run": (ROOT,)})["run"]
    assert usage.cpu_seconds == pytest.approx(0.17)  # what both used since the first sample, 101's counted once
    assert usage.processes == 0


def test_a_run_that_starts_and_ends_between_two_samples_gets_its_cpu_time(fake: FakeProc):
    fake.spawn(LAUNCHER, 1, start=500)
    fake.spawn(ROOT, LAUNCHER, start=1000, utime=4)  # its start-up before registration is not the run's
    groups = ProcessGroups(fake.procfs())
    groups.sample({})
    groups.add_roots("run", [ROOT])  # registered

    fake.run(ROOT, 30)  # a 0.3 s busy command
    fake.reap(ROOT)  # it exits and its launcher reaps it, before any sample saw it

    usage = groups.sample({"run": (ROOT,)})["run"]
    assert usage.cpu_seconds == pytest.approx(0.30)
    assert usage.processes == 0


def test_two_roots_reaped_by_one_launcher_in_one_interval_share_what_they_used_since(fake: FakeProc):
    fake.spawn(LAUNCHER, 1, start=500)
    fake.spawn(ROOT, LAUNCHER, start=1000, utime=10)
    fake.spawn(300, LAUNCHER, start=1300, utime=20)
    groups = ProcessGroups(fake.procfs())
    groups.sample({"a": (ROOT,), "b": (300,)})

    fake.run(ROOT, 10)
    fake.run(300, 30)
    fake.reap(ROOT)
    fake.reap(300)

    usage = groups.sample({"a": (ROOT,), "b": (300,)})
    assert usage["a"].cpu_seconds + usage["b"].cpu_seconds == pytest.approx(0.40)  # nothing counted twice
    assert usage["a"].cpu_seconds == pytest.approx(0.20)  # which one used what cannot be told apart


def test_a_root_its_launcher_did_not_reap_gets_nothing_more(fake: FakeProc):
    fake.spawn(LAUNCHER, 1, start=500)
    fake.spawn(ROOT, LAUNCHER, start=1000, utime=10)
    groups = ProcessGroups(fake.procfs())
    groups.sample({"run": (ROOT,)})

    fake.run(ROOT, 10)
    fake.vanish(ROOT)  # the launcher ignores SIGCHLD: the kernel reaps the root and adds its time to no one

    assert groups.sample({"run": (ROOT,)})["run"].cpu_seconds == 0.0

def test_zombie_root_counts_its_reaped_children_but_is_not_alive(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000, utime=10)
    fake.spawn(101, ROOT, start=1010, utime=60)
    groups = ProcessGroups(fake.procfs())
    groups.sample({"run": (ROOT,)})

    fake.run(101, 10)
    fake.reap(101)
    fake.update(ROOT, state="Z")

    usage = groups.sample({"run": (ROOT,)})["run"]
    assert usage.cpu_seconds == pytest.approx(0.1)
    assert usage.processes == 1
    assert usage.root_alive is False


def test_auto_reaped_child_clamps_the_interval_at_zero(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000)
    fake.spawn(101, ROOT, start=1010, utime=90)
    groups = ProcessGroups(fake.procfs())
    groups.sample({"run": (ROOT,)})

    fake.vanish(101)  # parent ignores SIGCHLD: the kernel reaps 101 and adds its time to no one
    fake.run(ROOT, 5)

    assert groups.sample({"run": (ROOT,)})["run"].cpu_seconds == 0.0


def test_stale_child_list_entry_with_another_parent_is_not_a_member(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000)
    fake.spawn(101, ROOT, start=1010)
    procfs = fake.procfs()
    fake.update(101, ppid=1)
    if fake.children_files:  # the children file was read, then 101 died and its PID went to another parent
        (fake.root / str(ROOT) / "task" / str(ROOT) / "children").write_text("101 555 ")

    usage = ProcessGroups(procfs).sample({"run": (ROOT,)})["run"]
    assert usage.processes == 1


def test_memory_is_pss_when_readable_else_rss(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000, pss_kib=2048, rss_pages=5000)
    fake.spawn(101, ROOT, start=1010, rss_pages=300)  # no smaps_rollup: old kernel or not permitted
    procfs = fake.procfs()

    assert procfs.memory_bytes(ROOT) == 2048 * 1024
    assert procfs.memory_bytes(101) == 300 * PAGE
    assert procfs.memory_bytes(999) is None
    assert ProcessGroups(procfs).sample({"run": (ROOT,)})["run"].memory_bytes == 2048 * 1024 + 300 * PAGE


def test_pss_of_a_member_whose_rss_stays_the_same_is_read_again_only_after_the_long_age(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000, pss_kib=2048, rss_pages=1000)
    now = [0.0]
    groups = ProcessGroups(fake.procfs(), clock=lambda: now[0])
    assert groups.sample({"run": (ROOT,)})["run"].memory_bytes == 2048 * 1024

    fake.update(ROOT, pss_kib=1024)  # another process maps its pages now: its PSS shrinks, its RSS does not
    memory_at = {}
    for now[0] in (MEMORY_MAX_AGE_SECONDS, MEMORY_UNCHANGED_MAX_AGE_SECONDS - 1, MEMORY_UNCHANGED_MAX_AGE_SECONDS):
        memory_at[now[0]] = groups.sample({"run": (ROOT,)})["run"].memory_bytes

    assert memory_at == {
        MEMORY_MAX_AGE_SECONDS: 2048 * 1024,
        MEMORY_UNCHANGED_MAX_AGE_SECONDS - 1: 2048 * 1024,
        MEMORY_UNCHANGED_MAX_AGE_SECONDS: 1024 * 1024,
    }


def test_pss_of_a_member_whose_rss_changed_is_read_again_after_the_max_age(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000, pss_kib=2048, rss_pages=1000)
    fake.spawn(101, ROOT, start=1010, pss_kib=512, rss_pages=200)
    now = [0.0]
    groups = ProcessGroups(fake.procfs(), clock=lambda: now[0])
    assert groups.sample({"run": (ROOT,)})["run"].memory_bytes == (2048 + 512) * 1024

    fake.update(ROOT, pss_kib=3072, rss_pages=1250)  # it allocated
    fake.update(101, pss_kib=256)  # its PSS moved but its RSS did not: kept until the long age
    memory_at = {}
    for now[0] in (1.0, MEMORY_MAX_AGE_SECONDS - 1, MEMORY_MAX_AGE_SECONDS, MEMORY_MAX_AGE_SECONDS + 1):
        memory_at[now[0]] = groups.sample({"run": (ROOT,)})["run"].memory_bytes
    fake.update(ROOT, pss_kib=4096)  # RSS as at the last reading: not read again at the next max age
    now[0] = 2 * MEMORY_MAX_AGE_SECONDS
    memory_at[now[0]] = groups.sample({"run": (ROOT,)})["run"].memory_bytes

    assert memory_at == {
        1.0: (2048 + 512) * 1024,
        MEMORY_MAX_AGE_SECONDS - 1: (2048 + 512) * 1024,
        MEMORY_MAX_AGE_SECONDS: (3072 + 512) * 1024,
        MEMORY_MAX_AGE_SECONDS + 1: (3072 + 512) * 1024,
        2 * MEMORY_MAX_AGE_SECONDS: (3072 + 512) * 1024,
    }


def test_forgotten_group_starts_over_with_a_baseline(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000)
    fake.spawn(200, 1, start=1001)
    groups = ProcessGroups(fake.procfs())
    groups.sample({"run": (ROOT,), "other": (200,)})

    fake.run(ROOT, 50)
    fake.run(200, 20)
    assert set(groups.sample({"other": (200,)})) == {"other"}
    fake.run(ROOT, 50)

    fake.run(200, 20)

    usage = groups.sample({"run": (ROOT,), "other": (200,)})
    assert usage["run"].cpu_seconds == 0.0  # a baseline again, although the root ran 1.0 s while tracked
    assert usage["other"].cpu_seconds == pytest.approx(0.2)


def test_group_with_root_gone_at_first_sight_never_adopts_the_pid(fake: FakeProc):
    groups = ProcessGroups(fake.procfs())
    assert groups.sample({"run": (ROOT,)})["run"] == GroupUsage(0.0, 0, 0, root_alive=False)

    fake.spawn(ROOT, 1, start=5000, utime=10)
    fake.run(ROOT, 10)
    assert groups.sample({"run": (ROOT,)})["run"] == GroupUsage(0.0, 0, 0, root_alive=False)


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


def sampled_root_and_child(tmp_path: Path, grandchild: bool = False) -> tuple[FakeProc, ProcessGroups]:
    """ROOT with child 101 (and 101's child 102, busy 0.3 s), sampled once as the group "run"."""
    fake = FakeProc(tmp_path / "proc", children_files=True)
    fake.spawn(ROOT, 1, start=1000)
    fake.spawn(101, ROOT, start=1010)
    if grandchild:
        fake.spawn(102, 101, start=1020, utime=30)
    groups = ProcessGroups(fake.procfs())
    groups.sample({"run": (ROOT,)})
    return fake, groups


def test_children_lists_are_reused_but_for_the_parents_of_processes_created_since(tmp_path: Path):
    fake, groups = sampled_root_and_child(tmp_path)

    fake.advance(0, 0, running={101: 40})
    (fake.root / str(ROOT) / "task" / str(ROOT) / "children").write_text("")  # not read: nothing was created
    usage = groups.sample({"run": (ROOT,)})["run"]
    assert (usage.processes, usage.cpu_seconds) == (2, pytest.approx(0.40))

    fake.spawn(102, 101, start=1020, utime=10)  # a new process: its parent's list is read again, and only that one
    usage = groups.sample({"run": (ROOT,)})["run"]
    assert (usage.processes, usage.cpu_seconds) == (3, pytest.approx(0.10))

    fake.spawn(103, 1, start=1030)  # a process outside the group: no member's list is read
    fake.advance(0, 0, running={102: 20})
    for pid in (ROOT, 101, 102):
        (fake.root / str(pid) / "task" / str(pid) / "children").write_text("")
    usage = groups.sample({"run": (ROOT,)})["run"]
    assert (usage.processes, usage.cpu_seconds) == (3, pytest.approx(0.20))


def test_every_children_list_is_read_again_once_the_pids_wrap_around(tmp_path: Path):
    fake, groups = sampled_root_and_child(tmp_path)

    fake.spawn(50, ROOT, start=1020, utime=10)  # a PID below the last one: the kernel's PIDs wrapped around
    fake.spawn(60, 1, start=1030)
    usage = groups.sample({"run": (ROOT,)})["run"]
    assert (usage.processes, usage.cpu_seconds) == (3, pytest.approx(0.10))


def test_a_group_that_lost_a_member_is_walked_again_from_the_files(tmp_path: Path):
    fake, groups = sampled_root_and_child(tmp_path, grandchild=True)

    fake.vanish(101)  # 102 is orphaned; the root is its subreaper and adopts it (no process is created)
    fake.update(102, ppid=ROOT, utime=50)
    usage = groups.sample({"run": (ROOT,)})["run"]
    assert (usage.processes, usage.cpu_seconds) == (2, pytest.approx(0.20))


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
