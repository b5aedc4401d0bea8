"""The appendix end to end: runs made through the client on a real exporter, scraped by a real Prometheus.

Two sets of three runs whose processes use different shares of the machine; both the seed's command (from
the runs' directories) and ``impact-report appendix`` (from Prometheus queries) must write the whole layout,
and the statistics in appendix.json must equal scipy/statsmodels on totals the test queries itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from experiment_impact_tracker import track_run
from tests.fakes.node import PID, Node
from tests.servers import REPO_ROOT, ExporterProcess, PrometheusServer, require_binary, wait_for

pytestmark = pytest.mark.integration

LOADS = {"heavy": (5, [1.0, 1.3, 1.6]), "light": (2, [1.0, 1.2, 1.4])}  # run ticks per step, seconds per run


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys; from impact_reporter.cli import main, seed_main; "
        "sys.exit((seed_main if sys.argv[1] == 'seed' else main)(sys.argv[2:]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )


def test_appendix_from_prometheus_and_from_run_directories(
    tmp_path: Path, prometheus: PrometheusServer, start_exporter: Callable[..., ExporterProcess]
) -> None:
    require_binary("lualatex", "apt-get install texlive-luatex texlive-latex-recommended texlive-science latexmk")
    pdftotext = require_binary("pdftotext", "apt-get install poppler-utils")
    node = Node(tmp_path / "node")
    exporter = start_exporter(*node.flags())
    prometheus.add_target(exporter.address)
    experiment = f"appendix-{uuid.uuid4().hex[:8]}"
    run_ids: dict[str, list[str]] = {}
    for set_name, (ticks, durations) in LOADS.items():
        for index, seconds in enumerate(durations):
            with track_run(
                experiment,
                set=set_name,
                labels={"seed": str(index)},
                pid=PID,
                client=node.client(),
                logdir=tmp_path / "runs" / set_name / str(index),
                strict=True,
            ) as run:
                node.drive(seconds, run_ticks_per_step=ticks)
            run_ids.setdefault(set_name, []).append(run.run_id)

    def totals(set_name: str) -> np.ndarray | None:
        """Per-run total energy in kWh, queried from Prometheus by the test itself."""
        values = []
        for run_id in run_ids[set_name]:
            query = f'sum(last_over_time(impact_run_energy_joules_total{{run_id="{run_id}"}}[10m]))'
            result = prometheus.query(query)
            if not result:
                return None
            values.append(float(result[0]["value"][1]) / 3.6e6)
        return np.array(values)

    def finals_scraped() -> bool:
        for set_name in LOADS:
            records = [json.loads((tmp_path / "runs" / set_name / str(i) / "run.json").read_text()) for i in range(3)]
            expected = [record["final"]["energy_joules"]["cpu"] for record in records]
            for run_id, joules in zip(run_ids[set_name], expected, strict=True):
                got = prometheus.query(f'impact_run_energy_joules_total{{run_id="{run_id}",component="cpu"}}')
                if not got or abs(float(got[0]["value"][1]) - joules) > 1e-6:
                    return False
        return True

    wait_for(finals_scraped, 20, "prometheus to scrape every run's final energy")
    heavy, light = totals("heavy"), totals("light")
    welch = stats.ttest_ind(heavy, light, equal_var=False)
    ci = CompareMeans(DescrStatsW(heavy), DescrStatsW(light)).tconfint_diff(alpha=0.05, usevar="unequal")

    by_query = tmp_path / "by-query"
    result = cli(
        "main",
        "appendix",
        f"--prometheus={prometheus.url}",
        "--since=15m",
        "--experiment-set-names",
        "Heavy (5/10)",
        "Light (2/10)",
        f'--match={{experiment="{experiment}",set="heavy"}}',
        f'--match={{experiment="{experiment}",set="light"}}',
        "--compare",
        "Heavy (5/10)",
        "Light (2/10)",
        f"--out={by_query}",
        "--region=FR",
    )
    assert result.returncode == 0, result.stderr
    by_dirs = tmp_path / "by-dirs"
    result = cli(
        "seed",
        *[str(tmp_path / "runs" / "heavy" / str(i)) for i in range(3)],
        "--experiment_set_names",
        "Heavy (5/10)",
        "Light (2/10)",
        "--compare_dirs",
        *[str(tmp_path / "runs" / "light" / str(i)) for i in range(3)],
        "--output_dir",
        str(by_dirs),
        f"--prometheus={prometheus.url}",
        "--region=FR",
    )
    assert result.returncode == 0, result.stderr

    for out in (by_query, by_dirs):
        for set_name in ("Heavy (5_10)", "Light (2_10)"):  # "/" cannot be in a file name
            for stem in ("0", "1", "2", "summary"):
                assert (out / set_name / f"{stem}.pdf").is_file(), out / set_name / stem
        comparison = out / "Heavy (5_10)_v_Light (2_10).pdf"
        document = json.loads((out / "appendix.json").read_text())
        total = document["comparisons"][0]["quantities"]["total_kwh"]
        assert total["p_value"] == pytest.approx(welch.pvalue, rel=1e-6)
        assert total["ci_low"] == pytest.approx(ci[0], rel=1e-6)
        assert total["ci_high"] == pytest.approx(ci[1], rel=1e-6)
        assert [r["total_kwh"] for r in document["sets"][0]["runs"]] == pytest.approx(list(heavy), rel=1e-6)
        text = subprocess.run([pdftotext, "-layout", str(comparison), "-"], capture_output=True, text=True).stdout
        printed = "< 0.001" if welch.pvalue < 0.001 else f"{welch.pvalue:.3g}"
        assert printed in text, text
