"""impact-report against VictoriaMetrics, fed by a real Prometheus's remote_write, equals the same against Prometheus.

VictoriaMetrics returns Prometheus' staleness markers as NaN samples: they appear wherever a target stopped being
scraped (an exporter restarted mid-run; a finished run's node that went away). The reporter must read them as
gaps, so that every figure, every output format and every archive is the same as from Prometheus, and finite.
"""

from __future__ import annotations

import json
import math
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.fakes.node import PID, Node
from tests.reporter.test_report_runs import report, report_here, report_json
from tests.servers import ExporterProcess, PrometheusServer, VictoriaMetricsServer, free_port, wait_for

pytestmark = pytest.mark.integration

ENERGY = ("total_joules", "total_kwh", "kg_co2eq", "cpu_hours")
TIMES = ("duration_seconds", "start_time", "end_time", "largest_gap_seconds")
SHAPE = ("average_power_watts", "peak_power_watts", "coverage")
"""Times are stored by VictoriaMetrics to about 12 significant digits: unix times in seconds to 1 ms, so times
match to 1 ms and what divides by a duration of seconds to 1e-6 relative; energy counters match to 1e-9."""


@pytest.fixture(scope="module")
def writer(
    victoria_metrics: VictoriaMetricsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    """A Prometheus of its own that remote-writes everything it scrapes into the session VictoriaMetrics."""
    server = PrometheusServer(tmp_path_factory.mktemp("remote-writer"), remote_write_url=victoria_metrics.write_url)
    yield server
    server.stop()


def final_counter(store: Callable[[str], list[dict[str, Any]]], run_id: str) -> float | None:
    """The run's cpu energy counter as ``store`` has it now (None when it has none)."""
    result = store(f'sum(last_over_time(impact_run_energy_joules_total{{run_id="{run_id}",component="cpu"}}[10m]))')
    return float(result[0]["value"][1]) if result else None


def strict_json(text: str, what: str) -> Any:
    """``text`` parsed as JSON that holds no NaN or Infinity (which Python's json would otherwise accept)."""

    def refuse(constant: str) -> None:
        pytest.fail(f"{what} holds {constant}: {text[:2000]}")

    return json.loads(text, parse_constant=refuse)


def assert_finite_samples(path: Path) -> pd.DataFrame:
    """An archive's samples.csv, whose every value is a finite number (pandas writes NaN as an empty field)."""
    samples = pd.read_csv(path)
    values = pd.to_numeric(samples["value"], errors="coerce").to_numpy(dtype=float)
    assert len(samples) and np.isfinite(values).all(), f"{path} holds non-finite values"
    return samples


def test_stale_markers_from_a_restart_and_a_gone_node_are_gaps_and_every_output_equals_prometheus(
    tmp_path: Path,
    writer: PrometheusServer,
    victoria_metrics: VictoriaMetricsServer,
    start_exporter: Callable[..., ExporterProcess],
) -> None:
    node = Node(tmp_path / "node1")
    port = free_port()
    run_id = f"vm-{uuid.uuid4().hex[:8]}"
    first = start_exporter(*node.flags(f"--web.listen-address=127.0.0.1:{port}", f"--state-dir={tmp_path / 's1'}"))
    writer.add_target(first.address)
    node.client().start_run("stores", set="a", pid=PID, run_id=run_id)
    node.drive(2.0)
    before = node.client().stop_run(run_id)["energy_joules"]["cpu"]
    wait_for(lambda: final_counter(writer.query, run_id) == pytest.approx(before, rel=1e-12), 15, "the first part")
    first.stop()
    wait_for(lambda: not writer.query(f'up{{instance="{first.address}"}} == 1'), 15, "the restart to be seen")

    second = start_exporter(*node.flags(f"--web.listen-address=127.0.0.1:{port}", f"--state-dir={tmp_path / 's2'}"))
    writer.add_target(second.address)
    node.client().start_run("stores", set="a", pid=PID, run_id=run_id)
    node.drive(2.0)
    after = node.client().stop_run(run_id)["energy_joules"]["cpu"]
    wait_for(lambda: final_counter(writer.query, run_id) == pytest.approx(after, rel=1e-12), 15, "the second part")
    writer.remove_target(second.address)  # the node goes away: every series of the finished run goes stale
    second.stop()
    stale = f'impact_run_energy_joules_total{{run_id="{run_id}",component="cpu"}}[10m]'
    wait_for(
        lambda: any(math.isnan(float(v)) for s in victoria_metrics.query(stale) for _, v in s["values"][-3:]),
        30,
        "VictoriaMetrics to hold the stale markers of the gone node",
    )
    wait_for(
        lambda: final_counter(victoria_metrics.query, run_id) == pytest.approx(after, rel=1e-12),
        30,
        "VictoriaMetrics to hold the final counter",
    )

    selection = ("--since=10m", f'--match={{run_id="{run_id}"}}', "--carbon-intensity=100")
    figures = {}
    for name, url in (("prometheus", writer.url), ("victoria-metrics", victoria_metrics.url)):
        result = report("runs", "--format=json", f"--prometheus={url}", *selection)
        assert result.returncode == 0, result.stderr
        [figures[name]] = strict_json(result.stdout, f"runs --format=json from {name}")["runs"]
    prom, vm = figures["prometheus"], figures["victoria-metrics"]
    assert vm["energy_joules"]["cpu"] == pytest.approx(before + after, rel=1e-9)
    assert vm["counter_resets"] == prom["counter_resets"] == 1
    for component, joules in prom["energy_joules"].items():
        assert vm["energy_joules"][component] == pytest.approx(joules, rel=1e-9)
    for key in ENERGY:
        assert vm[key] == pytest.approx(prom[key], rel=1e-9), key
    for key in TIMES:
        assert vm[key] == pytest.approx(prom[key], abs=1e-3), key
    for key in SHAPE:
        assert vm[key] == pytest.approx(prom[key], rel=1e-6), key
    assert vm["duration_seconds"] > 3.0 and vm["coverage"] > 0.5

    for name, url in (("prometheus", writer.url), ("victoria-metrics", victoria_metrics.url)):
        out = tmp_path / f"archive-{name}"
        archived = report(
            "archive", f"--prometheus={url}", "--since=10m", f'--match={{run_id="{run_id}"}}', f"--out={out}"
        )
        assert archived.returncode == 0, archived.stderr
    from_prom = assert_finite_samples(tmp_path / "archive-prometheus" / run_id / "samples.csv")
    from_vm = assert_finite_samples(tmp_path / "archive-victoria-metrics" / run_id / "samples.csv")
    assert len(from_vm) == len(from_prom)
    assert from_vm["value"].sum() == pytest.approx(from_prom["value"].sum(), rel=1e-9)
    [from_archive] = report_json(
        f"--run-dir={tmp_path / 'archive-victoria-metrics' / run_id}",
        "--carbon-intensity=100",
        "--prometheus=http://127.0.0.1:9",
    )["runs"]
    assert from_archive["total_joules"] == pytest.approx(prom["total_joules"], rel=1e-9)

    appendix = {}
    for name, url in (("prometheus", writer.url), ("victoria-metrics", victoria_metrics.url)):
        out = tmp_path / f"appendix-{name}"
        result = report(
            "appendix",
            f"--prometheus={url}",
            "--experiment-set-names",
            "a",
            f'--match={{run_id="{run_id}"}}',
            "--carbon-intensity=100",
            "--no-pdf",
            f"--out={out}",
        )
        assert result.returncode == 0, result.stderr
        appendix[name] = strict_json((out / "appendix.json").read_text(), f"appendix.json from {name}")
    assert_same_document(appendix["victoria-metrics"], appendix["prometheus"], "appendix.json")


def assert_same_document(left: Any, right: Any, where: str) -> None:
    """Two JSON documents are equal but for the source URL and the store's precision: unix times to 1 ms, other
    numbers to 1e-6 relative."""
    if isinstance(left, dict) and isinstance(right, dict):
        assert set(left) - {"source"} == set(right) - {"source"}, where
        for key in set(left) - {"source"}:
            assert_same_document(left[key], right[key], f"{where}.{key}")
    elif isinstance(left, list) and isinstance(right, list):
        assert len(left) == len(right), where
        for index, (a, b) in enumerate(zip(left, right, strict=True)):
            assert_same_document(a, b, f"{where}[{index}]")
    elif isinstance(left, float) or isinstance(right, float):
        tolerance = {"abs": 1e-3} if abs(right) > 1e6 else {"rel": 1e-6}
        assert left == pytest.approx(right, **tolerance), where
    else:
        assert left == right, where


def test_a_report_right_after_a_run_is_right_or_says_the_run_is_settling(
    tmp_path: Path,
    writer: PrometheusServer,
    victoria_metrics: VictoriaMetricsServer,
    start_exporter: Callable[..., ExporterProcess],
) -> None:
    node = Node(tmp_path / "node1")
    exporter = start_exporter(*node.flags())
    writer.add_target(exporter.address)
    run_id = f"vm-soon-{uuid.uuid4().hex[:8]}"
    node.client().start_run("soon", pid=PID, run_id=run_id)
    node.drive(3.0)
    final = node.client().stop_run(run_id)
    selection = ("--since=10m", f'--match={{run_id="{run_id}"}}', "--carbon-intensity=100", "--format=json")

    soon = report("runs", f"--prometheus={victoria_metrics.url}", *selection)
    [right_after] = strict_json(soon.stdout, "the report right after the run")["runs"]
    if soon.returncode != 0:
        assert "still settling" in right_after["not_measured"] and "--settle=0" in right_after["not_measured"]

    def settled() -> dict[str, Any] | None:
        """The run as a report lists it once the store holds its end (None while it is still settling)."""
        result = report_here("runs", f"--prometheus={victoria_metrics.url}", *selection)
        [run] = json.loads(result.stdout)["runs"]
        return run if result.returncode == 0 and run["end_time"] is not None else None

    # The report itself says when the store holds the end: VictoriaMetrics may answer a query that names the
    # new end-time series before one that selects the run's series by a regex does.
    later = wait_for(settled, 30, "a report of the run once VictoriaMetrics holds its end")
    [prom] = report_json(f"--prometheus={writer.url}", *selection[:-1])["runs"]
    assert later["duration_seconds"] == pytest.approx(final["end_time"] - final["start_time"], abs=1e-3)
    assert later["duration_seconds"] == pytest.approx(prom["duration_seconds"], abs=1e-3)
    assert later["total_joules"] == pytest.approx(prom["total_joules"], rel=1e-9)
    if soon.returncode == 0 and right_after["end_time"] is None:
        # The store's newest samples still showed the run active: it is listed as running, up to them.
        assert 0 < right_after["duration_seconds"] <= later["duration_seconds"] + 1e-3
        assert 0 < right_after["total_joules"] <= later["total_joules"] * (1 + 1e-9)
    elif soon.returncode == 0:
        assert right_after["duration_seconds"] == pytest.approx(later["duration_seconds"], abs=1e-3)
        assert right_after["total_joules"] == pytest.approx(later["total_joules"], rel=1e-9)

    unsettled = report("runs", f"--prometheus={victoria_metrics.url}", *selection, "--settle=0")
    assert unsettled.returncode == 0, unsettled.stderr
    assert json.loads(unsettled.stdout)["runs"][0]["duration_seconds"] == pytest.approx(later["duration_seconds"])


def test_an_ha_pair_writing_into_one_store_reads_as_the_prometheus_with_the_whole_run(
    tmp_path: Path, victoria_metrics: VictoriaMetricsServer, start_exporter: Callable[..., ExporterProcess]
) -> None:
    """Two Prometheus servers (external labels replica=a|b, cluster=site-a) scrape one exporter and both
    remote-write into one VictoriaMetrics; b stalls for 1.5 s mid-run (SIGSTOP), so a holds the whole run. The
    reporter reads each node from the replica with the most samples: every figure from VictoriaMetrics equals
    that from Prometheus a, none has the replica label, and cluster names the node, not the run."""
    node = Node(tmp_path / "node1")
    exporter = start_exporter(*node.flags())
    pair = {}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        labels = {"replica": name, "cluster": "site-a"}
        pair[name] = PrometheusServer(
            tmp_path / name, remote_write_url=victoria_metrics.write_url, external_labels=labels
        )
    try:
        for server in pair.values():
            server.add_target(exporter.address, wait=False)
        wait_for(lambda: all(s.scraping(exporter.address) for s in pair.values()), 30, "both replicas to scrape")
        run_id = f"vm-ha-{uuid.uuid4().hex[:8]}"
        node.client().start_run("ha", set="a", labels={"seed": "1"}, pid=PID, run_id=run_id)
        node.drive(1.0, steps_of=10)
        pair["b"].process.send_signal(signal.SIGSTOP)
        try:
            node.drive(1.5, steps_of=10)
        finally:
            pair["b"].process.send_signal(signal.SIGCONT)
        node.drive(1.0, steps_of=10)
        final = node.client().stop_run(run_id)
        end = wait_for(lambda: stored_past_end(victoria_metrics, pair["a"], run_id), 30, "both replicas' final samples")
        window = (f"--start={final['start_time'] - 60}", f"--end={end}", f'--match={{run_id="{run_id}"}}')
        selection = (*window, "--carbon-intensity=100")
        [vm] = report_json(f"--prometheus={victoria_metrics.url}", *selection, here=True)["runs"]
        [whole] = report_json(f"--prometheus={pair['a'].url}", *selection, here=True)["runs"]
        [late] = report_json(f"--prometheus={pair['b'].url}", *selection, here=True)["runs"]
        out = tmp_path / "archive"
        archived = report_here("archive", f"--prometheus={victoria_metrics.url}", *window, f"--out={out}")
        assert archived.returncode == 0, archived.stderr
        [from_archive] = report_json(f"--run-dir={out / run_id}", "--carbon-intensity=100", here=True)["runs"]
    finally:
        for server in pair.values():
            server.stop()

    assert vm["labels"] == whole["labels"] == {"seed": "1"}
    assert [host["instance"] for host in vm["hosts"]] == [f'{exporter.address}{{cluster="site-a"}}']
    assert [host["instance"] for host in whole["hosts"]] == [exporter.address]
    assert vm["energy_joules"]["cpu"] == pytest.approx(final["energy_joules"]["cpu"], rel=1e-9)
    for key in ENERGY:
        assert vm[key] == pytest.approx(whole[key], rel=1e-9), key
        assert late[key] == pytest.approx(whole[key], rel=1e-9), key
    for key in TIMES:
        assert vm[key] == pytest.approx(whole[key], abs=1e-3), key
    for key in (*SHAPE, "sample_interval_seconds"):
        assert vm[key] == pytest.approx(whole[key], rel=1e-6), key
    assert late["coverage"] < whole["coverage"], "replica b misses 1.5 s of the run"
    assert_same_document({**from_archive, "source": ""}, {**vm, "source": ""}, "the archived HA run")
    samples = assert_finite_samples(out / run_id / "samples.csv")
    assert set(samples["instance"]) == {f'{exporter.address}{{cluster="site-a"}}'}


def stored_past_end(store: VictoriaMetricsServer, prometheus: PrometheusServer, run_id: str) -> float | None:
    """A window end that both replicas' first samples after the run's end reach (the later one), once ``store``
    holds every series of the run from both replicas past it; None until then.

    A replica may miss a scrape, and remote_write sends series in shards that arrive in any order, so the end is
    read from the samples; a new series (the run's end) may become searchable after newer samples of older ones.
    """
    run = f'{{__name__=~"impact_run_.+",run_id="{run_id}"}}'
    found = store.query(f"{run}[1m]")
    ends = {s["metric"]["replica"]: float(s["values"][0][0]) for s in found if "end_time" in s["metric"]["__name__"]}
    if set(ends) != {"a", "b"}:
        return None
    end = max(ends.values())
    every = {(s["metric"]["__name__"], s["metric"].get("component")) for s in prometheus.query(f"{run}[1m]")}
    past = {
        replica: {
            (s["metric"]["__name__"], s["metric"].get("component"))
            for s in found
            if s["metric"]["replica"] == replica and float(s["values"][-1][0]) > end
        }
        for replica in ("a", "b")
    }
    return end if past["a"] == past["b"] == every else None
