"""Process-group accounting on a fake procfs tree: interval CPU, reaped children and roots, memory, PID reuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from impact_exporter.groups import MEMORY_MAX_AGE_SECONDS, MEMORY_UNCHANGED_MAX_AGE_SECONDS, GroupUsage, ProcessGroups
from impact_exporter.sources.procfs import MEMORY_PSS
from tests.fakes.procfs import PAGE, FakeProc


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


def test_memory_is_rss_by_default(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000, pss_kib=2048, rss_pages=5000)
    fake.spawn(101, ROOT, start=1010, rss_pages=300)
    procfs = fake.procfs()

    assert procfs.memory_bytes(ROOT) == 5000 * PAGE
    assert procfs.memory_bytes(999) is None
    assert ProcessGroups(procfs).sample({"run": (ROOT,)})["run"].memory_bytes == (5000 + 300) * PAGE


def test_rss_is_read_again_as_soon_as_it_changes(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000, rss_pages=1000)
    groups = ProcessGroups(fake.procfs(), clock=lambda: 0.0)
    assert groups.sample({"run": (ROOT,)})["run"].memory_bytes == 1000 * PAGE

    fake.update(ROOT, rss_pages=1250)  # it allocated: no waiting for an age, the reading is as cheap as stat's
    assert groups.sample({"run": (ROOT,)})["run"].memory_bytes == 1250 * PAGE


def test_memory_with_pss_is_pss_when_readable_else_rss(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000, pss_kib=2048, rss_pages=5000)
    fake.spawn(101, ROOT, start=1010, rss_pages=300)  # no smaps_rollup: old kernel or not permitted
    procfs = fake.procfs(MEMORY_PSS)

    assert procfs.memory_bytes(ROOT) == 2048 * 1024
    assert procfs.memory_bytes(101) == 300 * PAGE
    assert procfs.memory_bytes(999) is None
    assert ProcessGroups(procfs).sample({"run": (ROOT,)})["run"].memory_bytes == 2048 * 1024 + 300 * PAGE


def test_pss_of_a_member_whose_rss_stays_the_same_is_read_again_only_after_the_long_age(fake: FakeProc):
    fake.spawn(ROOT, 1, start=1000, pss_kib=2048, rss_pages=1000)
    now = [0.0]
    groups = ProcessGroups(fake.procfs(MEMORY_PSS), clock=lambda: now[0])
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
    groups = ProcessGroups(fake.procfs(MEMORY_PSS), clock=lambda: now[0])
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
