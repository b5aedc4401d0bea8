"""A real Prometheus scrapes a real impact-exporter that reads a fake powercap tree at known power."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fakes.powercap import FakePowercap, PowerDriver
from tests.servers import ExporterProcess, PrometheusServer, require_binary, wait_for

pytestmark = pytest.mark.integration

PACKAGE_WATTS = 40.0
DRAM_WATTS = 6.0
RANGE_UJ = 500_000_000  # 500 J: the package counter wraps every 12.5 s at 40 W


def test_prometheus_sees_the_joules_written_through_a_wraparound(
    tmp_path: Path, prometheus: PrometheusServer, start_exporter: Callable[..., ExporterProcess]
) -> None:
    powercap = FakePowercap(tmp_path / "sys")
    powercap.add_zone("intel-rapl:0", "package-0", energy_uj=RANGE_UJ - 60_000_000, max_energy_range_uj=RANGE_UJ)
    powercap.add_zone("intel-rapl:0:0", "dram", energy_uj=1_000_000, max_energy_range_uj=RANGE_UJ)
    exporter = start_exporter(f"--path.sysfs={powercap.sysfs}", "--sample-interval=0.25")
    prometheus.add_target(exporter.address, {"test": "wraparound"})
    package = f'impact_rapl_package_joules_total{{instance="{exporter.address}"}}'
    dram = f'impact_rapl_dram_joules_total{{instance="{exporter.address}"}}'
    first_package = prometheus.samples(package)[0][1]
    first_dram = prometheus.samples(dram)[0][1]
    assert first_package == pytest.approx((RANGE_UJ - 60_000_000) / 1e6)

    driver = PowerDriver(powercap, {"intel-rapl:0": PACKAGE_WATTS, "intel-rapl:0:0": DRAM_WATTS}, seconds=6.0)
    driver.start()
    driver.join()
    assert driver.wraps["intel-rapl:0"] == 1, "the test must drive the package counter through one wrap"

    expected_package = first_package + driver.joules["intel-rapl:0"]
    wait_for(
        lambda: abs(prometheus.samples(package)[-1][1] - expected_package) < 1e-3,
        10,
        "prometheus to scrape the final package counter",
    )
    package_joules = prometheus.samples(package)[-1][1] - first_package
    dram_joules = prometheus.samples(dram)[-1][1] - first_dram
    assert package_joules == pytest.approx(driver.joules["intel-rapl:0"], rel=0.01)
    assert dram_joules == pytest.approx(driver.joules["intel-rapl:0:0"], rel=0.01)
    assert driver.joules["intel-rapl:0"] == pytest.approx(PACKAGE_WATTS * 6.0, rel=0.05)
    assert float(prometheus.query(f"resets({package}[5m])")[0]["value"][1]) == 0.0
    assert prometheus.query(f'impact_source_up{{instance="{exporter.address}",source="rapl"}} == 1')


def test_metrics_pass_promtool_lint(tmp_path: Path, start_exporter: Callable[..., ExporterProcess]) -> None:
    promtool = require_binary("promtool", "apt-get install prometheus")
    FakePowercap.intel_two_socket(tmp_path / "sys")
    exporter = start_exporter(f"--path.sysfs={tmp_path / 'sys'}")
    lint = subprocess.run([promtool, "check", "metrics"], input=exporter.metrics_text(), capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert lint.stdout + lint.stderr == ""
