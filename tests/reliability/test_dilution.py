"""Dilution: one user's runs cannot shrink another user's energy. A process counts in one run at a time, so an
attacker who registers one busy process as the root of 40 runs gets one run and 39 refusals, and the victim's
energy per CPU-second stays what it was without the attacker.

Everything is real but the RAPL counter: a real exporter, real users (nobody, and a uid without an account in
nobody's group) calling over the Unix socket, real busy processes of theirs. The fake package counter rises by
JOULES_PER_BUSY_SECOND for each busy CPU-second the kernel counts in /proc/stat, so a correctly attributed run
gets that many joules per CPU-second of its own, whatever else the machine runs.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from impact_exporter.sources.procfs import ProcFS
from tests.fakes.powercap import FakePowercap
from tests.reliability.test_access import NOBODY, as_user, needs_root
from tests.servers import ExporterProcess

pytestmark = pytest.mark.integration

ATTACKER = 40002  # a uid without an account, in nobody's group (the socket's)
PACKAGE = "intel-rapl:0"
JOULES_PER_BUSY_SECOND = 10.0
RUN_CPU_SECONDS = 1.0
PHASE_LIMIT_SECONDS = 20.0
BUSY_LOOP = ["sh", "-c", "while :; do :; done"]


class BusyPower(threading.Thread):
    """Advances the package counter by JOULES_PER_BUSY_SECOND per busy CPU-second of the whole machine."""

    def __init__(self, powercap: FakePowercap) -> None:
        super().__init__(daemon=True)
        self.powercap = powercap
        self.stopped = threading.Event()

    def run(self) -> None:
        proc = ProcFS(Path("/proc"))
        last = proc.cpu_times().busy_seconds
        while not self.stopped.wait(0.02):
            busy = proc.cpu_times().busy_seconds
            self.powercap.advance(PACKAGE, JOULES_PER_BUSY_SECOND * (busy - last))
            last = busy


@pytest.fixture
def powered(tmp_path: Path) -> Iterator[FakePowercap]:
    powercap = FakePowercap(tmp_path / "sys")
    powercap.add_zone(PACKAGE, "package-0", energy_uj=1_000_000)
    driver = BusyPower(powercap)
    driver.start()
    yield powercap
    driver.stopped.set()
    driver.join()


@pytest.fixture
def busy_as() -> Iterator[Callable[[int], int]]:
    """Start a process that keeps one core busy as the given uid (gid nobody); returns its pid."""
    started: list[subprocess.Popen[bytes]] = []

    def start(uid: int) -> int:
        started.append(subprocess.Popen(BUSY_LOOP, user=uid, group=NOBODY, extra_groups=[]))
        return started[-1].pid

    yield start
    for process in started:
        process.kill()
        process.wait()


def scrape(exporter: ExporterProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of one scrape of /metrics, keyed by (name, labels): all from one sample of the exporter."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exporter.metrics_text())
        for sample in family.samples
    }


def run_figures(metrics: dict, run_id: str) -> tuple[float, float]:
    """(CPU joules, CPU seconds) of a run as /metrics shows them (run ids here are each held by one user)."""
    joules = run_sample(metrics, "impact_run_energy_joules_total", run_id, component="cpu")
    return joules, run_sample(metrics, "impact_run_cpu_seconds_total", run_id)


def run_sample(metrics: dict, name: str, run_id: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``run_id`` and ``labels``, whatever its user."""
    wanted = {("run_id", run_id), *labels.items()}
    [value] = [value for (sample, key), value in metrics.items() if sample == name and wanted <= key]
    return value


def phase(exporter: ExporterProcess, *run_ids: str) -> tuple[dict, dict]:
    """/metrics before and after each of ``run_ids`` used RUN_CPU_SECONDS (within PHASE_LIMIT_SECONDS): a run's
    CPU time is counted in ticks of 10 ms, so a second of it keeps its joules per CPU-second within 1 %."""
    before = scrape(exporter)
    deadline = time.monotonic() + PHASE_LIMIT_SECONDS
    while True:
        time.sleep(0.5)
        after = scrape(exporter)
        used = {run_id: run_figures(after, run_id)[1] - run_figures(before, run_id)[1] for run_id in run_ids}
        if min(used.values()) >= RUN_CPU_SECONDS:
            return before, after
        assert time.monotonic() < deadline, f"CPU-seconds {used} after {PHASE_LIMIT_SECONDS} s: the machine is full"


def joules_per_cpu_second(before: dict, after: dict, run_id: str) -> float:
    """J per CPU-second of ``run_id`` between two scrapes."""
    (joules_0, seconds_0), (joules_1, seconds_1) = run_figures(before, run_id), run_figures(after, run_id)
    return (joules_1 - joules_0) / (seconds_1 - seconds_0)


def package_conserved(before: dict, after: dict, run_ids: list[str]) -> None:
    """The runs' CPU joules plus the unattributed rest are the package's joules, over the two scrapes."""

    def delta(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return after[key] - before[key]

    def run_delta(run_id: str) -> float:
        name = "impact_run_energy_joules_total"
        return run_sample(after, name, run_id, component="cpu") - run_sample(before, name, run_id, component="cpu")

    measured = delta("impact_rapl_package_joules_total", package="0")
    runs = sum(run_delta(run_id) for run_id in run_ids)
    rest = delta("impact_unattributed_energy_joules_total", component="cpu")
    assert measured > 0
    assert runs + rest == pytest.approx(measured, rel=1e-9)


@pytest.mark.serial
def test_forty_runs_of_one_busy_process_leave_another_users_energy_per_cpu_second_as_it_was(
    powered: FakePowercap, start_exporter: Callable[..., ExporterProcess], busy_as: Callable[[int], int]
) -> None:
    """The attacker's busy process runs in both phases: only its runs differ between them."""
    needs_root()
    exporter = start_exporter(f"--path.sysfs={powered.sysfs}", "--sample-interval=0.25", "--api.socket-group=nogroup")
    victim_pid, attacker_pid = busy_as(NOBODY), busy_as(ATTACKER)
    [(status, victim)] = as_user(
        NOBODY,
        NOBODY,
        exporter.socket_path,
        [("POST", "/api/v1/runs", {"experiment": "victim", "run_id": "victim", "pid": victim_pid})],
    )
    assert status == 201, victim
    time.sleep(0.6)  # the run's baseline and its first samples
    alone = joules_per_cpu_second(*phase(exporter, "victim"), "victim")

    attack = [
        ("POST", "/api/v1/runs", {"experiment": "attack", "run_id": f"attack-{n}", "pid": attacker_pid})
        for n in range(40)
    ]
    answers = as_user(ATTACKER, NOBODY, exporter.socket_path, attack)
    assert answers[0][0] == 201, answers[0]
    assert [status for status, _ in answers[1:]] == [409] * 39
    assert all(
        body["error"].startswith(f"process {attacker_pid} is a root of active run attack-0;") for _, body in answers[1:]
    ), answers[1]
    time.sleep(0.6)
    before, after = phase(exporter, "victim", "attack-0")
    attacked = joules_per_cpu_second(before, after, "victim")
    attacker = joules_per_cpu_second(before, after, "attack-0")

    assert alone == pytest.approx(JOULES_PER_BUSY_SECOND, rel=0.05)
    assert attacked == pytest.approx(alone, rel=0.05), "the attacker changed the victim's share"
    assert attacker == pytest.approx(JOULES_PER_BUSY_SECOND, rel=0.05), "the attacker's one run is measured too"
    package_conserved(before, after, ["victim", "attack-0"])
