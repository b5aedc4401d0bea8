"""docs/reporting.md's recipe for a time-varying carbon intensity in Prometheus, read from the doc itself: a rule file
promtool accepts, whose profile is the table's figure outside the evening peak and 20 more in it."""

from __future__ import annotations

import re
import subprocess
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from impact_reporter.carbon import lookup_region
from tests.servers import REPO_ROOT, PrometheusServer, require_binary

REPORTING_DOC = REPO_ROOT / "docs" / "reporting.md"
RECIPE = re.compile(r"<!-- recipe: intensity-rule -->\s*```yaml\n(.*?)```", re.DOTALL)


def rule_file() -> str:
    """The recipe's rule file, as the doc gives it."""
    [body] = RECIPE.findall(REPORTING_DOC.read_text())
    return textwrap.dedent(body)


def test_the_docs_intensity_rule_file_is_one_promtool_accepts(tmp_path: Path) -> None:
    promtool = require_binary("promtool", "apt-get install prometheus")
    rules = tmp_path / "intensity.rules.yml"
    rules.write_text(rule_file())
    checked = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(("hour", "peak"), [(12, False), (17, True), (20, True), (21, False), (23, False)])
def test_the_docs_intensity_profile_is_the_tables_figure_with_an_evening_peak(
    prometheus: PrometheusServer, hour: int, peak: bool
) -> None:
    [rule] = yaml.safe_load(rule_file())["groups"][0]["rules"]
    at = datetime(2026, 12, 5, hour, 30, tzinfo=timezone.utc).timestamp()
    [value] = prometheus.query(rule["expr"], at=at)
    table = lookup_region("FR").g_per_kwh
    assert float(value["value"][1]) == table + (20.0 if peak else 0.0)
