"""impact-report against a real Prometheus scraping real exporters whose hardware and processes are faked.

Each node is an exporter reading a fake powercap tree and a fake procfs, so the test knows exactly how much
energy each run must get: the run's process uses half the machine's busy CPU time and a quarter of its
memory, so it gets half the package energy and a quarter of the DRAM energy written.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from experiment_impact_tracker import track_run
from impact_reporter.cli import main
from tests.fakes.node import MEMORY_SHARE, PID, Node
from tests.servers import REPO_ROOT, ExporterProcess, PrometheusServer, free_port, wait_for

pytestmark = pytest.mark.integration


def report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "impact_reporter", *args], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )


def report_here(*args: str) -> subprocess.CompletedProcess[str]:
    """``report`` in this process: the same main(), output and exit status without a child's start-up (a second
    of imports), for tests that report many times."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit:  # argparse's usage errors
            code = exit.code if isinstance(exit.code, int) else 2
    return subprocess.CompletedProcess(["impact-report", *args], code, out.getvalue(), err.getvalue())


def report_json(*args: str, here: bool = False) -> dict[str, Any]:
    """``runs --format=json``'s document, in a child process or (``here``) in this one."""
    result = (report_here if here else report)("runs", "--format=json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_until_scraped(prometheus: PrometheusServer, run_id: str, joules: float, instances: int = 1) -> None:
    """Wait until Prometheus holds the final cpu counter of the run (summed over its instances)."""

    def scraped() -> bool:
        result = prometheus.query(f'sum(impact_run_energy_joules_total{{run_id="{run_id}",component="cpu"}})')
        count = prometheus.query(f'count(impact_run_energy_joules_total{{run_id="{run_id}",component="cpu"}})')
        return (
            bool(result)
            and abs(float(result[0]["value"][1]) - joules) < 1e-6
            and float(count[0]["value"][1]) == instances
        )

    wait_for(scraped, 15, f"prometheus to scrape the final energy of {run_id}")


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path / "node1")


@pytest.mark.serial  # the ground truth is a CPU share of the machine
def test_runs_by_matcher_and_by_run_directory_match_the_exporter_and_ground_truth(
    tmp_path: Path, node: Node, prometheus: PrometheusServer, start_exporter: Callable[..., ExporterProcess]
) -> None:
    exporter = start_exporter(*node.flags())
    prometheus.add_target(exporter.address)
    experiment = f"report-{uuid.uuid4().hex[:8]}"
    with track_run(
        experiment,
        set="a",
        labels={"seed": "1"},
        logdir=tmp_path / "rundir",
        pid=PID,
        client=node.client(),
        strict=True,
    ) as run:
        node.drive(3.0)
    final = run.final
    assert final is not None and final["status"] == "finished"
    wait_until_scraped(prometheus, run.run_id, final["energy_joules"]["cpu"])

    by_match = report_json(
        f"--prometheus={prometheus.url}", "--since=10m", f'--match={{experiment="{experiment}"}}', "--region=FR"
    )
    by_dir = report_json(f"--prometheus={prometheus.url}", f"--run-dir={tmp_path / 'rundir'}", "--region=FR")
    for document in (by_match, by_dir):
        [figures] = document["runs"]
        assert (figures["run_id"], figures["experiment"], figures["set"]) == (run.run_id, experiment, "a")
        assert figures["labels"] == {"seed": "1"}
        assert [host["hostname"] for host in figures["hosts"]] == ["node1"]
        assert figures["energy_joules"]["cpu"] == pytest.approx(final["energy_joules"]["cpu"], rel=1e-9)
        assert figures["energy_joules"]["dram"] == pytest.approx(final["energy_joules"]["dram"], rel=1e-9)
        assert figures["energy_joules"]["cpu"] == pytest.approx(0.5 * node.package_joules, rel=0.01)
        assert figures["energy_joules"]["dram"] == pytest.approx(MEMORY_SHARE * node.dram_joules, rel=0.01)
        assert figures["cpu_hours"] == pytest.approx(final["cpu_seconds"] / 3600, rel=1e-9)
        assert figures["measured"] == {"cpu": True, "dram": True}
        assert figures["duration_seconds"] == pytest.approx(final["end_time"] - final["start_time"], abs=0.01)
        assert figures["coverage"] > 0.6
        assert figures["total_kwh"] == pytest.approx(figures["total_joules"] / 3.6e6)
        assert figures["kg_co2eq"] == pytest.approx(
            figures["total_kwh"] * 1.58 * figures["carbon_intensity_g_per_kwh"] / 1000
        )
        assert document["notes"] == []


def test_a_counter_reset_mid_run_is_stepped_over(
    tmp_path: Path, node: Node, prometheus: PrometheusServer, start_exporter: Callable[..., ExporterProcess]
) -> None:
    port = free_port()
    run_id = f"reset-{uuid.uuid4().hex[:8]}"
    first = start_exporter(*node.flags(f"--web.listen-address=127.0.0.1:{port}", f"--state-dir={tmp_path / 's1'}"))
    prometheus.add_target(first.address)
    node.client().start_run("reset", pid=PID, run_id=run_id)
    node.drive(2.0)
    before = node.client().stop_run(run_id)["energy_joules"]["cpu"]
    wait_until_scraped(prometheus, run_id, before)
    first.stop()

    second = start_exporter(*node.flags(f"--web.listen-address=127.0.0.1:{port}", f"--state-dir={tmp_path / 's2'}"))
    assert second.address == first.address
    node.client().start_run("reset", pid=PID, run_id=run_id)
    node.drive(2.0)
    after = node.client().stop_run(run_id)["energy_joules"]["cpu"]
    assert after < before + 1, "the new exporter started the run's counter from 0"
    wait_until_scraped(prometheus, run_id, after)

    [figures] = report_json(f"--prometheus={prometheus.url}", "--since=10m", f'--match={{run_id="{run_id}"}}')["runs"]
    assert figures["counter_resets"] == 1
    assert figures["energy_joules"]["cpu"] == pytest.approx(before + after, rel=1e-9)
    assert figures["energy_joules"]["cpu"] == pytest.approx(0.5 * node.package_joules, rel=0.01)


def test_archive_round_trip_gives_the_same_numbers(
    tmp_path: Path, node: Node, prometheus: PrometheusServer, start_exporter: Callable[..., ExporterProcess]
) -> None:
    exporter = start_exporter(*node.flags())
    prometheus.add_target(exporter.address)
    run_id = f"archive-{uuid.uuid4().hex[:8]}"
    node.client().start_run("archive", labels={"lr": "0.1"}, pid=PID, run_id=run_id)
    node.drive(2.0)
    final = node.client().stop_run(run_id)["energy_joules"]["cpu"]
    wait_until_scraped(prometheus, run_id, final)
    selection = (f"--prometheus={prometheus.url}", "--since=10m", f'--match={{run_id="{run_id}"}}')

    archived = report("archive", *selection, f"--out={tmp_path / 'archive'}")
    assert archived.returncode == 0, archived.stderr
    assert (tmp_path / "archive" / run_id / "samples.csv").exists()
    from_prometheus = report_json(*selection, "--carbon-intensity=300")["runs"][0]
    from_archive = report_json(
        f"--run-dir={tmp_path / 'archive' / run_id}", "--carbon-intensity=300", "--prometheus=http://127.0.0.1:9"
    )["runs"][0]
    for key in (
        "energy_joules",
        "total_joules",
        "kg_co2eq",
        "cpu_hours",
        "duration_seconds",
        "coverage",
        "largest_gap_seconds",
        "peak_power_watts",
        "labels",
        "hosts",
        "measured",
    ):
        assert from_archive[key] == from_prometheus[key], key

    constant_series = report_json(*selection, "--carbon-intensity-query=vector(300)")["runs"][0]
    assert constant_series["carbon_intensity_method"] == "prometheus-series"
    assert constant_series["carbon_intensity_g_per_kwh"] == pytest.approx(300.0, rel=1e-9)
    assert constant_series["kg_co2eq"] == pytest.approx(from_prometheus["kg_co2eq"], rel=1e-9)


def test_world_average_is_used_with_a_loud_note(
    node: Node, prometheus: PrometheusServer, start_exporter: Callable[..., ExporterProcess]
) -> None:
    exporter = start_exporter(*node.flags())
    prometheus.add_target(exporter.address)
    run_id = f"note-{uuid.uuid4().hex[:8]}"
    node.client().start_run("note", pid=PID, run_id=run_id)
    node.drive(1.0)
    final = node.client().stop_run(run_id)["energy_joules"]["cpu"]
    wait_until_scraped(prometheus, run_id, final)
    table = report("runs", f"--prometheus={prometheus.url}", "--since=10m", f'--match={{run_id="{run_id}"}}')
    assert table.returncode == 0, table.stderr
    assert run_id in table.stdout and "kgCO2eq" in table.stdout
    assert "world average" in table.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prometheus=http://127.0.0.1:9"], "cannot reach Prometheus at http://127.0.0.1:9"),
        (["--prometheus=ftp://example"], "ftp://example"),
        (['--match={experiment=~"("}'], "error parsing regexp"),
        (["--match=experiment"], "expected label matchers in braces"),
        (["--since=forever"], "forever"),
        (["--region=XX"], "XX"),
    ],
)
def test_usage_and_connection_problems_exit_2_with_one_clear_line(
    prometheus: PrometheusServer, args: list[str], message: str
) -> None:
    defaults = [] if any(a.startswith("--prometheus") for a in args) else [f"--prometheus={prometheus.url}"]
    result = report("runs", *defaults, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_no_matching_run_is_an_error_that_says_so(prometheus: PrometheusServer) -> None:
    result = report("runs", f"--prometheus={prometheus.url}", "--since=5m", '--match={experiment="never-ran"}')
    assert result.returncode == 1
    assert "no run matches" in result.stderr
