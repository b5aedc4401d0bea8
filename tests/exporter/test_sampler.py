"""The sampler: sources going down and coming back, queued attribution, and sample_now."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from impact_exporter.groups import ProcessGroups
from impact_exporter.ledger import Ledger
from impact_exporter.run import RunKey
from impact_exporter.sampler import PROCFS, Sampler
from impact_exporter.scheduling import ScrapesFirst
from impact_exporter.sources.procfs import ProcFS
from impact_exporter.sources.rapl import RaplSource
from tests.fakes.powercap import FakePowercap
from tests.fakes.procfs import FakeProc
from tests.servers import wait_for

RUN = RunKey(0, "run")

PACKAGE, DRAM = "intel-rapl:0", "intel-rapl:0:0"


@pytest.fixture
def powercap(tmp_path: Path) -> FakePowercap:
    powercap = FakePowercap(tmp_path / "sys")
    powercap.add_zone(PACKAGE, "package-0", energy_uj=1_000_000)
    powercap.add_zone(DRAM, "dram", energy_uj=2_000_000)
    return powercap


def break_counter(powercap: FakePowercap, zone: str) -> Path:
    """Replace the zone's energy_uj by a directory: reads fail with EISDIR, even for root."""
    counter = powercap.zone_dir(zone).resolve() / "energy_uj"
    saved = counter.with_name("energy_uj.saved")
    counter.rename(saved)
    counter.mkdir()
    return saved


def mend_counter(saved: Path) -> None:
    counter = saved.with_name("energy_uj")
    counter.rmdir()
    saved.rename(counter)


def package_joules(sampler: Sampler) -> float:
    return next(z.joules_total for z in sampler.snapshot.energy_domains if z.domain == "package")


def test_a_failing_source_is_marked_down_counted_and_recovers_with_the_outages_energy(powercap: FakePowercap) -> None:
    sampler = Sampler(ProcFS(Path("/proc")), energy=RaplSource(powercap.sysfs))
    sampler.sample_once()
    assert sampler.snapshot.sources[RaplSource.name].up
    start = package_joules(sampler)

    saved = break_counter(powercap, PACKAGE)
    powercap.advance(DRAM, 3.0)
    for _ in range(3):
        sampler.sample_once()
    snapshot = sampler.snapshot
    assert not snapshot.sources[RaplSource.name].up
    assert snapshot.sources[RaplSource.name].errors_total == 3
    assert snapshot.sources[PROCFS].up
    assert package_joules(sampler) == start, "a source that is down keeps its last value, never a silent zero"

    mend_counter(saved)
    powercap.advance(PACKAGE, 12.5)
    sampler.sample_once()
    assert sampler.snapshot.sources[RaplSource.name].up
    assert sampler.snapshot.sources[RaplSource.name].errors_total == 3
    assert package_joules(sampler) == pytest.approx(start + 12.5, abs=1e-6)
    assert sampler.snapshot.unattributed_joules["dram"] == pytest.approx(3.0, abs=1e-6)


def test_energy_measured_while_procfs_was_down_is_attributed_once_it_is_back(
    powercap: FakePowercap, tmp_path: Path
) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "stat").write_text("cpu  100 0 0 1000 0 0 0 0 0 0\n")
    (proc / "meminfo").write_text("MemTotal: 1000 kB\nMemAvailable: 500 kB\n")
    sampler = Sampler(ProcFS(proc, ticks_per_second=100), energy=RaplSource(powercap.sysfs))
    sampler.sample_once()

    (proc / "stat").write_text("garbage\n")
    powercap.advance(PACKAGE, 4.0)
    sampler.sample_once()
    assert not sampler.snapshot.sources[PROCFS].up
    assert sampler.snapshot.unattributed_joules.get("package", 0.0) == 0.0, "waits for the usage of the interval"

    (proc / "stat").write_text("cpu  200 0 0 1100 0 0 0 0 0 0\n")
    powercap.advance(PACKAGE, 6.0)
    sampler.sample_once()
    assert sampler.snapshot.sources[PROCFS].up
    assert sampler.snapshot.unattributed_joules["package"] == pytest.approx(10.0, abs=1e-6)


def cpu_seconds_of(process: psutil.Process) -> float:
    """A process's own CPU time as the kernel counts it (its /proc/<pid>/stat, read by psutil)."""
    times = process.cpu_times()
    return times.user + times.system


@pytest.mark.serial
def test_group_totals_follow_a_real_busy_child(powercap: FakePowercap) -> None:
    """The group's CPU time between two samples is the child's, as the kernel counts it, bracketed by readings
    taken around each sample; the test waits for CPU time, not wall time, so a loaded machine only makes it slower."""
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        process = psutil.Process(child.pid)
        ledger = Ledger()
        ledger.track(RUN, (child.pid,))
        sampler = Sampler(ProcFS(Path("/proc")), energy=RaplSource(powercap.sysfs), ledger=ledger)
        before_first = cpu_seconds_of(process)
        sampler.sample_once()
        after_first = cpu_seconds_of(process)
        wait_for(lambda: cpu_seconds_of(process) >= after_first + 0.25, 120, "the child to use 0.25 s of CPU", 0.05)
        powercap.advance(PACKAGE, 20.0)
        before_second = cpu_seconds_of(process)
        sampler.sample_once()
        after_second = cpu_seconds_of(process)
        totals = ledger.totals()[RUN]
        assert totals.processes == 1 and totals.root_alive
        assert before_second - after_first - 1e-9 <= totals.cpu_seconds <= after_second - before_first + 1e-9
        assert totals.cpu_seconds > 0.2
        assert 0.0 < totals.energy_joules["package"] <= 20.0
        assert totals.energy_joules["package"] + sampler.snapshot.unattributed_joules["package"] == pytest.approx(20.0)
    finally:
        child.kill()
        child.wait()


def test_sample_now_returns_a_sample_taken_after_the_call(powercap: FakePowercap) -> None:
    sampler = Sampler(ProcFS(Path("/proc")), energy=RaplSource(powercap.sysfs), interval_seconds=3600)
    sampler.sample_once()
    sampler.start()
    try:
        powercap.advance(PACKAGE, 2.0)
        before = sampler.snapshot.samples_total
        snapshot = sampler.sample_now(timeout=10)
        assert snapshot.samples_total > before
        assert package_joules(sampler) == pytest.approx(3.0, abs=1e-6)
    finally:
        sampler.stop(timeout=5)


def test_a_baseline_taken_at_a_runs_start_counts_it_from_then_not_from_the_next_sample(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path / "proc")
    proc.spawn(4242, 1, start=1000, utime=500)  # busy before its run started: not the run's
    ledger = Ledger()
    groups = ProcessGroups(proc.procfs())
    sampler = Sampler(proc.procfs(), ledger=ledger, groups=groups)
    sampler.sample_once()

    ledger.track(RUN, (4242,))
    groups.add_roots(RUN, (4242,))  # as a run's start does (RunRegistry.start)
    proc.run(4242, 30)  # right after registration, before any sample
    sampler.sample_once()
    proc.run(4242, 20)
    sampler.sample_once()

    assert ledger.totals()[RUN].cpu_seconds == pytest.approx(0.5)


def test_a_sample_waits_at_its_next_pause_while_a_scrape_renders_and_then_completes(powercap: FakePowercap) -> None:
    scrapes = ScrapesFirst()
    sampler = Sampler(ProcFS(Path("/proc")), energy=RaplSource(powercap.sysfs), pause=scrapes.pause)
    sampler.sample_once()
    events: list[str] = []
    rendering, sampled = threading.Event(), threading.Event()

    def scrape() -> None:
        with scrapes.scrape():
            rendering.set()
            sampled.wait(0.5)  # the sample must not finish meanwhile: this wait runs out
            events.append("scrape rendered")

    def sample() -> None:
        rendering.wait(5)
        sampler.sample_once()
        events.append("sample published")
        sampled.set()

    threads = [threading.Thread(target=scrape), threading.Thread(target=sample)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert events == ["scrape rendered", "sample published"]
    assert sampler.snapshot.samples_total == 2


def test_a_pause_ends_after_its_longest_wait_even_while_scrapes_go_on() -> None:
    scrapes = ScrapesFirst(longest_pause_seconds=0.2)
    with scrapes.scrape():
        paused = threading.Thread(target=scrapes.pause)
        paused.start()
        paused.join(5)
        assert not paused.is_alive()
