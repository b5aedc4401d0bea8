"""The reporter benchmark's correctness on a tiny dataset: 3 runs of 10 minutes at 1 s, backfilled with promtool.

The benchmark (benchmarks/reporter.py) claims the reporter's figures equal a direct computation on the data it
generated; this checks that claim end to end through the same generator, promtool, a real Prometheus serving
the blocks, and ``impact-report``. The first run's counters reset halfway, so a sample lost or counted twice at
the reset changes its total.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from benchmarks.reporter import (
    KEEP_OLD_BLOCKS,
    Dataset,
    appendix_args,
    appendix_runs,
    backfill,
    max_relative_difference,
    plan,
    runs_args,
    write_openmetrics,
)
from impact_reporter.cli import main
from tests.servers import PrometheusServer, require_binary

pytestmark = pytest.mark.integration

RUNS, MINUTES = 3, 10


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, PrometheusServer]:
    """The tiny dataset, backfilled into blocks that a private Prometheus serves."""
    require_binary("promtool", "apt-get install prometheus")
    workdir = tmp_path_factory.mktemp("reporter-benchmark")
    dataset = plan(hours=RUNS * MINUTES / 60, runs=RUNS, concurrent=1, end=int(time.time()) - 300)
    text = workdir / "backfill.om"
    write_openmetrics(text, dataset)
    backfill(text, workdir / "data")
    (workdir / "prometheus").mkdir()
    server = PrometheusServer(workdir / "prometheus", data_dir=workdir / "data", extra_args=KEEP_OLD_BLOCKS)
    yield dataset, server
    server.stop()


def test_the_plan_is_what_the_benchmark_says(backfilled: tuple[Dataset, PrometheusServer]) -> None:
    dataset, _ = backfilled
    assert [(run.end - run.start) for run in dataset.runs] == [MINUTES * 60] * RUNS
    assert [run.start for run in dataset.runs] == [dataset.start + i * MINUTES * 60 for i in range(RUNS)]
    assert [run.reset_at is not None for run in dataset.runs] == [True, False, False]
    # Run 1, a treatment run, draws 20 % less than its level of 26 W (cpu) and 3.1 W (dram), noise averaging out.
    treatment = dataset.runs[1]
    assert treatment.set == "treatment"
    assert treatment.energy_joules["cpu"] / 600 == pytest.approx(26 * 0.8, abs=0.5)
    assert treatment.energy_joules["dram"] / 600 == pytest.approx(3.1 * 0.8, abs=0.05)


def test_prometheus_serves_the_generated_counters(backfilled: tuple[Dataset, PrometheusServer]) -> None:
    dataset, server = backfilled
    first = dataset.runs[0]
    values = server.query(
        f'impact_run_energy_joules_total{{run_id="{first.run_id}",component="cpu",instance="node-1:9877",'
        f'job="impact"}}[{MINUTES * 60 + 1}s]',
        at=first.end,
    )
    samples = [(float(t), float(value)) for t, value in values[0]["values"]]
    assert samples == list(zip(range(first.start, first.end + 1), first.counter_values("cpu").tolist(), strict=True))
    assert samples[first.reset_at][1] < samples[first.reset_at - 1][1]  # the reset is in the data


def test_appendix_energy_equals_the_direct_computation(
    backfilled: tuple[Dataset, PrometheusServer], tmp_path: Path
) -> None:
    dataset, server = backfilled
    assert main(appendix_args(server.url, dataset, tmp_path / "appendix")) == 0
    difference, where = max_relative_difference(dataset, appendix_runs(tmp_path / "appendix" / "appendix.json"))
    assert difference <= 1e-9, where


def test_runs_json_equals_the_direct_computation(
    backfilled: tuple[Dataset, PrometheusServer], capsys: pytest.CaptureFixture[str]
) -> None:
    dataset, server = backfilled
    assert main(runs_args(server.url, dataset)) == 0
    difference, where = max_relative_difference(dataset, json.loads(capsys.readouterr().out)["runs"])
    assert difference <= 1e-9, where
