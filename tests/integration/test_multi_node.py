"""A distributed run: one run id on two nodes, each with its own exporter, one Prometheus scraping both, and the
appendix summing the nodes.

The two fake nodes differ: node B's run process uses 30% of the busy CPU time instead of 50%, and its package
counter wraps during the run. The ground truth is what the test wrote: package energy x the run's CPU share plus
DRAM energy x the run's memory share, on each node.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pytest

from experiment_impact_tracker import track_run
from tests.fakes.node import BUSY_TICKS_PER_STEP, MEMORY_SHARE, PACKAGE, PID, RUN_TICKS_PER_STEP, Node
from tests.servers import REPO_ROOT, ExporterProcess, PrometheusServer, wait_for

pytestmark = pytest.mark.integration

SECONDS = 2.0
NODE_B_RUN_TICKS = 3


def test_one_run_id_on_two_nodes_is_summed_across_them(
    tmp_path: Path,
    prometheus: PrometheusServer,
    start_exporter: Callable[..., ExporterProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node_a, node_b = Node(tmp_path / "node-a"), Node(tmp_path / "node-b")
    wrap_at = node_b.powercap.max_energy_range_uj(PACKAGE)
    node_b.powercap.set_energy_uj(PACKAGE, wrap_at - 20_000_000)  # 20 J before the wrap; the run draws 80 J
    exporters = [start_exporter(*node.flags()) for node in (node_a, node_b)]
    for exporter in exporters:
        prometheus.add_target(exporter.address)

    run_id = f"ddp-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("IMPACT_RUN_ID", run_id)  # what a launcher exports to every rank
    with ExitStack() as ranks:
        runs = [
            ranks.enter_context(track_run("ddp", set="2-nodes", pid=PID, client=node.client(), strict=True))
            for node in (node_a, node_b)
        ]
        drives = [
            threading.Thread(target=node_a.drive, args=(SECONDS,)),
            threading.Thread(target=node_b.drive, args=(SECONDS, NODE_B_RUN_TICKS)),
        ]
        for drive in drives:
            drive.start()
        for drive in drives:
            drive.join()
    assert [run.run_id for run in runs] == [run_id, run_id]
    assert node_b.powercap.energy_uj(PACKAGE) < wrap_at - 20_000_000, "node B's counter did not wrap"

    cpu_truth = (
        node_a.package_joules * RUN_TICKS_PER_STEP / BUSY_TICKS_PER_STEP
        + node_b.package_joules * NODE_B_RUN_TICKS / BUSY_TICKS_PER_STEP
    )
    dram_truth = (node_a.dram_joules + node_b.dram_joules) * MEMORY_SHARE
    finals = [run.final["energy_joules"] for run in runs]

    def both_finals_scraped() -> bool:
        for exporter, final in zip(exporters, finals, strict=True):
            got = prometheus.query(
                f'impact_run_energy_joules_total{{run_id="{run_id}",component="cpu",instance="{exporter.address}"}}'
            )
            if not got or float(got[0]["value"][1]) != pytest.approx(final["cpu"], rel=1e-9):
                return False
        return True

    wait_for(both_finals_scraped, 20, "prometheus to scrape the run's final energy on both nodes")
    out = tmp_path / "appendix"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "impact_reporter",
            "appendix",
            f"--prometheus={prometheus.url}",
            "--since=10m",
            "--no-pdf",
            "--experiment-set-names",
            "DDP",
            f'--match={{run_id="{run_id}"}}',
            f"--out={out}",
            "--carbon-intensity=100",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    [run] = json.loads((out / "appendix.json").read_text())["sets"][0]["runs"]
    assert run["energy_joules"]["cpu"] == pytest.approx(sum(final["cpu"] for final in finals), rel=1e-9)
    assert run["energy_joules"]["dram"] == pytest.approx(sum(final["dram"] for final in finals), rel=1e-9)
    assert run["energy_joules"]["cpu"] == pytest.approx(cpu_truth, rel=0.01)
    assert run["energy_joules"]["dram"] == pytest.approx(dram_truth, rel=0.01)
    assert run["total_joules"] == pytest.approx(cpu_truth + dram_truth, rel=0.01)
    assert sorted(host["instance"] for host in run["hosts"]) == sorted(e.address for e in exporters)
    assert sorted(host["hostname"] for host in run["hosts"]) == ["node-a", "node-b"]
    page = (out / "DDP" / "0.tex").read_text()
    assert "Host node-a" in page and "Host node-b" in page


NOBODY = 65534  # uid of nobody on Debian and Ubuntu


def test_one_run_id_of_two_users_on_two_nodes_is_refused_until_the_match_names_the_user(
    tmp_path: Path, prometheus: PrometheusServer, start_exporter: Callable[..., ExporterProcess]
) -> None:
    node_a, node_b = Node(tmp_path / "node-a"), Node(tmp_path / "node-b")
    node_b.proc.update(PID, uid=NOBODY)  # root's process on node A, nobody's on node B
    exporters = [start_exporter(*node.flags()) for node in (node_a, node_b)]
    for exporter in exporters:
        prometheus.add_target(exporter.address)
    run_id = f"dist-{uuid.uuid4().hex[:8]}"
    for node in (node_a, node_b):  # root registers both: each run belongs to its process's owner
        node.client().start_run("dist", pid=PID, run_id=run_id)
    drives = [threading.Thread(target=node.drive, args=(1.0,)) for node in (node_a, node_b)]
    for drive in drives:
        drive.start()
    for drive in drives:
        drive.join()
    finals = [node.client().stop_run(run_id)["energy_joules"]["cpu"] for node in (node_a, node_b)]
    wait_for(
        lambda: len(prometheus.query(f'impact_run_end_time_seconds{{run_id="{run_id}"}}')) == 2,
        20,
        "prometheus to scrape both runs' ends",
    )

    def report(match: str) -> subprocess.CompletedProcess[str]:
        command = ["runs", f"--prometheus={prometheus.url}", "--since=10m", "--format=json", f"--match={match}"]
        return subprocess.run(
            [sys.executable, "-m", "impact_reporter", *command],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO_ROOT,
        )

    refused = report(f'{{run_id="{run_id}"}}')
    assert refused.returncode == 1, refused.stdout
    a, b = (exporter.address for exporter in exporters)
    assert refused.stderr == (
        f"impact-report: run id {run_id} belongs to several users: nobody ({b}) and root ({a}); they are different "
        f'runs, so the report would mix them: choose one user\'s with --match \'{{run_id="{run_id}",user="nobody"}}\'\n'
    )
    chosen = report(f'{{run_id="{run_id}",user="nobody"}}')
    assert chosen.returncode == 0, chosen.stderr
    [run] = json.loads(chosen.stdout)["runs"]
    assert (run["user"], [host["instance"] for host in run["hosts"]]) == ("nobody", [b])
    assert run["energy_joules"]["cpu"] == pytest.approx(finals[1], rel=1e-9)
