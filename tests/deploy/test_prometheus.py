"""The Prometheus configuration and rules in deploy/prometheus: promtool accepts them and their unit tests pass,
and every rule evaluates without error on a real Prometheus that scrapes a monitored node, giving the power the
fake machine draws."""

from __future__ import annotations

import calendar
import re
import subprocess
import time
from typing import Any

import pytest

from tests.conftest import Monitored
from tests.deploy.manifests import DEPLOY, load_yaml, rule_files, rules
from tests.servers import REPO_ROOT, require_binary, wait_for

PROMETHEUS_DIR = DEPLOY / "prometheus"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.test.yml"))
METRICS_DOC = REPO_ROOT / "docs" / "metrics.md"
HEALTH_ALERTS = {
    "ImpactExporterDown",
    "ImpactExporterSamplingStalled",
    "ImpactSourceDown",
    "ImpactGpuDown",
    "ImpactGpuMissing",
}
RECORDING_NAME = re.compile(r"^[a-z_]+:[a-z_]+:[a-z0-9_]+$")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require_binary("promtool", "apt-get install prometheus")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)


def recording_names() -> list[str]:
    return [rule["record"] for rule in rules() if "record" in rule]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in rules() if "alert" in rule]


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-compose.yml"])
def test_promtool_accepts_the_configuration_and_the_rules_it_loads(config: str) -> None:
    result = promtool("check", "config", str(PROMETHEUS_DIR / config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_files())} rule files found" in result.stdout


def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", *map(str, rule_files()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(rule_files())


def test_the_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS) == 2


def test_the_unit_tests_cover_every_recording_rule_and_every_alert_silent_and_firing() -> None:
    tested_exprs = []
    silent, firing = set(), set()
    for path in RULE_TESTS:
        for case in load_yaml(path)["tests"]:
            tested_exprs += [test["expr"] for test in case.get("promql_expr_test", [])]
            for test in case.get("alert_rule_test", []):
                (firing if test["exp_alerts"] else silent).add(test["alertname"])
    untested = [
        name
        for name in recording_names()
        if not any(re.search(rf"\b{re.escape(name)}\b", expr) for expr in tested_exprs)
    ]
    assert untested == []
    assert set(alert_names()) == silent == firing


def test_rules_follow_the_naming_conventions_and_say_what_to_do() -> None:
    assert all(RECORDING_NAME.match(name) for name in recording_names()), recording_names()
    for rule in rules():
        if "alert" in rule:
            assert rule["alert"].startswith("Impact"), rule["alert"]
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
            assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]


def test_every_series_the_rules_read_is_a_documented_metric_or_a_recording_rule() -> None:
    """A misspelt name evaluates without error and never has data; docs/metrics.md lists every real metric."""
    documented = set(re.findall(r"`(impact_[a-z_]+)`", METRICS_DOC.read_text()))
    exprs = [rule["expr"] for rule in rules()]
    read = {name for expr in exprs for name in re.findall(r"(?<![:\w])impact_[a-z_]+(?![:\w])", expr)}
    recorded = {name for expr in exprs for name in re.findall(r"\b[a-z_]+:[a-z_]+:[a-z0-9_]+\b", expr)}
    assert read - documented == set()
    assert recorded - set(recording_names()) == set()
    assert {"impact_run_energy_joules_total", "impact_rapl_package_joules_total", "impact_gpu_up"} <= read


# On a real Prometheus that scrapes the monitored node (tests/monitored.py): package 40 W, DRAM 6 W, GPU 200 W; the
# active run's process uses half of the busy CPU time and a quarter of the memory.


def by_label(series: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {s["metric"][label]: float(s["value"][1]) for s in series}


def rules_api(monitored: Monitored) -> dict[str, dict[str, Any]]:
    """The project's rules as the Prometheus rules API reports them, by name."""
    groups = monitored.prometheus.api("rules")["groups"]
    return {rule["name"]: rule for group in groups for rule in group["rules"]}


@pytest.mark.integration
def test_every_rule_evaluates_without_error_on_a_scraped_node_and_records_series(monitored: Monitored) -> None:
    address = monitored.node.address
    for name in recording_names():
        selector = f'{name}{{instance="{address}"}}' if name.startswith(("run", "instance")) else name
        wait_for(lambda selector=selector: monitored.prometheus.query(selector), 20, f"{selector} to have series")
    data_seen = time.time()
    wait_for(
        lambda: all(_evaluated_after(rule, data_seen) for rule in rules_api(monitored).values()),
        10,
        "every rule to be evaluated again",
    )
    loaded = rules_api(monitored)
    assert set(loaded) == set(recording_names()) | set(alert_names())
    for name, rule in loaded.items():
        assert (rule["health"], rule.get("lastError", "")) == ("ok", ""), name


def _evaluated_after(rule: dict[str, Any], moment: float) -> bool:
    stamp = rule.get("lastEvaluation", "")
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)", stamp)
    if not match:
        return False
    return calendar.timegm(time.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")) > moment


@pytest.mark.integration
def test_recording_rules_give_the_power_the_node_draws_and_how_it_is_shared(monitored: Monitored) -> None:
    prometheus, address = monitored.prometheus, monitored.node.address
    active = monitored.runs["active"]["run_id"]
    # Four evaluations of each of the run's components span three seconds: the first lies before ``at``, and every
    # rule of the group has its sample of the same evaluation before ``at``.
    evaluated = f'count_over_time(run_component:impact_run_energy_joules:rate1m{{run_id="{active}"}}[1m]) >= 4'
    wait_for(lambda: len(prometheus.query(evaluated)) == 3, 20, "four evaluations of the active run's power")
    at = time.time() - 2

    def query(expr: str) -> list[dict[str, Any]]:
        return prometheus.query(expr, at=at)

    node = by_label(query(f'instance_component:impact_energy_joules:rate1m{{instance="{address}"}}'), "component")
    assert set(node) == {"cpu", "dram", "gpu"}
    assert node["dram"] / node["cpu"] == pytest.approx(6 / 40, rel=0.03)
    assert node["gpu"] / node["cpu"] == pytest.approx(200 / 40, rel=0.03)
    (total,) = query(f'instance:impact_energy_joules:rate1m{{instance="{address}"}}')
    assert float(total["value"][1]) == pytest.approx(sum(node.values()), rel=1e-9)

    # The fake machine writes its counter files one after another, and a sample can fall between two of them: that
    # moves a share over a minute by a few percent, never by more than 0.05 (or 10%).
    share = by_label(
        query(f'instance_component:impact_unattributed_energy_per_measured:ratio_rate1m{{instance="{address}"}}'),
        "component",
    )
    assert share["cpu"] == pytest.approx(0.5, abs=0.05), "one run at a time holds half the busy CPU time"
    assert share["dram"] == pytest.approx(0.75, abs=0.05), "the run's process holds a quarter of the memory"
    assert 0 < share["gpu"] < 1

    run = by_label(query(f'run_component:impact_run_energy_joules:rate1m{{run_id="{active}"}}'), "component")
    assert run["dram"] / run["cpu"] == pytest.approx((0.25 * 6) / (0.5 * 40), rel=0.1)
    (run_total,) = query(f'run:impact_run_energy_joules:rate1m{{run_id="{active}"}}')
    assert float(run_total["value"][1]) == pytest.approx(sum(run.values()), rel=1e-9)

    candidates = {s["metric"]["run_id"] for s in query('impact_run_info{experiment="dashboards",set="candidate"}')}
    runs = by_label(query("run:impact_run_energy_joules:rate1m"), "run_id")
    (experiment,) = query('experiment_set:impact_run_energy_joules:rate1m{experiment="dashboards",set="candidate"}')
    assert active in candidates
    assert float(experiment["value"][1]) == pytest.approx(sum(runs[run_id] for run_id in candidates), rel=1e-9)


@pytest.mark.integration
def test_a_healthy_node_raises_no_health_alert(monitored: Monitored) -> None:
    wait_for(lambda: rules_api(monitored)["ImpactGpuMissing"].get("lastEvaluation"), 10, "alerts to be evaluated")
    alerts = monitored.prometheus.api("alerts")["alerts"]
    raised = [a["labels"]["alertname"] for a in alerts if a["labels"].get("instance") == monitored.node.address]
    assert set(raised) & HEALTH_ALERTS == set()
