"""The dashboards as files: they load, can be imported on their own or provisioned, and only name documented
metrics and defined variables. What their queries return is tested in test_queries.py."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from experiment_impact_tracker.grafana import TAG
from tests.grafana.model import (
    BUILTIN_VARIABLES,
    PROVISIONING,
    dashboard_files,
    label_values,
    load,
    panels,
    queries,
    used_variables,
)
from tests.servers import REPO_ROOT

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRAFANA = {"type": "grafana", "uid": "-- Grafana --"}
UID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
FILES = dashboard_files()
# Links and bookmarks point at uids: changing one breaks them (docs/grafana.md lists these).
UIDS = {
    "energy-overview.json": "impact-energy-overview",
    "experiment-runs.json": "impact-experiment-runs",
    "gpu-processes.json": "impact-gpu-processes",
}


@pytest.fixture(params=FILES, ids=[path.name for path in FILES])
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(request.param)


def test_the_three_dashboards_exist_with_unique_stable_uids_and_titles() -> None:
    boards = [load(path) for path in FILES]
    assert {path.name: board["uid"] for path, board in zip(FILES, boards, strict=True)} == UIDS
    assert all(UID.match(uid) for uid in UIDS.values()) and len(set(UIDS.values())) == len(UIDS)
    assert len({board["title"] for board in boards}) == len(boards)
    # id null: importing or provisioning creates the dashboard instead of overwriting whatever has that id
    assert all(board["id"] is None for board in boards)


def test_panel_ids_are_unique_and_panels_fit_the_grid(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {dashboard['uid']}: {sorted(ids)}"
    for panel in panels(dashboard):
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            ref_ids = [target["refId"] for target in panel["targets"]]
            assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
            assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]


def test_every_query_goes_through_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    """Importable on its own: the data source is picked in the dashboard, no uid of someone's Grafana is baked in."""
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"] == DATASOURCE, panel["title"]
            assert all(target["datasource"] == DATASOURCE for target in panel["targets"]), panel["title"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]
    for annotation in dashboard["annotations"]["list"]:
        assert annotation["datasource"] in (DATASOURCE, GRAFANA), annotation["name"]


def test_queries_use_only_defined_variables_and_variables_only_earlier_ones(dashboard: dict[str, Any]) -> None:
    defined: list[str] = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            selector, _ = label_values(variable)
            assert used_variables(selector) <= set(defined), f"{variable['name']} uses a later variable"
            assert variable["definition"] == variable["query"]["query"]
        defined.append(variable["name"])
    for query in queries(dashboard["uid"], dashboard):
        unknown = used_variables(query.expr) - set(defined) - BUILTIN_VARIABLES
        assert not unknown, f"{query} uses undefined {unknown}"
    for panel in panels(dashboard):
        if "repeat" in panel:
            assert panel["repeat"] in defined, panel["title"]


def test_every_metric_the_dashboards_read_is_documented() -> None:
    documented = set(re.findall(r"`(impact_\w+)`", (REPO_ROOT / "docs" / "metrics.md").read_text()))
    for path in FILES:
        for query in queries(path.name, load(path)):
            assert "__name__" not in query.expr, f"{query}: name metrics, so that this test can check them"
            names = set(re.findall(r"\b(impact_\w+)", query.expr))
            assert names <= documented, f"{query}: not in docs/metrics.md: {names - documented}"


def test_provisioning_points_grafana_at_prometheus_and_the_dashboards() -> None:
    datasource_file = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    dashboard_file = yaml.safe_load((PROVISIONING / "dashboards" / "impact.yml").read_text())
    assert datasource_file["apiVersion"] == dashboard_file["apiVersion"] == 1
    datasources = datasource_file["datasources"]
    assert len(datasources) == 1
    prometheus = datasources[0]
    assert (prometheus["uid"], prometheus["type"], prometheus["url"]) == (
        "prometheus",
        "prometheus",
        "http://prometheus:9090",
    )
    assert prometheus["isDefault"] is True
    for path in FILES:
        variable = next(v for v in load(path)["templating"]["list"] if v["name"] == "datasource")
        assert variable["current"]["value"] == prometheus["uid"], path.name
    scrape_interval = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())["global"][
        "scrape_interval"
    ]
    assert prometheus["jsonData"]["timeInterval"] == scrape_interval, "keep Grafana's scrape interval in step"

    providers = dashboard_file["providers"]
    assert [(p["type"], p["options"]["path"]) for p in providers] == [("file", "/var/lib/grafana/dashboards")]


def test_the_runs_dashboard_shows_the_annotations_experiments_push() -> None:
    runs = load(next(path for path in FILES if path.name == "experiment-runs.json"))
    pushed = [a for a in runs["annotations"]["list"] if a["datasource"] == GRAFANA and not a.get("builtIn")]
    assert [a["target"] for a in pushed] == [{"type": "tags", "tags": [TAG], "matchAny": False, "limit": 100}]
