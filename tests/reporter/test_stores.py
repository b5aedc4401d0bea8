"""impact-report against a fake Prometheus API that behaves as Thanos, Mimir and VictoriaMetrics do where a real
Prometheus here cannot: answer warnings and partial responses, a per-day series index, a query-length limit and
a required tenant header.

Each run is a node's series written by the test: 10 W on the CPU for 60 s, scraped every 5 s, so its energy is
600 J exactly.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from impact_reporter.cli import main, replica_label
from impact_reporter.prometheus import PrometheusClient
from impact_reporter.runs import ID_BUDGET_BYTES, MAX_QUERY_BYTES, _Found, _id_regex, run_batches
from tests.reporter.fake_prometheus import FakePrometheus, FakeSeries
from tests.reporter.test_report_runs import report_here
from tests.servers import REPO_ROOT

DAY = 1_795_996_800  # 2026-11-30T00:00:00Z
WATTS, SECONDS, SCRAPE = 10.0, 60, 5
JOULES = WATTS * SECONDS


def run_series(
    run_id: str,
    start: float,
    *,
    instance: str = "node1:9100",
    user: str = "alice",
    added: Mapping[str, str] | None = None,
    offset: float = 0.0,
    labels: Mapping[str, str] | None = None,
) -> list[FakeSeries]:
    """The series an exporter exports for one run, as scraped every SCRAPE s from ``offset`` s after its start
    until 30 s after it ended; ``added``: the labels a Prometheus adds besides instance and job (external ones);
    ``labels``: the run's own labels, on ``impact_run_info`` alone."""
    end = start + SECONDS
    times = [start + offset + k * SCRAPE for k in range((SECONDS + 30) // SCRAPE + 1)]
    identity = {"run_id": run_id, "user": user, "instance": instance, "job": "impact", **(added or {})}

    def series(name: str, value: Any, **labels: str) -> FakeSeries:
        return FakeSeries({"__name__": name, **identity, **labels}, [(t, float(value(t))) for t in times])

    return [
        series("impact_run_info", lambda t: 1, experiment="exp", set="a", **(labels or {})),
        series("impact_run_start_time_seconds", lambda t: start),
        series("impact_run_end_time_seconds", lambda t: end),
        series("impact_run_active", lambda t: t <= end),
        series("impact_run_energy_joules_total", lambda t: WATTS * (min(t, end) - start), component="cpu"),
        series("impact_run_cpu_seconds_total", lambda t: min(t, end) - start),
    ]


def report(
    server: FakePrometheus, *args: str, start: float = DAY, end: float = DAY + 86399, here: bool = False
) -> tuple[int, Any, str]:
    """Run ``impact-report runs --format=json`` in a child process, or (``here``) in this one: exit code, parsed
    stdout, stderr."""
    command = ["runs", "--format=json", f"--prometheus={server.url}"]
    command += [f"--start={start}", f"--end={end}", "--carbon-intensity=100", *args]
    if here:
        result = report_here(*command)
    else:
        child = [sys.executable, "-m", "impact_reporter", *command]
        result = subprocess.run(
            child, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT
        )  # a hang guard, not a speed goal
    return result.returncode, json.loads(result.stdout) if result.returncode == 0 else None, result.stderr


@pytest.fixture
def two_runs() -> Iterator[list[FakeSeries]]:
    """Run "early" at 01:00 and run "late" at 05:00 of the same day."""
    yield run_series("early", DAY + 3600) + run_series("late", DAY + 5 * 3600)


def joules_of(listed: Any) -> dict[str, float]:
    return {run["run_id"]: run["total_joules"] for run in listed["runs"]}


def test_the_fake_api_serves_a_whole_report(two_runs: list[FakeSeries]) -> None:
    """The store holds only what exporters export: the reporter needs none of the recording rules, so a long-term
    store needs no ruler for reports (docs/deployment.md: rules go to the Mimir ruler or Thanos Ruler for
    dashboards and alerts only)."""
    with FakePrometheus(two_runs) as server:
        code, listed, stderr = report(server)
        asked = [value for request in server.requests for values in request.form.values() for value in values]
    assert code == 0, stderr
    assert server.queries() and not any("impact:" in text for text in asked), "a recording rule was asked for"
    assert joules_of(listed) == {"early": JOULES, "late": JOULES}
    assert [run["duration_seconds"] for run in listed["runs"]] == [SECONDS, SECONDS]


def test_an_active_run_is_read_only_as_far_as_its_newest_sample_saying_so() -> None:
    """remote_write delivers series in any order: a store may hold a run's counters past the newest sample of
    impact_run_active (and no end time yet). The run is reported as active up to that sample, not as longer."""
    start = DAY + 3600
    known = start + 30  # the newest impact_run_active sample the store holds
    series = []
    for one in run_series("racing", start):
        name = one.labels["__name__"]
        if name == "impact_run_end_time_seconds":
            continue
        if name in ("impact_run_active", "impact_run_start_time_seconds"):
            one = FakeSeries(one.labels, [(t, v) for t, v in one.samples if t <= known])
        series.append(one)
    with FakePrometheus(series) as server:
        code, listed, stderr = report(server, here=True)
    assert code == 0, stderr
    [run] = listed["runs"]
    assert run["end_time"] is None, "the store does not say the run ended"
    assert run["duration_seconds"] == known - start  # not the 60 s the counters already reach
    assert run["total_joules"] == pytest.approx(WATTS * (known - start), rel=1e-12)


def test_discovery_keeps_only_runs_with_samples_inside_the_window(two_runs: list[FakeSeries]) -> None:
    """A /api/v1/series that answers for the whole day names run "early" too; the report of 04:00-06:00 has
    only run "late", and exits 0."""
    with FakePrometheus(two_runs, series_whole_day=True) as server:
        named = PrometheusClient(server.url).series(["impact_run_info"], DAY + 4 * 3600, DAY + 6 * 3600)
        code, listed, stderr = report(server, start=DAY + 4 * 3600, end=DAY + 6 * 3600)
    assert sorted(labels["run_id"] for labels in named) == ["early", "late"]
    assert code == 0, stderr
    assert joules_of(listed) == {"late": JOULES}


def test_a_window_with_no_run_inside_says_so(two_runs: list[FakeSeries]) -> None:
    with FakePrometheus(two_runs, series_whole_day=True) as server:
        code, _, stderr = report(server, start=DAY + 7 * 3600, end=DAY + 8 * 3600)
    assert code == 1
    assert "no run matches any run between" in stderr


def test_seven_hundred_runs_are_read_in_queries_under_8_kb(two_runs: list[FakeSeries]) -> None:
    """One regex of 700 32-character run ids is 23 KB, over VictoriaMetrics' default 16 KB."""
    run_ids = [uuid.UUID(int=number).hex for number in range(700)]
    series = [s for number, run_id in enumerate(run_ids) for s in run_series(run_id, DAY + 3600 + 70 * number)]
    with FakePrometheus(series, max_query_length=16384) as server:
        code, listed, stderr = report(server)
        longest = max(len(query.encode()) for query in server.queries())
    assert code == 0, stderr
    assert joules_of(listed) == dict.fromkeys(run_ids, JOULES)
    assert longest < MAX_QUERY_BYTES


def test_ten_thousand_run_ids_are_split_into_batches_under_the_budget() -> None:
    """Every run in exactly one batch, in order, each batch's regexes within the budget, batches as full as fit."""
    runs = [_Found(f"run-{number:05d}." + "x" * (number % 50), f"user{number % 7}", {}, ()) for number in range(10_000)]
    batches = run_batches(runs)
    assert [run for batch in batches for run in batch] == runs
    sizes = [
        len(_id_regex(run.run_id for run in batch)) + len("|".join(re.escape(u) for u in {r.user for r in batch}))
        for batch in batches
    ]
    assert max(sizes) <= ID_BUDGET_BYTES
    assert min(sizes[:-1]) > ID_BUDGET_BYTES - 100


def test_a_warning_fails_the_report_unless_partial_data_is_allowed(two_runs: list[FakeSeries]) -> None:
    warning = "store 10.0.0.7:10901 did not answer: context deadline exceeded"
    with FakePrometheus(two_runs, warnings=[warning]) as server:
        code, _, stderr = report(server)
        allowed, listed, allowed_stderr = report(server, "--allow-partial")
    assert code == 1
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert warning in stderr and "--allow-partial" in stderr
    assert allowed == 0, allowed_stderr
    assert warning in allowed_stderr
    assert joules_of(listed) == {"early": JOULES, "late": JOULES}


def test_a_partial_response_is_refused_and_when_allowed_the_missing_node_is_loud() -> None:
    """Run "wide" ran on two nodes; the store of node2 does not answer. partial_response=false makes Thanos fail
    the query; with --allow-partial the report has node1's half and prints the warning."""
    series = run_series("wide", DAY + 3600) + run_series("wide", DAY + 3600, instance="node2:9100")
    with FakePrometheus(series) as server:
        whole, listed_whole, _ = report(server)
    with FakePrometheus(series, partial_instance="node2:9100") as server:
        code, _, stderr = report(server)
        refused_forms = [request.form for request in server.requests]
        allowed, listed, allowed_stderr = report(server, "--allow-partial")
    assert whole == 0 and joules_of(listed_whole) == {"wide": 2 * JOULES}
    assert code == 2 and "did not answer" in stderr and "Traceback" not in stderr
    assert all(form["partial_response"] == ["false"] for form in refused_forms)
    assert allowed == 0, allowed_stderr
    assert joules_of(listed) == {"wide": JOULES}
    assert "store of node2:9100 did not answer" in allowed_stderr


def test_headers_reach_the_server_and_dedup_is_asked_for(two_runs: list[FakeSeries]) -> None:
    with FakePrometheus(two_runs, org_id="lab-a") as server:
        mimir = f"{server.url}/prometheus"  # Mimir serves the Prometheus API under /prometheus
        refused, _, refused_stderr = report(server)
        server.requests.clear()
        code, listed, stderr = report(
            server, "--header", "X-Scope-OrgID=lab-a", "--header=X-Extra=1", "--dedup", f"--prometheus={mimir}"
        )
        requests = list(server.requests)
    assert refused == 2
    assert "refused access (HTTP 401)" in refused_stderr and "--header X-Scope-OrgID" in refused_stderr
    assert code == 0, stderr
    assert joules_of(listed) == {"early": JOULES, "late": JOULES}
    assert requests and all(r.headers["X-Scope-OrgID"] == "lab-a" and r.headers["X-Extra"] == "1" for r in requests)
    assert all(r.form["dedup"] == ["true"] and r.form["partial_response"] == ["false"] for r in requests)
    assert all(r.path.startswith("/prometheus/api/v1/") for r in requests)


def test_a_malformed_header_is_a_usage_error(two_runs: list[FakeSeries]) -> None:
    with FakePrometheus(two_runs) as server:
        code, _, stderr = report(server, "--header", "X-Scope-OrgID: lab")
        assert server.requests == []
    assert code == 2
    assert "expected NAME=VALUE" in stderr and "Traceback" not in stderr


def host_info(instance: str, hostname: str, start: float, **added: str) -> FakeSeries:
    """A node's ``impact_host_info`` as a Prometheus with external labels ``added`` stores it."""
    labels = {"__name__": "impact_host_info", "instance": instance, "job": "impact", "hostname": hostname, **added}
    return FakeSeries(
        {
            **labels,
            "cpu_model": "Xeon",
            "cpu_vendor": "GenuineIntel",
            "cpu_count": "8",
            "kernel": "6.1",
            "region": "FR",
        },
        [(start, 1.0)],
    )


def ha_pair(label: str) -> list[FakeSeries]:
    """Run "ha" (its own label: replica="3", the experiment's third replicate) on node1 as two Prometheus servers
    told apart by ``label`` (a, b) wrote it: b scrapes 2.5 s after a, and cluster=site-a is their common external
    label."""
    added = {"cluster": "site-a"}
    return [
        s
        for replica, offset in (("a", 0.0), ("b", 2.5))
        for s in run_series("ha", DAY + 3600, added={**added, label: replica}, offset=offset, labels={"replica": "3"})
        + [host_info("node1:9100", "node1", DAY + 3600, **added, **{label: replica})]
    ]


SINGLE = {"total_joules": JOULES, "duration_seconds": SECONDS, "coverage": 1.0, "sample_interval_seconds": SCRAPE}
"""What one Prometheus's copy of run "ha" gives, whichever of the two."""


def figures(listed: Any) -> dict[str, Any]:
    [run] = listed["runs"]
    return {key: run[key] for key in SINGLE}


def test_an_ha_pair_is_read_once_per_node_with_a_known_or_named_replica_label() -> None:
    """The common replica label needs no flag; a custom one is named with --replica-label. Either way the run
    has one node, named with its cluster, the figures of one Prometheus, and neither label as a run label; its
    own label replica="3" stays, though named like a replica label, since the exporter's series lack it."""
    with FakePrometheus(ha_pair("prometheus_replica")) as server:
        code, listed, stderr = report(server, here=True)
    with FakePrometheus(ha_pair("ha_member")) as server:
        named, named_listed, named_stderr = report(server, "--replica-label", "ha_member", here=True)
    assert code == 0, stderr
    assert named == 0, named_stderr
    for run in (listed, named_listed):
        assert figures(run) == SINGLE
        [found] = run["runs"]
        assert found["labels"] == {"replica": "3"}
        assert found["hosts"] == [
            {
                "instance": 'node1:9100{cluster="site-a"}',
                "hostname": "node1",
                "cpu_model": "Xeon",
                "cpu_vendor": "GenuineIntel",
                "cpu_count": "8",
                "kernel": "6.1",
                "gpus": [],
                "region": "FR",
            }
        ]


def test_copies_told_apart_by_an_unknown_label_stop_the_report_naming_the_fixes() -> None:
    with FakePrometheus(ha_pair("ha_member")) as server:
        code, _, stderr = report(server, here=True)
        other, _, other_stderr = report(server, "--replica-label", "replica_of", here=True)
    for exit_code, message in ((code, stderr), (other, other_stderr)):
        assert exit_code == 1
        assert len(message.strip().splitlines()) == 1 and "Traceback" not in message
        assert "node node1:9100" in message and "differ by ha_member (ha_member=a|b)" in message
        for fix in (
            "--replica-label ha_member",
            "--dedup",
            "--query.replica-label=ha_member",
            "-dedup.minScrapeInterval",
            "HA tracker",
        ):
            assert fix in message, fix


def test_two_clusters_nodes_with_the_same_instance_are_two_nodes() -> None:
    """Run "wide" ran on node1:9100 of cluster site-a and node1:9100 of site-b (each registered it at its own
    moment): its energy is both nodes', each with its own host, and cluster is no run label."""
    series = [
        *run_series("wide", DAY + 3600, added={"cluster": "site-a"}),
        *run_series("wide", DAY + 3600.25, added={"cluster": "site-b"}),
        host_info("node1:9100", "a-node1", DAY + 3600, cluster="site-a"),
        host_info("node1:9100", "b-node1", DAY + 3600, cluster="site-b"),
    ]
    with FakePrometheus(series) as server:
        code, listed, stderr = report(server, here=True)
    assert code == 0, stderr
    [run] = listed["runs"]
    assert run["total_joules"] == 2 * JOULES
    assert run["duration_seconds"] == SECONDS + 0.25
    assert {host["instance"]: host["hostname"] for host in run["hosts"]} == {
        'node1:9100{cluster="site-a"}': "a-node1",
        'node1:9100{cluster="site-b"}': "b-node1",
    }
    assert run["labels"] == {}


def test_a_replica_label_that_cannot_tell_replicas_apart_is_a_usage_error(two_runs: list[FakeSeries]) -> None:
    """Naming instance would read every node as one; a name that is no label name matches nothing."""
    with FakePrometheus(two_runs) as server:
        code, _, stderr = report(server, "--replica-label", "instance", here=True)
        assert server.requests == []
    assert code == 2 and "Traceback" not in stderr
    assert "instance is a label of the data itself" in stderr
    with pytest.raises(argparse.ArgumentTypeError, match="expected a label name"):
        replica_label("prometheus-replica")
    assert replica_label(" ha_member ") == "ha_member"


def not_measured_reason(server: FakePrometheus, start: float = DAY, end: float = DAY + 86399) -> str:
    """The reason ``runs --format=json`` gives for its one run, which it must list as not measured (exit 1)."""
    result = report_here(
        "runs",
        "--format=json",
        f"--prometheus={server.url}",
        f"--start={start}",
        f"--end={end}",
        "--carbon-intensity=100",
    )
    assert result.returncode == 1, result.stderr
    [run] = json.loads(result.stdout)["runs"]
    return str(run["not_measured"])


def ended_without_end_time(run_id: str, start: float, delivered: float) -> list[FakeSeries]:
    """A run's series as a store holds them when remote_write has delivered every series up to ``delivered``
    (after the run's end: ``impact_run_active`` already 0) but the new ``impact_run_end_time_seconds`` not yet."""
    return [
        FakeSeries(one.labels, [(t, v) for t, v in one.samples if t <= delivered])
        for one in run_series(run_id, start)
        if one.labels["__name__"] != "impact_run_end_time_seconds"
    ]


def test_a_run_that_ended_without_its_end_time_in_the_store_is_settling_not_longer() -> None:
    """A store that holds a run's impact_run_active at 0 but not its end time yet (remote_write delivers series
    in any order) lists the run as still settling, never as lasting until its newest counter sample (the
    exporter keeps exporting a finished run's counters); --settle=0 reports it as active up to its last sample
    saying so."""
    now = time.time()
    start = now - SECONDS - 2 * SCRAPE - 1  # ended 11 s ago, the first sample saying so 6 s ago
    series = ended_without_end_time("pending", start, delivered=now)
    with FakePrometheus(series) as server:
        reason = not_measured_reason(server, start=now - 600, end=now)
        settled_code, listed, settled_stderr = report(server, "--settle=0", start=now - 600, end=now, here=True)
    assert "still settling" in reason and "--settle=0" in reason, reason
    assert settled_code == 0, settled_stderr
    [run] = listed["runs"]
    assert run["end_time"] is None
    assert run["duration_seconds"] == pytest.approx(SECONDS)  # its last active sample, at its end
    assert run["total_joules"] == pytest.approx(JOULES, rel=1e-12)


def test_a_run_whose_end_time_never_reached_the_store_is_not_measured_and_says_why() -> None:
    """Long after the run, a store without its end time (a relabelling rule that drops it) gives no duration:
    the run is not measured, with the metric named, rather than as long as its counters stayed exported."""
    start = DAY + 3600
    with FakePrometheus(ended_without_end_time("dropped", start, delivered=start + SECONDS + 30)) as server:
        reason = not_measured_reason(server)
    assert "impact_run_end_time_seconds" in reason and "relabelling" in reason, reason


def brief_run(run_id: str, start: float) -> list[FakeSeries]:
    """A run of 10 W for 10 s on one node, scraped 5, 10 and 15 s after its start: 100 J, three samples a series."""
    end, times = start + 10, [start + 5, start + 10, start + 15]
    identity = {"run_id": run_id, "user": "alice", "instance": "node1:9100", "job": "impact"}

    def series(name: str, value: Any, **labels: str) -> FakeSeries:
        return FakeSeries({"__name__": name, **identity, **labels}, [(t, float(value(t))) for t in times])

    return [
        series("impact_run_info", lambda t: 1, experiment="exp", set="a"),
        series("impact_run_start_time_seconds", lambda t: start),
        FakeSeries({"__name__": "impact_run_end_time_seconds", **identity}, [(t, end) for t in times[1:]]),
        series("impact_run_active", lambda t: t < end),
        series("impact_run_energy_joules_total", lambda t: 10.0 * (min(t, end) - start), component="cpu"),
        series("impact_run_cpu_seconds_total", lambda t: min(t, end) - start),
    ]


def test_a_thousand_runs_in_one_report_take_requests_per_batch_not_per_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """1,000 runs of 32-character ids over one day (one regex of them all would be over 16 KB, which the fake
    refuses as VictoriaMetrics does): every run is listed with its 100 J, every query is under 8 KB, and the
    requests number a few per batch of runs (their times, read over the span of its runs, and their samples),
    not one per run.

    A thousand runs make five batches, which is what the request count is about; 10,000 runs from real stores
    are benchmarks/reporter_scale.py's (in the suite they cost a minute of CPU in the reporter's per-run work,
    not in its requests).
    """
    run_ids = [uuid.UUID(int=number).hex for number in range(1_000)]
    series = [s for number, run_id in enumerate(run_ids) for s in brief_run(run_id, DAY + 60 + 8 * number)]
    batches = run_batches([_Found(run_id, "alice", {}, ()) for run_id in run_ids])
    with FakePrometheus(series, max_query_length=16384) as server:
        code = main(["runs", "--format=json", f"--prometheus={server.url}", f"--start={DAY}", f"--end={DAY + 86399}"])
        requests = list(server.requests)
    listed = json.loads(capsys.readouterr().out)
    assert code == 0
    assert joules_of(listed) == dict.fromkeys(run_ids, 100.0)
    assert len("|".join(run_ids)) > 16384
    assert max(len(query.encode()) for r in requests for query in r.form.get("query", [])) < MAX_QUERY_BYTES
    # Over one day, in windows of 6 h: the discovery 4 summaries; per batch (its runs span 40 minutes, in the
    # day's first 6 hours) its times, read over its runs' windows rather than the day as one summary per gauge
    # (no raw read: every run ended), and its samples 1 or 2; the hosts, GPUs and methods 3.
    assert 3 <= len(batches) <= 6
    queries = [query for r in requests for query in r.form.get("query", [])]
    summaries = [query for query in queries if query.startswith(("min_over_time", "max_over_time", "last_over_time"))]
    found = [query for query in summaries if "impact_run_info" in query]
    assert len(found) == 4, "discovery: one summary of impact_run_info per 6 hours of the day"
    assert len(summaries) - len(found) == 3 * len(batches), "times: one summary per gauge per batch"
    assert not [query for query in queries if "impact_run_active" in query and query not in summaries]
    assert len(requests) <= 4 + 5 * len(batches) + 3
