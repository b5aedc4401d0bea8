"""Series identity: nodes named by instance and external labels, one replica per run and node, and the
exporter's own labels as the exporter really exports them."""

from __future__ import annotations

import math

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from impact_reporter.nodes import (
    GPU_INFO_LABELS,
    HOST_INFO_LABELS,
    RUN_SERIES_LABELS,
    SOURCE_INFO_LABELS,
    SeriesIdentity,
    node_name,
)
from impact_reporter.prometheus import Series
from tests.servers import REPO_ROOT

GOLDEN_FILES = [
    REPO_ROOT / "tests" / "exporter" / "testdata" / name for name in ("gpu.prom", "node_exporter_powercap.prom")
]


def series(values: list[float], **labels: str) -> Series:
    """A series of ``values`` one second apart, with the labels a store gives a run's cpu energy counter."""
    base = {"__name__": "impact_run_energy_joules_total", "run_id": "r", "user": "u", "component": "cpu"}
    return Series({**base, "instance": "n1:9100", "job": "impact", **labels}, np.arange(len(values)), np.array(values))


def test_the_exporters_own_labels_are_every_label_it_exports_on_the_series_the_reporter_reads() -> None:
    """Any other label on these series is one a Prometheus added, so it names the node, never the run."""
    own = {
        "impact_run_start_time_seconds": RUN_SERIES_LABELS,
        "impact_run_active": RUN_SERIES_LABELS,
        "impact_run_energy_joules_total": RUN_SERIES_LABELS,
        "impact_run_cpu_seconds_total": RUN_SERIES_LABELS,
        "impact_run_gpu_seconds_total": RUN_SERIES_LABELS,
        "impact_run_work_units_total": RUN_SERIES_LABELS,
        "impact_host_info": HOST_INFO_LABELS,
        "impact_gpu_info": GPU_INFO_LABELS,
        "impact_energy_source_info": SOURCE_INFO_LABELS,
    }
    seen: dict[str, set[str]] = {}
    for golden in GOLDEN_FILES:
        for family in text_string_to_metric_families(golden.read_text()):
            for sample in family.samples:
                if sample.name in own:
                    seen.setdefault(sample.name, {"__name__"}).update(sample.labels)
    assert set(seen) == set(own)
    for name, labels in seen.items():
        assert labels <= own[name], name


def test_a_node_is_its_instance_with_the_stores_labels_but_job_and_replica() -> None:
    identity = SeriesIdentity(["ha_member"])
    plain = identity.origin(series([1.0]).labels, RUN_SERIES_LABELS)
    assert plain.node == "n1:9100" and plain.replica == ("", "", "", "")
    labels = series([1.0], cluster="site-a", ha_member="b", zone='e"u\\1').labels
    origin = identity.origin(labels, RUN_SERIES_LABELS)
    assert origin.node == 'n1:9100{cluster="site-a",zone="e\\"u\\\\1"}'
    assert identity.replica_labels == ("__replica__", "ha_member", "prometheus_replica", "replica")
    assert origin.replica == ("", "b", "", "")
    assert dict(origin.added) == {"instance": "n1:9100", "job": "impact", "cluster": "site-a", "zone": 'e"u\\1'}
    assert node_name("n1:9100", {}) == "n1:9100"


def test_the_exporters_own_labels_name_no_node_a_hosts_region_and_a_runs_unit_of_work() -> None:
    """impact_host_info{region} (--carbon.region) and impact_run_work_units_total{unit} are the exporter's labels:
    read as a store's, they would make a host or a counter a node of its own, apart from its run's energy."""
    identity = SeriesIdentity()
    host = {"__name__": "impact_host_info", "instance": "n1:9100", "job": "impact", "hostname": "h", "region": "FR"}
    assert identity.origin(host, HOST_INFO_LABELS).node == "n1:9100"
    work = {**series([1.0]).labels, "__name__": "impact_run_work_units_total", "unit": "samples"}
    del work["component"]
    assert identity.origin(work, RUN_SERIES_LABELS).node == "n1:9100"


def test_one_replica_per_run_and_node_the_one_with_most_finite_samples_then_the_first_by_name() -> None:
    nan = math.nan
    kept = SeriesIdentity().one_replica(
        [
            series([1.0, 2.0, nan, nan], replica="a"),  # 2 finite samples
            series([1.0, 2.0, 3.0], replica="b"),  # 3: read
            series([5.0], replica="a", component="dram"),  # a's dram counts for a: 3 in all, a tie with b's 3
            series([1.0, 2.0], replica="b", instance="n2:9100"),
            series([1.0, 2.0], replica="a", instance="n2:9100"),  # a tie: a, the first by name
            series([1.0], replica="b", run_id="other"),  # another run: its own choice
        ],
        RUN_SERIES_LABELS,
    )
    chosen = sorted((node, s.labels["run_id"], s.labels["component"], s.labels["replica"]) for node, s in kept)
    assert chosen == [
        ("n1:9100", "other", "cpu", "b"),
        ("n1:9100", "r", "cpu", "a"),
        ("n1:9100", "r", "dram", "a"),
        ("n2:9100", "r", "cpu", "a"),
    ]
