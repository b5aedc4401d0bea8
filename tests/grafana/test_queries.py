"""Every query of every dashboard against the session Prometheus scraping the monitored node (tests/monitored.py:
RAPL package 40 W and DRAM, one GPU with processes 4242 "worker" and 5000 "other", a finished run and an
active run of experiment "dashboards", and a finished run named and labelled as a Slurm job), with the template
variables interpolated as Grafana does.

Checked: no query errors, every panel has data (and every query naming a metric the node exposes), the
variables list the node's values, and the figures a user reads off the panels match the runs' own figures
and the shares the fake node was set up with.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import Monitored
from tests.fakes.node import MEMORY_SHARE
from tests.grafana.model import (
    ALL,
    annotation_events,
    dashboard_files,
    interpolate,
    label_values,
    load,
    merged_rows,
    multi_value,
    panels,
    queries,
    render_legend,
)
from tests.monitored import OTHER_PID, TRAIN_PID

pytestmark = pytest.mark.integration

BOARDS = {path.name: load(path) for path in dashboard_files()}
RANGE_POINTS = 200


@dataclass(frozen=True)
class Scene:
    """The monitored node's runs and two windows to evaluate panels in."""

    monitored: Monitored
    instance: str
    finished: dict[str, Any]
    active: dict[str, Any]
    now: float  # "whole" window: [now - whole_range, now], covering both runs
    whole_range: str
    step: int  # of range queries over the whole window, as Grafana picks it for a panel ~RANGE_POINTS wide
    steady_at: float  # "steady" window: two scrapes while only the active run ran, before any other test
    steady_range: str

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        return self.monitored.prometheus.query(expr, at=at)


@pytest.fixture(scope="module")
def scene(monitored: Monitored) -> Scene:
    finished, active = monitored.runs["finished"], monitored.runs["active"]
    samples = monitored.prometheus.samples(
        f'impact_run_energy_joules_total{{run_id="{active["run_id"]}", component="cpu"}}'
    )
    # The fixture returned after three scrapes of the active run: the second and third came before any other test
    # could start runs, and the run was registered (with a fresh sample) before the second.
    (second, _), (third, _) = samples[1], samples[2]
    now = time.time()
    return Scene(
        monitored=monitored,
        instance=monitored.node.address,
        finished=finished,
        active=active,
        now=now,
        whole_range=f"{math.ceil(now - finished['start_time']) + 5}s",
        step=max(1, math.ceil((now - finished["start_time"]) / RANGE_POINTS)),
        steady_at=third,
        steady_range=f"{round((third - second) * 1000) + 200}ms",
    )


def variables(scene: Scene, selection: str, window: str) -> dict[str, str]:
    """Template variables as Grafana interpolates them: "specific" picks this node, the experiment and both runs
    (set stays All); "all" selects All everywhere. ``window`` is "whole" or "steady"."""
    builtins = {
        # $__rate_interval for a Prometheus scraping every second: max(step + scrape, 4 x scrape)
        "whole": {
            "__range": scene.whole_range,
            "__rate_interval": f"{max(scene.step + 1, 4)}s",
            "__interval": f"{scene.step}s",
        },
        "steady": {"__range": scene.steady_range, "__rate_interval": scene.steady_range, "__interval": "1s"},
    }[window]
    if selection == "all":
        chosen = dict.fromkeys(["instance", "experiment", "set", "run_id", "gpu"], ALL)
    else:
        chosen = {
            "instance": multi_value([scene.instance]),
            "experiment": multi_value(["dashboards"]),
            "set": ALL,
            "run_id": multi_value([scene.finished["run_id"], scene.active["run_id"]]),
            "gpu": multi_value(["0"]),
        }
    return {**chosen, **builtins}


def listed_values(scene: Scene, label: str, selector: str) -> list[str]:
    """What a label_values(selector, label) variable lists for the whole window (Grafana asks the label values
    API with match[] and the dashboard's range)."""
    return scene.monitored.prometheus.api(
        f"label/{label}/values", **{"match[]": selector, "start": scene.finished["start_time"] - 1, "end": scene.now}
    )


def panel(board: str, title: str) -> dict[str, Any]:
    return next(p for p in panels(BOARDS[board]) if p["title"] == title)


def results(scene: Scene, found: Mapping[str, Any], values: Mapping[str, str], at: float) -> dict[str, list]:
    """Each of a panel's queries evaluated at ``at``, by refId."""
    return {t["refId"]: scene.query(interpolate(t["expr"], values), at) for t in found["targets"]}


def by_legend(found: Mapping[str, Any], vectors: Mapping[str, list]) -> dict[str, float]:
    """A panel's instant results as a Grafana legend shows them: legend text -> value."""
    legends = {t["refId"]: t["legendFormat"] for t in found["targets"]}
    return {
        render_legend(legends[ref_id], series["metric"]): float(series["value"][1])
        for ref_id, vector in vectors.items()
        for series in vector
    }


@pytest.mark.parametrize("selection", ["specific", "all"])
@pytest.mark.parametrize("board", sorted(BOARDS))
def test_every_query_runs_and_every_panel_shows_data(scene: Scene, board: str, selection: str) -> None:
    prometheus = scene.monitored.prometheus
    exposed = set(prometheus.api("label/__name__/values"))
    empty_panels = {p["title"] for p in panels(BOARDS[board]) if p["type"] != "row"}
    problems = []
    for query in queries(board, BOARDS[board]):
        expr = interpolate(query.expr, variables(scene, selection, "whole"))
        try:
            if query.label:
                result = listed_values(scene, query.label, expr)
            elif query.instant:
                result = prometheus.query(expr, at=scene.now)
            else:
                result = prometheus.api(
                    "query_range", query=expr, start=scene.finished["start_time"] - 1, end=scene.now, step=scene.step
                )["result"]
        except AssertionError as error:
            problems.append(f"{query} fails: {error}\n  {expr}")
            continue
        if result and query.panel is not None:
            empty_panels.discard(query.panel["title"])
        names = set(re.findall(r"\b(impact_\w+)", query.expr))
        if not result and names & exposed:
            problems.append(f"{query} returns nothing though the node exposes {sorted(names & exposed)}\n  {expr}")
    problems += [f"panel {title!r} shows no data" for title in sorted(empty_panels)]
    assert not problems, "\n".join(problems)


def test_variables_list_the_node_its_experiment_sets_runs_and_gpu(scene: Scene) -> None:
    expected = {
        "instance": {scene.instance},
        "experiment": {"dashboards"},
        "set": {"baseline", "candidate"},
        "run_id": {scene.finished["run_id"], scene.active["run_id"]},
        "gpu": {"0"},
    }
    for board in BOARDS.values():
        for variable in board["templating"]["list"]:
            if variable["type"] != "query":
                continue
            selector, label = label_values(variable)
            selector = interpolate(selector, variables(scene, "specific", "whole"))
            found = listed_values(scene, label, selector)
            assert expected[variable["name"]] <= set(found), (board["uid"], variable["name"], found)


def test_the_runs_table_has_one_row_per_run_with_its_own_figures(scene: Scene) -> None:
    table = panel("experiment-runs.json", "Runs")
    rows = merged_rows(table, results(scene, table, variables(scene, "specific", "whole"), scene.now))
    assert sorted(row["run_id"] for row in rows.values()) == sorted(
        [scene.finished["run_id"], scene.active["run_id"]]
    ), "one row per run: every query has the same labels, so Grafana's merge joins them"
    by_run = {row["run_id"]: row for row in rows.values()}

    finished, row = scene.finished, by_run[scene.finished["run_id"]]
    assert (row["experiment"], row["set"], row["user"], row["instance"]) == (
        "dashboards",
        "baseline",
        finished["user"],
        scene.instance,
    )
    energy = finished["energy_joules"]
    columns = {key: value for key, value in row.items() if key.startswith("Value")}
    assert columns == pytest.approx(
        {
            "Value #A": finished["start_time"] * 1000,
            "Value #B": finished["end_time"] * 1000,
            "Value #C": finished["end_time"] - finished["start_time"],
            "Value #D": 0,
            "Value #E": sum(energy.values()),
            "Value #F": energy["cpu"],
            "Value #G": energy["dram"],
            "Value #H": energy["gpu"],
            "Value #I": finished["cpu_seconds"],
            "Value #J": finished["gpu_seconds"],
        },
        rel=1e-9,
    )

    active = by_run[scene.active["run_id"]]
    assert "Value #B" not in active, "an active run has no end"
    assert active["Value #D"] == 1
    assert active["Value #A"] == pytest.approx(scene.active["start_time"] * 1000, rel=1e-12)
    lag = scene.now - scene.active["start_time"] - active["Value #C"]
    assert 0 <= lag < 5, "an active run's duration runs up to the last scrape"
    assert active["Value #E"] == pytest.approx(active["Value #F"] + active["Value #G"] + active["Value #H"])


def test_run_annotations_mark_each_start_and_end_at_the_runs_own_times(scene: Scene) -> None:
    board = BOARDS["experiment-runs.json"]
    values = variables(scene, "specific", "whole")
    events = {}
    for annotation in board["annotations"]["list"]:
        if "expr" not in annotation:
            continue
        # As Grafana queries it for a dashboard whose range starts just before the runs; a point after the last
        # scrape still sees it (Prometheus' lookback), so this holds however long after the runs the test runs.
        step = int(annotation["step"].removesuffix("s"))
        start = scene.finished["start_time"] - 1
        matrix = scene.monitored.prometheus.api(
            "query_range",
            query=interpolate(annotation["expr"], values),
            start=start,
            end=start + 2 * step,
            step=step,
        )["result"]
        events[annotation["name"]] = sorted(annotation_events(annotation, matrix), key=lambda event: event["time"])

    def shown(name: str) -> list[tuple]:
        return [(e["time"], e["timeEnd"], e["title"], e["text"], set(e["tags"])) for e in events[name]]

    def expected(run: dict[str, Any], key: str, verb: str) -> tuple:
        at = math.floor(run[key] * 1000)
        tags = {"dashboards", run["set"], run["run_id"]}
        return at, at, f"dashboards {run['set']}: run {verb}", f"run {run['run_id']} on {scene.instance}", tags

    finished, active = scene.finished, scene.active
    assert shown("Run starts") == [expected(run, "start_time", "started") for run in (finished, active)]
    assert shown("Run ends") == [expected(finished, "end_time", "ended")]


def test_power_given_to_runs_and_unattributed_adds_up_to_each_component(scene: Scene) -> None:
    """In two scrapes while only the active run ran: runs + unattributed = the component's power; the run got a
    quarter of the DRAM power (its memory share), so DRAM's unattributed share is 0.75; the runs dashboard gives
    the run the power the overview says runs got. (The CPU share is not pinned: the fake procfs is written while
    the exporter reads it, so over one second the run's share of busy time wanders a few percent around 0.5.)"""
    values = variables(scene, "specific", "steady")
    power = panel("energy-overview.json", "Power per node and component")
    split = panel("energy-overview.json", "Power given to runs and unattributed")
    shares = panel("energy-overview.json", "Unattributed share per component")
    total = by_legend(power, results(scene, power, values, scene.steady_at))
    parts = by_legend(split, results(scene, split, values, scene.steady_at))
    share = by_legend(shares, results(scene, shares, values, scene.steady_at))
    node = scene.instance
    for component, legend in {"cpu": "package", "dram": "DRAM", "gpu": "GPU"}.items():
        runs, rest = parts[f"{node} {component} runs"], parts[f"{node} {component} unattributed"]
        assert runs > 0 and rest > 0
        assert runs + rest == pytest.approx(total[f"{node} {legend}"], rel=1e-9), component
        assert share[f"{node} {component}"] == pytest.approx(rest / total[f"{node} {legend}"], rel=1e-9)
    assert share[f"{node} dram"] == pytest.approx(1 - MEMORY_SHARE, rel=1e-9)

    per_run = panel("experiment-runs.json", "Power per run and component")
    run_cpu = {
        series["metric"]["run_id"]: float(series["value"][1])
        for series in results(scene, per_run, values, scene.steady_at)["A"]
        if series["metric"]["component"] == "cpu"
    }
    assert run_cpu == pytest.approx({scene.finished["run_id"]: 0, scene.active["run_id"]: parts[f"{node} cpu runs"]})


def test_stats_show_every_source_up_and_the_total_share_between_the_components(scene: Scene) -> None:
    values = variables(scene, "specific", "steady")
    up = panel("energy-overview.json", "Sources up")
    shown = by_legend(up, results(scene, up, values, scene.steady_at))
    node = scene.instance
    assert shown == {f"{node} scrape": 1, f"{node} procfs": 1, f"{node} rapl": 1, f"{node} nvml": 1, f"{node} GPU 0": 1}
    total_share = panel("energy-overview.json", "Unattributed share")
    shares = panel("energy-overview.json", "Unattributed share per component")
    overall = float(results(scene, total_share, values, scene.steady_at)["A"][0]["value"][1])
    per_component = by_legend(shares, results(scene, shares, values, scene.steady_at)).values()
    assert min(per_component) < overall < max(per_component)


def test_mean_energy_per_finished_run_by_set_is_the_finished_runs_energy(scene: Scene) -> None:
    means = panel("experiment-runs.json", "Mean energy per finished run, by set")
    shown = by_legend(means, results(scene, means, variables(scene, "specific", "whole"), scene.now))
    assert shown == pytest.approx({"dashboards baseline": sum(scene.finished["energy_joules"].values())}, rel=1e-9)


def test_gpu_panels_show_each_process_with_its_sm_share(scene: Scene) -> None:
    values = variables(scene, "specific", "whole")
    sm = panel("gpu-processes.json", "SM utilisation per process")
    shown = by_legend(sm, results(scene, sm, values, scene.now))
    node = scene.instance
    assert shown == {f"{node} {TRAIN_PID} worker": 0.6, f"{node} {OTHER_PID} other": 0.2, f"{node} GPU 0": 0.8}

    # Per-process power comes from the GPU counter's last interval: read it in the steady window, before other tests
    # could starve the thread that drives the fake GPU (an interval in which it did not move shows 0 W).
    table = panel("gpu-processes.json", "Processes now")
    rows = merged_rows(table, results(scene, table, values, scene.steady_at))
    assert sorted(row["pid"] for row in rows.values()) == sorted([str(TRAIN_PID), str(OTHER_PID)]), "one row each"
    by_pid = {row["pid"]: row for row in rows.values()}
    train, other = by_pid[str(TRAIN_PID)], by_pid[str(OTHER_PID)]
    assert (train["comm"], train["Value #B"], other["comm"], other["Value #B"]) == ("worker", 0.6, "other", 0.2)
    assert train["Value #A"] > other["Value #A"] > 0, "the process with the larger SM share draws more power"
    assert train["Value #C"] == 4 * other["Value #C"], "8 GiB and 2 GiB"


def test_energy_of_slurm_jobs_per_account_and_user_is_the_jobs_own(scene: Scene) -> None:
    """The panel finds the runs the Slurm prolog names (slurm-*), by the account label it gives them, and shows each
    account and user the energy of their jobs, all components, over the nodes; other runs are not jobs."""
    job = scene.monitored.runs["slurm"]
    assert job["labels"]["account"] == "physics" and sum(job["energy_joules"].values()) > 0
    found = panel("experiment-runs.json", "Energy of Slurm jobs, per account and user")
    for selection in ("specific", "all"):
        shown = by_legend(found, results(scene, found, variables(scene, selection, "whole"), scene.now))
        assert shown == pytest.approx({f"physics {job['user']}": sum(job["energy_joules"].values())}, rel=1e-9)
