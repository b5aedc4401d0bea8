"""The shared monitored node: its runs reach Prometheus with the energy the fake machine drew."""

from __future__ import annotations

import pytest

from tests.conftest import Monitored

pytestmark = pytest.mark.integration


def test_the_monitored_node_serves_runs_with_cpu_and_gpu_energy(monitored: Monitored) -> None:
    finished = monitored.runs["finished"]
    assert finished["energy_joules"]["gpu"] > 0 and finished["energy_joules"]["cpu"] > 0
    series = monitored.prometheus.query(f'impact_run_energy_joules_total{{run_id="{finished["run_id"]}"}}')
    assert {s["metric"]["component"] for s in series} == {"cpu", "dram", "gpu"}
    by_component = {s["metric"]["component"]: float(s["value"][1]) for s in series}
    assert by_component == pytest.approx(finished["energy_joules"], rel=1e-9)
