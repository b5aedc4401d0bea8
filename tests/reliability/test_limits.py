"""Limits: a user in the socket's group who floods the run API with runs, labels and registrations meets a 429 or
400 that names the flag, other users keep registering, /metrics and the exporter's memory stay under a bound that
follows from the limits, the store forgets finished runs past their age, and a restart over a store that holds
more live runs than the limits allow resumes only as many.

The flooding users are real: forked children that switch to nobody (65534) and to a uid without an account
(40001), both in the socket's group, so the exporter learns who calls from the kernel (SO_PEERCRED).
"""

from __future__ import annotations

import grp
import re
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from impact_exporter.limits import FLAGS, SERIES_PER_RUN, Limits, flag
from tests.fakes.powercap import FakePowercap
from tests.reliability.test_access import NOBODY, OUTSIDER, as_user, needs_root, unix_call
from tests.servers import ExporterProcess, wait_for

pytestmark = pytest.mark.integration

LIMITS = Limits(
    active_runs_per_user=20,
    retained_runs_per_user=10,
    runs=60,
    registrations_per_second=1,
    registration_burst=30,
    store_retain_finished_seconds=4,
)
FLOOD = 300  # starts each flooding user sends: without the limits, 600 runs at the label limits
BUILT_IN_LABELS = 6  # run_id, experiment, set, user, pod_uid, container_id on impact_run_info
BUILT_IN_VALUE_BYTES = 1024  # their values together: a run id of 128 characters, a user name, a pod uid, ...
OTHER_SERIES_BYTES = 256  # a series keyed by run_id: its name, {component="...",run_id="..."} and the value
MEMORY_PER_RUN_BYTES = 64 * 1024  # what a run at the label limits may cost the exporter (measured: 34 KiB)
MEMORY_SLACK_BYTES = 8 * 1024 * 1024  # the allocator's and SQLite's caches, buffers of a larger scrape
FLOOD_LABELS = {f"l{i:02d}": '"' * 58 for i in range(32)}  # 32 labels, 1,957 bytes: within the limits, and every
# value doubles in the exposition ("\"")


def limit_flags(limits: Limits) -> list[str]:
    """The flags that set ``limits``."""
    values = {field.name: getattr(limits, field.name) for field in fields(Limits)}
    return [f"{FLAGS[name]}={value:g}{'s' if name.endswith('_seconds') else ''}" for name, value in values.items()]


def metrics_bytes_bound(limits: Limits) -> int:
    """The most /metrics can hold for runs under ``limits``: each run's info series with every label name and value
    (values escaped, so up to twice their bytes), and its other series."""
    info = 2 * limits.label_bytes + 4 * (limits.labels + BUILT_IN_LABELS) + BUILT_IN_VALUE_BYTES
    return limits.runs * (info + (SERIES_PER_RUN - 1) * OTHER_SERIES_BYTES)


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


def run_info_count(metrics: str) -> int:
    return sum(line.startswith("impact_run_info{") for line in metrics.splitlines())


def stored(state_dir: Path, query: str) -> list[tuple[Any, ...]]:
    """Rows of the exporter's store, read through a connection of its own."""
    connection = sqlite3.connect(f"file:{state_dir / 'runs.sqlite'}?mode=ro", uri=True)
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.close()


def starts(prefix: str, pids: list[int], count: int, labels: dict[str, str]) -> list[tuple[str, str, Any]]:
    """``count`` starts of new runs, the i-th on ``pids[i % len(pids)]``: a process counts in one run at a time,
    so the starts that may succeed need a process each; later ones meet a limit before that rule."""
    return [
        (
            "POST",
            "/api/v1/runs",
            {"experiment": "flood", "labels": labels, "pid": pids[i % len(pids)], "run_id": f"{prefix}-{i:03d}"},
        )
        for i in range(count)
    ]


SLEEPERS_PER_USER = 30
"""Processes of each user: one per run that may succeed."""


@pytest.fixture
def sleepers() -> Iterator[dict[int, list[int]]]:
    """Long-lived processes of root, of nobody and of uid 40001, by uid: each the root of one of its user's runs."""
    needs_root()
    accounts: dict[int, dict[str, int]] = {
        0: {},
        NOBODY: {"user": NOBODY, "group": NOBODY},
        OUTSIDER: {"user": OUTSIDER, "group": NOBODY},
    }
    processes = {
        uid: [subprocess.Popen(["sleep", "600"], extra_groups=[], **account) for _ in range(SLEEPERS_PER_USER)]
        for uid, account in accounts.items()
    }
    yield {uid: [process.pid for process in started] for uid, started in processes.items()}
    for started in processes.values():
        for process in started:
            process.kill()
            process.wait()


@pytest.fixture
def exporter_with(
    tmp_path: Path, start_exporter: Callable[..., ExporterProcess]
) -> Callable[..., tuple[ExporterProcess, Path]]:
    """Start an exporter on a fake RAPL zone whose socket admits group nogroup; its state directory is the same
    for every exporter of the test, so a second one resumes the first one's store."""
    powercap = FakePowercap(tmp_path / "sys")
    powercap.add_zone("intel-rapl:0", "package-0", energy_uj=1_000_000)
    state_dir = tmp_path / "state"

    def start(*args: str) -> tuple[ExporterProcess, Path]:
        exporter = start_exporter(
            f"--path.sysfs={powercap.sysfs}",
            f"--api.socket-group={grp.getgrgid(NOBODY).gr_name}",
            f"--state-dir={state_dir}",
            "--sample-interval=0.5",
            *args,
        )
        return exporter, state_dir

    return start


def test_a_flood_meets_each_limit_by_its_flag_and_metrics_memory_and_store_stay_bounded(
    exporter_with: Callable[..., tuple[ExporterProcess, Path]],
    sleepers: dict[int, list[int]],
    record_property: Callable[[str, object], None],
) -> None:
    exporter, state_dir = exporter_with("--runs.retain-finished=1h", *limit_flags(LIMITS))
    socket = exporter.socket_path
    exporter.metrics_text()
    metrics_before, rss_before = len(exporter.metrics_text()), rss_bytes(exporter.process.pid)

    pid = sleepers[NOBODY][0]
    oversized = [
        ({"labels": {f"l{i}": "v" for i in range(33)}}, flag("labels", LIMITS)),
        ({"labels": {"n" * 65: "v"}}, flag("label_name_length", LIMITS)),
        ({"labels": {"n" * 65_000: "v"}}, flag("label_name_length", LIMITS)),
        ({"labels": {"a": "v" * 257}}, flag("label_value_length", LIMITS)),
        ({"set": "s" * 257}, flag("label_value_length", LIMITS)),
        ({"labels": {f"l{i:02d}": "v" * 100 for i in range(20)}}, flag("label_bytes", LIMITS)),
        ({"run_id": "r" * 129}, flag("run_id_length", LIMITS)),
    ]
    answers = as_user(
        NOBODY, NOBODY, socket, [("POST", "/api/v1/runs", {"experiment": "x", "pid": pid, **b}) for b, _ in oversized]
    )
    for answer, (body, named) in zip(answers, oversized, strict=True):
        assert answer[0] == 400 and named in answer[1]["error"], (str(body)[:80], answer)

    refused_by_rate = []
    for uid, name in ((NOBODY, "nobody"), (OUTSIDER, "outsider")):
        answers = as_user(uid, NOBODY, socket, starts(name, sleepers[uid], FLOOD, FLOOD_LABELS))
        statuses = [status for status, _ in answers]
        assert statuses[:20] == [201] * 20 and set(statuses[20:]) == {429}, statuses
        refusals = [body["error"] for _, body in answers[20:]]
        by_active = [e for e in refusals if flag("active_runs_per_user", LIMITS) in e and "stop one first" in e]
        by_rate = [e for e in refusals if flag("registrations_per_second", LIMITS) in e and "retry in" in e]
        assert len(by_active) + len(by_rate) == len(refusals), refusals[:3]
        assert len(by_active) >= 5 and len(by_rate) >= 200, (len(by_active), len(by_rate))
        refused_by_rate.append(by_rate)

    root = [unix_call(socket, *call) for call in starts("root", sleepers[0], 30, FLOOD_LABELS)]
    assert [status for status, _ in root] == [201] * 20 + [429] * 10  # 60 runs in all: 40 users' and 20 root's
    assert all(flag("runs", LIMITS) in body["error"] for _, body in root[20:])

    metrics = exporter.metrics_text()
    assert run_info_count(metrics) == LIMITS.runs
    exporter.metrics_text()
    rss_growth = rss_bytes(exporter.process.pid) - rss_before
    for name, value in {
        "metrics_bytes": len(metrics) - metrics_before,
        "metrics_bytes_bound": metrics_bytes_bound(LIMITS),
        "rss_growth_bytes": rss_growth,
        "rss_growth_bound": LIMITS.runs * MEMORY_PER_RUN_BYTES + MEMORY_SLACK_BYTES,
        "refused_by_rate": sum(len(by_rate) for by_rate in refused_by_rate),
    }.items():
        record_property(name, value)
    assert len(metrics) - metrics_before <= metrics_bytes_bound(LIMITS)
    assert rss_growth <= LIMITS.runs * MEMORY_PER_RUN_BYTES + MEMORY_SLACK_BYTES

    # Nobody's runs finish: only the 10 that finished last stay in /metrics (--limits.retained-runs-per-user) ...
    stops = as_user(NOBODY, NOBODY, socket, [("POST", f"/api/v1/runs/nobody-{i:03d}/stop", None) for i in range(20)])
    assert [status for status, _ in stops] == [200] * 20
    listed = wait_for(
        lambda: (
            (runs := as_user(NOBODY, NOBODY, socket, [("GET", "/api/v1/runs", None)])[0][1]["runs"])
            and len(runs) == LIMITS.retained_runs_per_user
            and runs
        ),
        10,
        "nobody's finished runs beyond the limit to leave",
    )
    assert sorted(run["run_id"] for run in listed) == [f"nobody-{i:03d}" for i in range(10, 20)]
    assert run_info_count(exporter.metrics_text()) == LIMITS.runs - 10
    # ... and the store forgets them after --store.retain-finished, while every active run stays.
    wait_for(
        lambda: stored(state_dir, f"SELECT COUNT(*) FROM runs WHERE uid = {NOBODY}") == [(0,)],
        20,
        "the store to delete nobody's runs 4 s after they finished",
    )
    assert stored(state_dir, "SELECT COUNT(*) FROM runs WHERE end_time IS NULL") == [(40,)]
    assert "deleted" in exporter.log() and "--store.retain-finished" in exporter.log()


def test_a_restart_over_more_live_runs_than_the_limits_allow_resumes_the_oldest_within_them(
    exporter_with: Callable[..., tuple[ExporterProcess, Path]], sleepers: dict[int, list[int]]
) -> None:
    first, state_dir = exporter_with()  # the default limits
    big_labels = {f"l{i:02d}": "v" * 100 for i in range(5)}  # 515 bytes with the experiment
    calls = starts("big", sleepers[NOBODY][:5], 5, big_labels) + starts(
        "plain", sleepers[NOBODY][5:], 25, {"seed": "0"}
    )
    assert [status for status, _ in as_user(NOBODY, NOBODY, first.socket_path, calls)] == [201] * 30
    assert [unix_call(first.socket_path, *call)[0] for call in starts("root", sleepers[0], 3, {})] == [201] * 3
    assert first.stop() == 0

    restarted, _ = exporter_with("--limits.active-runs-per-user=10", "--limits.label-bytes=512")
    [[status, body]] = as_user(NOBODY, NOBODY, restarted.socket_path, [("GET", "/api/v1/runs", None)])
    active = sorted(run["run_id"] for run in body["runs"] if run["status"] == "active")
    assert (status, active) == (200, [f"plain-{i:03d}" for i in range(10)])  # the 10 oldest within the limits
    ended = stored(state_dir, "SELECT run_id FROM runs WHERE end_time IS NOT NULL ORDER BY run_id")
    assert [run_id for (run_id,) in ended] == [f"big-{i:03d}" for i in range(5)] + [
        f"plain-{i:03d}" for i in range(10, 25)
    ]
    log = restarted.log()
    assert "ended 15 active runs of user nobody at start-up: they are over --limits.active-runs-per-user=10" in log
    assert "ended 5 active runs of user nobody at start-up: they are over --limits.label-bytes=512" in log
    resumed = [f"plain-{i:03d}" for i in range(10)] + [f"root-{i:03d}" for i in range(3)]  # root has no per-user limit
    status, as_root = unix_call(restarted.socket_path, "GET", "/api/v1/runs")
    assert sorted(run["run_id"] for run in as_root["runs"] if run["status"] == "active") == resumed
    active_series = re.findall(
        r'^impact_run_active\{[^}]*\brun_id="([^"]+)"[^}]*\} 1(?:\.0)?$', restarted.metrics_text(), re.M
    )
    assert sorted(active_series) == resumed
