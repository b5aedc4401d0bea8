"""The scrape limits of the shipped Prometheus configurations and the ServiceMonitor: each is set, and each admits
the largest /metrics an exporter with its default limits serves, so a legitimate scrape never fails whole while a
flood of series or labels beyond them does; a real Prometheus loads them."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from impact_exporter.collector import RUN_FAMILIES, run_info_labels
from impact_exporter.limits import DEFAULT_LIMITS, SERIES_PER_RUN
from impact_exporter.run import COMPONENT_DOMAINS, ProcessRef, Run
from tests.deploy.manifests import DEPLOY, KUBERNETES, load_documents, load_yaml
from tests.servers import free_port, require_binary, wait_for

NODE_SERIES_ALLOWANCE = 5000
"""Series of a node besides its runs: RAPL zones, sources, build and host, and per GPU its own and three per
process on it (eight GPUs with 64 processes each need 1,600)."""
UTF8_BYTES_PER_CHARACTER = 4  # Prometheus measures label values in bytes, the exporter in characters
STATIC_TARGET_LABELS = ("job", "instance")
OPERATOR_TARGET_LABELS = ("namespace", "service", "pod", "container", "endpoint", "job", "instance")


def widest_run() -> Run:
    """A finished run on a GPU node in a pod: every per-run series and every built-in label of impact_run_info."""
    return Run(
        run_id="r" * DEFAULT_LIMITS.run_id_length,
        experiment="e",
        set="s",
        labels={},
        uid=1000,
        user="alice",
        processes=(ProcessRef(1, 1),),
        start_time=1.0,
        end_time=2.0,
        energy_joules={component: 1.0 for component in COMPONENT_DOMAINS},
        placement={"pod_uid": "p", "container_id": "c"},
    )


def impact_scrape_config(name: str) -> dict[str, Any]:
    (job,) = [
        job for job in load_yaml(DEPLOY / "prometheus" / name)["scrape_configs"] if job["job_name"] == "impact-exporter"
    ]
    return job


def service_monitor_limits() -> dict[str, Any]:
    (monitor,) = [doc for doc in load_documents(KUBERNETES / "servicemonitor.yaml") if doc["kind"] == "ServiceMonitor"]
    spec = monitor["spec"]
    return {
        "sample_limit": spec["sampleLimit"],
        "label_limit": spec["labelLimit"],
        "label_name_length_limit": spec["labelNameLengthLimit"],
        "label_value_length_limit": spec["labelValueLengthLimit"],
    }


SHIPPED = {
    "prometheus.yml": (lambda: impact_scrape_config("prometheus.yml"), STATIC_TARGET_LABELS),
    "prometheus-compose.yml": (lambda: impact_scrape_config("prometheus-compose.yml"), STATIC_TARGET_LABELS),
    "servicemonitor.yaml": (service_monitor_limits, OPERATOR_TARGET_LABELS),
}


def test_series_per_run_is_what_the_collector_exposes_for_the_widest_run() -> None:
    assert sum(len(family.series(widest_run())) for family in RUN_FAMILIES) == SERIES_PER_RUN


@pytest.mark.parametrize("shipped", sorted(SHIPPED))
def test_the_scrape_limits_admit_an_exporter_at_its_default_limits(shipped: str) -> None:
    read, target_labels = SHIPPED[shipped]
    limits = read()
    built_in = run_info_labels(widest_run())
    assert limits["sample_limit"] >= SERIES_PER_RUN * DEFAULT_LIMITS.runs + NODE_SERIES_ALLOWANCE
    assert limits["label_limit"] >= DEFAULT_LIMITS.labels + len(built_in) + len(target_labels)
    assert limits["label_name_length_limit"] >= max(DEFAULT_LIMITS.label_name_length, *map(len, built_in))
    assert limits["label_value_length_limit"] >= UTF8_BYTES_PER_CHARACTER * DEFAULT_LIMITS.label_value_length
    assert limits["label_value_length_limit"] >= DEFAULT_LIMITS.run_id_length


def test_every_shipped_configuration_sets_the_same_limits() -> None:
    keys = ("sample_limit", "label_limit", "label_name_length_limit", "label_value_length_limit")
    values = {name: tuple(read()[key] for key in keys) for name, (read, _) in SHIPPED.items()}
    assert len(set(values.values())) == 1, values


@pytest.mark.integration
@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-compose.yml"])
def test_a_real_prometheus_loads_the_configuration_with_its_limits(config: str, tmp_path: Path) -> None:
    binary = require_binary("prometheus", "apt-get install prometheus")
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={DEPLOY / 'prometheus' / config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        loaded = wait_for(lambda: _loaded_config(process, port), 30, f"prometheus to load {config}")
    finally:
        process.terminate()
        process.wait(timeout=10)
    (job,) = [job for job in yaml.safe_load(loaded)["scrape_configs"] if job["job_name"] == "impact-exporter"]
    expected = impact_scrape_config(config)
    keys = ("sample_limit", "label_limit", "label_name_length_limit", "label_value_length_limit")
    assert {key: job[key] for key in keys} == {key: expected[key] for key in keys}


def _loaded_config(process: subprocess.Popen[bytes], port: int) -> str | None:
    if process.poll() is not None:
        pytest.fail(f"prometheus exited with {process.returncode}: {process.stderr.read().decode()[-2000:]}")
    try:
        response = requests.get(f"http://127.0.0.1:{port}/api/v1/status/config", timeout=1)
    except requests.ConnectionError:
        return None
    return response.json()["data"]["yaml"] if response.status_code == 200 else None
