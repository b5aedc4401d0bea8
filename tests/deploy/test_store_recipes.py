"""The federation and vmagent recipes of docs/deployment.md, read from the doc and run as written.

One run of a real exporter is scraped every second by the site Prometheus (the session's), which a global
Prometheus federates with the doc's recipe at the site's interval and another at 15 s; vmagent scrapes the same
exporter with the doc's configuration and command into the session VictoriaMetrics. Only addresses, paths and the
scrape interval (the tests scrape every second, the doc every 5 s) are the tests' own.
"""

from __future__ import annotations

import re
import shlex
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import yaml

from impact_exporter.limits import DEFAULT_LIMITS
from tests.deploy.manifests import DEPLOY, load_yaml
from tests.fakes.node import PID, Node
from tests.reporter.test_report_runs import report_json
from tests.servers import REPO_ROOT, ExporterProcess, PrometheusServer, VictoriaMetricsServer, VMAgent, wait_for

DEPLOYMENT_DOC = REPO_ROOT / "docs" / "deployment.md"
RECIPE = re.compile(r"<!-- recipe: (\S+) -->\s*```\w*\n(.*?)```", re.DOTALL)
SITE_SCRAPE = "1s"  # the session Prometheus's scrape interval: the tests' sites scrape every second
COARSE = 15.0  # a federation coarser than the site's scrapes, as issue 19 found labs running it
SITE_JOB = {"job": "impact-exporter"}  # the job the recipes' match[] and scrape configuration name
RUN_SECONDS = 4.0
RUN_LABELS = {f"label{index:02d}": f"value {index}" for index in range(DEFAULT_LIMITS.labels)}
"""As many labels as the exporter admits: with the exporter's own, more than VictoriaMetrics keeps by default."""


def recipes() -> dict[str, str]:
    """The doc's recipes by name: each fenced block after a ``<!-- recipe: NAME -->`` line, unindented."""
    return {name: textwrap.dedent(body) for name, body in RECIPE.findall(DEPLOYMENT_DOC.read_text())}


def shipped_scrape_interval() -> str:
    """The scrape interval of the Prometheus configuration the project ships for a site."""
    return load_yaml(DEPLOY / "prometheus" / "prometheus.yml")["global"]["scrape_interval"]


def federation_config(site: PrometheusServer, interval: str) -> str:
    """The doc's federation recipe federating ``site`` every ``interval``, everything else as written."""
    config = yaml.safe_load(recipes()["federation"])
    [job] = config["scrape_configs"]
    job["scrape_interval"] = interval
    job["static_configs"] = [{"targets": [site.url.removeprefix("http://")]}]
    return yaml.safe_dump(config)


def vmagent_scrape_config(target: str) -> str:
    """The doc's vmagent scrape configuration for ``target``, scraping at the site's interval."""
    config = yaml.safe_load(recipes()["vmagent-scrape"])
    config["global"]["scrape_interval"] = SITE_SCRAPE
    [job] = config["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    return yaml.safe_dump(config)


def vmagent_command() -> dict[str, str]:
    """The doc's vmagent command line as flag -> value."""
    words = shlex.split(recipes()["vmagent-command"].replace("\\\n", " "))
    assert words[0] == "vmagent"
    return dict(word.lstrip("-").split("=", 1) for word in words[1:])


VMAGENT_OWN = frozenset({"promscrape.config", "remoteWrite.tmpDataPath"})
"""The doc's flags that name files: VMAgent puts them in the test's directory."""


def vmagent_flags(write_url: str) -> list[str]:
    """The doc's vmagent flags writing to ``write_url``; the configuration file and buffer are VMAgent's own."""
    flags = vmagent_command() | {"remoteWrite.url": write_url}
    return [f"-{name}={value}" for name, value in flags.items() if name not in VMAGENT_OWN]


def test_the_recipes_scrape_at_the_interval_the_shipped_prometheus_scrapes_at() -> None:
    """Federating at the sites' interval is the recipe: the doc's must be the shipped site configuration's."""
    [job] = yaml.safe_load(recipes()["federation"])["scrape_configs"]
    assert job["scrape_interval"] == shipped_scrape_interval()
    assert job["honor_labels"] is True and job["params"]["match[]"] == ['{job="impact-exporter"}']
    vmagent = yaml.safe_load(recipes()["vmagent-scrape"])
    assert vmagent["global"]["scrape_interval"] == shipped_scrape_interval()
    [scrape] = vmagent["scrape_configs"]
    [shipped] = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"]
    assert scrape["job_name"] == shipped["job_name"] and scrape["sample_limit"] == shipped["sample_limit"]
    assert set(vmagent_command()) == {"promscrape.config", "remoteWrite.tmpDataPath", "remoteWrite.url"}


def test_victoria_metrics_keeps_as_many_labels_as_prometheus_admits_and_the_tests_run_it_so() -> None:
    [assignment] = shlex.split(recipes()["victoria-metrics-args"])
    flags = assignment.removeprefix("ARGS=").split()
    [limit] = [flag for flag in flags if flag.startswith("-maxLabelsPerTimeseries=")]
    [shipped] = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"]
    assert int(limit.split("=")[1]) == shipped["label_limit"]
    assert set(VictoriaMetricsServer.RECIPE_FLAGS) <= set(flags) - {"-storageDataPath=/var/lib/victoria-metrics"}


@dataclass(frozen=True)
class Stores:
    """One finished run and every store that holds it."""

    run_id: str
    final: dict[str, Any]  # the exporter's answer to stopping the run: its energy and times
    site: PrometheusServer
    federated: PrometheusServer
    coarse: PrometheusServer
    victoria_metrics: VictoriaMetricsServer


@pytest.fixture(scope="module")
def stores(
    prometheus: PrometheusServer, victoria_metrics: VictoriaMetricsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stores]:
    root = tmp_path_factory.mktemp("recipes")
    node = Node(root / "node1")
    exporter = ExporterProcess(root, node.flags())
    started: list[Any] = []
    try:
        prometheus.add_target(exporter.address, SITE_JOB)
        for name, interval in (("federated", SITE_SCRAPE), ("coarse", f"{COARSE:g}s")):
            (root / name).mkdir()
            started.append(PrometheusServer(root / name, config=federation_config(prometheus, interval)))
        site = prometheus.url.removeprefix("http://")
        wait_for(lambda: started[0].query(f'up{{instance="{site}"}} == 1'), 30, "the global Prometheus to federate")
        (root / "vmagent").mkdir()
        agent = VMAgent(
            root / "vmagent", vmagent_scrape_config(exporter.address), vmagent_flags(victoria_metrics.write_url)
        )
        started.append(agent)
        wait_for(lambda: agent.scraping(exporter.address), 30, "vmagent to scrape the exporter")
        run_id = f"recipe-{uuid.uuid4().hex[:8]}"
        node.client().start_run("recipes", set="a", pid=PID, run_id=run_id, labels=RUN_LABELS)
        node.drive(RUN_SECONDS)
        final = node.client().stop_run(run_id)
        yield Stores(run_id, final, prometheus, started[0], started[1], victoria_metrics)
    finally:
        for server in started:
            server.stop()
        prometheus.remove_target(exporter.address)
        exporter.stop()


def energy_samples(store: PrometheusServer | VictoriaMetricsServer, run_id: str) -> list[tuple[float, float]]:
    """The run's cpu energy samples as ``store`` holds them: (timestamp, joules), finite ones only."""
    found = store.query(f'impact_run_energy_joules_total{{run_id="{run_id}",component="cpu"}}[10m]')
    return [(float(t), float(v)) for series in found for t, v in series["values"] if np.isfinite(float(v))]


def holds_final(store: PrometheusServer | VictoriaMetricsServer, stores: Stores, samples: int = 1) -> bool:
    """Whether ``store`` holds the run's final cpu energy (VictoriaMetrics keeps 12 digits), and at least
    ``samples`` samples of it."""
    held = energy_samples(store, stores.run_id)
    final = stores.final["energy_joules"]["cpu"]
    return len(held) >= samples and any(
        t >= stores.final["end_time"] and v == pytest.approx(final, rel=1e-9) for t, v in held
    )


def reported(store: PrometheusServer | VictoriaMetricsServer, stores: Stores, *flags: str) -> dict[str, Any]:
    [run] = report_json(
        f"--prometheus={store.url}",
        "--since=10m",
        f'--match={{run_id="{stores.run_id}"}}',
        "--carbon-intensity=100",
        *flags,
    )["runs"]
    return run


@pytest.mark.integration
def test_a_federation_at_the_sites_interval_reports_what_the_site_does(stores: Stores) -> None:
    """The global Prometheus holds the site's samples of the run, and its report is the site's. A federation
    scrape that comes after the site's next scrape (a loaded machine) skips a sample: the global's samples are
    then a subset of the site's, and each one skipped is a gap of one interval in its coverage, nothing else."""
    wait_for(
        lambda: holds_final(stores.site, stores) and holds_final(stores.federated, stores), 30, "the final samples"
    )
    site_samples = dict(energy_samples(stores.site, stores.run_id))
    federated_samples = dict(energy_samples(stores.federated, stores.run_id))
    assert federated_samples.items() <= site_samples.items(), "federation copies samples, never makes them"
    site, federated = reported(stores.site, stores), reported(stores.federated, stores)
    assert site["energy_joules"] == pytest.approx(stores.final["energy_joules"], rel=1e-12)
    assert site["duration_seconds"] == pytest.approx(stores.final["end_time"] - stores.final["start_time"])
    assert site["sample_interval_seconds"] == pytest.approx(1.0, abs=0.05) and site["coverage"] > 0.9
    start, end = stores.final["start_time"], stores.final["end_time"]
    skipped = sum(1 for t in set(site_samples) - set(federated_samples) if start < t < end)
    same = {key: value for key, value in site.items() if key not in SAMPLE_SHAPE}
    assert {key: value for key, value in federated.items() if key not in SAMPLE_SHAPE} == same
    assert federated["energy_joules"] == pytest.approx(site["energy_joules"], rel=1e-12)
    if not skipped:
        assert {k: v for k, v in federated.items() if k != "source"} == {k: v for k, v in site.items() if k != "source"}
    else:
        interval = site["sample_interval_seconds"]
        assert federated["coverage"] >= site["coverage"] - skipped * interval / site["duration_seconds"] - 1e-9
        assert federated["largest_gap_seconds"] <= site["largest_gap_seconds"] + skipped * interval * 1.1
    for key in ("total_joules", "average_power_watts", "peak_power_watts"):
        assert federated[key] == pytest.approx(site[key], rel=1e-12 if not skipped else 0.2), key


SAMPLE_SHAPE = frozenset(
    {"source", "coverage", "largest_gap_seconds", "peak_power_watts", "energy_joules", "total_joules"}
    | {"total_kwh", "total_kwh_pue", "kg_co2eq", "average_power_watts", "cpu_hours"}
)
"""What depends on which samples a store holds: coverage and gaps, peak power, and sums over samples in their
last digit (the same counters summed over fewer steps)."""


@pytest.mark.integration
def test_a_federation_at_15_s_states_its_spacing_and_reads_poorly_covered_against_1_s(stores: Stores) -> None:
    """Each of the coarse copy's stretches of the run counts 1 s against an expected 1 s interval."""
    wait_for(lambda: holds_final(stores.coarse, stores, samples=2), 2 * COARSE + 10, "two samples of the 15 s copy")
    site, coarse = reported(stores.site, stores), reported(stores.coarse, stores)
    judged = reported(stores.coarse, stores, "--expected-interval=1s")
    assert coarse["total_joules"] == pytest.approx(site["total_joules"], rel=1e-12)  # summed over other samples
    assert coarse["duration_seconds"] == site["duration_seconds"]
    assert coarse["sample_interval_seconds"] == pytest.approx(COARSE, abs=0.1)
    assert (coarse["coverage"], judged["expected_interval_seconds"]) == (1.0, 1.0)
    start, end = stores.final["start_time"], stores.final["end_time"]
    inside = sorted(t for t, _ in energy_samples(stores.coarse, stores.run_id) if start < t < end)
    stretches = np.diff([start, *inside, end])
    assert judged["coverage"] == pytest.approx(np.minimum(stretches, 1.0).sum() / (end - start))
    assert judged["coverage"] <= 2.0 / RUN_SECONDS < site["coverage"]
    assert judged["largest_gap_seconds"] == coarse["largest_gap_seconds"]
    for key in ("total_joules", "peak_power_watts", "sample_interval_seconds"):
        assert judged[key] == coarse[key], key


@pytest.mark.integration
def test_vmagent_into_victoria_metrics_reports_what_prometheus_does(stores: Stores) -> None:
    """vmagent scrapes the exporter at other moments than Prometheus: energy and duration are the same, coverage
    and peak power as close as scrapes a fraction of a second apart make them."""
    wait_for(lambda: holds_final(stores.victoria_metrics, stores), 60, "VictoriaMetrics to hold the final samples")
    site, vm = reported(stores.site, stores), reported(stores.victoria_metrics, stores)
    assert vm["energy_joules"] == pytest.approx(site["energy_joules"], rel=1e-9)
    assert vm["energy_joules"] == pytest.approx(stores.final["energy_joules"], rel=1e-9)
    assert vm["total_joules"] == pytest.approx(site["total_joules"], rel=1e-9)
    for key in ("duration_seconds", "start_time", "end_time"):
        assert vm[key] == pytest.approx(site[key], abs=1e-3), key
    assert vm["sample_interval_seconds"] == pytest.approx(site["sample_interval_seconds"], abs=0.05)
    assert vm["coverage"] == pytest.approx(site["coverage"], abs=0.05)
    assert vm["peak_power_watts"] == pytest.approx(site["peak_power_watts"], rel=0.1)
    assert (vm["labels"], vm["hosts"], vm["measured"]) == (site["labels"], site["hosts"], site["measured"])
    assert vm["labels"] == RUN_LABELS
