"""The fast /metrics encoder (exporter/exposition.py) against prometheus_client's own encoders and parsers."""

from __future__ import annotations

import math
import random
import struct
from dataclasses import replace

import pytest
from prometheus_client import Counter, Enum, Histogram, Info
from prometheus_client.exposition import generate_latest as text_encoder
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_encoder
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

from impact_exporter.collector import ImpactCollector, RunLabelCache
from impact_exporter.exposition import encode, go_float, negotiate
from impact_exporter.host import HostInfo
from impact_exporter.run import ProcessRef, Run
from impact_exporter.sampler import Snapshot, SourceStatus
from impact_exporter.sources.gpu import GpuInfo, GpuProcess, GpuReading

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
HOST = HostInfo(hostname='node "1"', cpu_model="Xeon\\Gold", cpu_vendor="GenuineIntel", cpu_count=2, kernel="6.1")
TRICKY = 'quote " backslash \\ newline \n unicode é 日本 🚀 end\\'


def run(run_id: str, **overrides: object) -> Run:
    fields: dict[str, object] = {
        "experiment": "mobilenet",
        "set": "conv32",
        "labels": {},
        "uid": 1000,
        "user": "alice",
        "processes": (ProcessRef(4242, 1),),
        "start_time": 1700000000.5,
        "energy_joules": {"cpu": 812.5, "dram": 40.25},
        "cpu_seconds": 120.5,
    }
    fields.update(overrides)
    return Run(run_id=run_id, **fields)  # type: ignore[arg-type]


RUNS = [
    run("tricky", labels={"note": TRICKY, "seed": "0"}, experiment='exp "q"', set="a\\b", user="zoë"),
    run("finished", end_time=1700000600.0, energy_joules={"cpu": 1.5e7, "dram": 0.0}, cpu_seconds=0.0),
    run(
        "gpu-run",
        energy_joules={"cpu": 10.0, "dram": 1.0, "gpu": 3600.25},
        gpu_seconds=12.5,
        placement={"pod_uid": "0f0e", "container_id": "c0ffee"},
    ),
    run("huge", energy_joules={"cpu": math.inf, "dram": 123456789.123}, cpu_seconds=1e-7),
    run("50%r-%s", cpu_seconds=1234567.891, energy_joules={"cpu": 2.5e6, "dram": 1.0}),
]
RUN_COUNTERS = ("impact_run_energy_joules_total", "impact_run_cpu_seconds_total", "impact_run_gpu_seconds_total")


def snapshot() -> Snapshot:
    """Two GPUs, one down, with processes whose names need escaping."""
    processes = (GpuProcess(4242, 2**30, 0.45), GpuProcess(4343, None, None))
    return Snapshot(
        timestamp=1700000300.0,
        samples_total=42,
        sample_duration_seconds=0.0025,
        sources={"procfs": SourceStatus(True, 0), "nvml": SourceStatus(False, 3)},
        gpu_info=(
            GpuInfo(0, "GPU-0", 'Fake "A100"', "550.54", "12.4", 80 * 2**30, False, True),
            GpuInfo(1, "GPU-1", "Fake", None, None, None, True, False),
        ),
        gpus=(
            GpuReading(0, "GPU-0", True, "counter", 81234.5, 1.0, 1.0, 212.0, 0.9, 2**34, processes, False),
            GpuReading(1, "GPU-1", False, "power", None, 0.0, 0.0, None, None, None, (), True),
        ),
        gpu_energy_method="nvml-power",
        gpu_process_watts={(0, 4242): 190.5},
        process_names={4242: 'py"th\\on\n', 4343: "日本"},
        unattributed_joules={"gpu": 7.0},
    )


def registry_with(runs: list[Run]) -> CollectorRegistry:
    """The exporter's collector beside prometheus_client's own metric types, which take the fallback path."""
    registry = CollectorRegistry()
    registry.register(ImpactCollector(lambda: snapshot(), HOST, "1.2.3", runs=lambda: runs))
    Counter("client_requests", "Requests with a _created sample.", ["path"], registry=registry).labels("/a").inc(2)
    Histogram("client_latency_seconds", "A histogram.", registry=registry).observe(0.3)
    Info("client_build", "An info.", registry=registry).info({"version": TRICKY})
    Enum("client_state", "A state set.", states=["up", "down"], registry=registry).state("down")
    return registry


def samples(families: object) -> list[tuple[str, str, dict[str, str], float]]:
    """(family, sample name, labels, value) of every parsed sample, with NaN made comparable."""
    return [
        (family.name, sample.name, sample.labels, "NaN" if math.isnan(sample.value) else sample.value)
        for family in families
        for sample in family.samples
    ]


def assert_prometheus_clients_lines(fast: bytes, reference: bytes) -> None:
    """``fast`` is ``reference`` line for line, except for run counters that ``reference`` writes with a Go-style
    exponent (1.234567891e+06), which ``fast`` writes as repr() does (1234567.891): the same float."""
    pairs = zip(fast.decode().splitlines(), reference.decode().splitlines(), strict=True)
    differing = [(ours, theirs) for ours, theirs in pairs if ours != theirs]
    for ours, theirs in differing:
        series, _, value = ours.rpartition(" ")
        their_series, _, their_value = theirs.rpartition(" ")
        assert series.startswith(RUN_COUNTERS) and series == their_series, (ours, theirs)
        assert value == repr(float(their_value)) and "e" in their_value, (ours, theirs)


def test_text_format_is_what_prometheus_client_writes() -> None:
    registry = registry_with(RUNS)
    fast = encode(registry, openmetrics=False)
    reference = text_encoder(registry)
    assert_prometheus_clients_lines(fast, reference)
    assert fast != reference  # the fixture has run counters of a million and more: the case that differs
    assert samples(parse_text(fast.decode())) == samples(parse_text(reference.decode()))


def test_openmetrics_is_what_prometheus_client_writes() -> None:
    registry = registry_with(RUNS)
    fast = encode(registry, openmetrics=True)
    reference = openmetrics_encoder(registry)
    assert_prometheus_clients_lines(fast, reference)
    assert samples(parse_openmetrics(fast.decode())) == samples(parse_openmetrics(reference.decode()))


@pytest.mark.parametrize("openmetrics, parse", [(False, parse_text), (True, parse_openmetrics)])
def test_run_figures_and_labels_read_back(openmetrics: bool, parse: object) -> None:
    families = {family.name: family for family in parse(encode(registry_with(RUNS), openmetrics).decode())}
    info = {sample.labels["run_id"]: sample.labels for sample in families["impact_run_info"].samples}
    assert info["tricky"] == {
        "run_id": "tricky",
        "experiment": 'exp "q"',
        "set": "a\\b",
        "user": "zoë",
        "note": TRICKY,
        "seed": "0",
    }
    assert info["gpu-run"]["pod_uid"] == "0f0e" and info["gpu-run"]["container_id"] == "c0ffee"
    energy = {
        (sample.labels["run_id"], sample.labels["component"]): sample.value
        for sample in families["impact_run_energy_joules"].samples
    }
    assert energy[("finished", "cpu")] == 1.5e7
    assert energy[("huge", "cpu")] == math.inf
    assert energy[("huge", "dram")] == 123456789.123
    assert energy[("gpu-run", "gpu")] == 3600.25
    ends = {s.labels["run_id"]: s.value for s in families["impact_run_end_time_seconds"].samples}
    assert ends == {"finished": 1700000600.0}
    gpu_seconds = {s.labels["run_id"]: s.value for s in families["impact_run_gpu_seconds"].samples}
    assert gpu_seconds == {"gpu-run": 12.5}
    cpu_seconds = {s.labels["run_id"]: s.value for s in families["impact_run_cpu_seconds"].samples}
    assert cpu_seconds["50%r-%s"] == 1234567.891 and energy[("50%r-%s", "cpu")] == 2.5e6
    process_power = families["impact_gpu_process_power_watts"].samples
    assert [(s.labels["comm"], s.value) for s in process_power] == [('py"th\\on\n', 190.5)]


@pytest.mark.parametrize("openmetrics", [False, True])
def test_no_gpu_time_family_without_gpu_runs(openmetrics: bool) -> None:
    body = encode(registry_with(RUNS[:2]), openmetrics).decode()
    assert "impact_run_gpu_seconds" not in body
    assert body.count("impact_run_info{") == 2


def test_a_run_whose_labels_change_is_written_with_its_new_labels() -> None:
    runs = [run("r1", labels={"seed": "0"})]
    registry = registry_with(runs)
    assert 'seed="0"' in encode(registry, openmetrics=False).decode()
    runs[0] = run("r1", labels={"seed": "1"})
    body = encode(registry, openmetrics=False).decode()
    assert 'seed="1"' in body and 'seed="0"' not in body
    assert body == text_encoder(registry).decode()


def test_a_scrape_after_a_sample_shows_the_new_figures() -> None:
    runs = [run("r1", cpu_seconds=1.0), run("r2", cpu_seconds=2.0)]
    registry = registry_with(runs)
    assert 'impact_run_cpu_seconds_total{run_id="r1",user="alice"} 1.0\n' in encode(registry, openmetrics=True).decode()
    runs[0] = replace(runs[0], cpu_seconds=3.5, energy_joules={"cpu": 900.0, "dram": 41.0})
    body = encode(registry, openmetrics=True).decode()
    assert 'impact_run_cpu_seconds_total{run_id="r1",user="alice"} 3.5\n' in body
    assert 'impact_run_energy_joules_total{component="cpu",run_id="r1",user="alice"} 900.0\n' in body
    assert 'impact_run_cpu_seconds_total{run_id="r2",user="alice"} 2.0\n' in body
    runs[1] = replace(runs[1], end_time=1700000900.0)
    body = encode(registry, openmetrics=True).decode()
    assert 'impact_run_active{run_id="r2",user="alice"} 0.0\n' in body
    assert 'impact_run_end_time_seconds{run_id="r2",user="alice"} 1.7000009e+09\n' in body
    runs.pop()
    body = encode(registry, openmetrics=True).decode()
    assert 'run_id="r2"' not in body and body == openmetrics_encoder(registry).decode()


def test_the_label_cache_drops_runs_that_left() -> None:
    cache = RunLabelCache()
    runs = [run(f"r{number}") for number in range(5)]
    cache.texts(runs)
    assert len(cache) == 5
    kept = cache.texts(runs[3:])
    assert len(cache) == 2
    assert [text.run_id for text in kept] == ['{run_id="r3",user="alice"}', '{run_id="r4",user="alice"}']


@pytest.mark.parametrize(
    "accept, openmetrics",
    [
        (PROMETHEUS_ACCEPT, True),
        ("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8", True),
        ("text/plain;version=0.0.4", False),
        ("", False),
    ],
)
def test_negotiation_keeps_prometheus_clients_content_type(accept: str, openmetrics: bool) -> None:
    registry = registry_with(RUNS)
    encoder, content_type = negotiate(accept)
    assert content_type.startswith("application/openmetrics-text" if openmetrics else "text/plain")
    reference = openmetrics_encoder(registry) if openmetrics else text_encoder(registry)
    assert_prometheus_clients_lines(encoder(registry), reference)


def test_a_name_rewriting_escaping_goes_to_prometheus_client() -> None:
    registry = registry_with(RUNS)
    encoder, content_type = negotiate("application/openmetrics-text;version=1.0.0;escaping=dots")
    assert content_type.endswith("escaping=dots")
    assert b"impact__run__info" in encoder(registry)  # dots escaping doubles underscores; encode() never does


def test_go_float_writes_what_prometheus_client_writes() -> None:
    rng = random.Random(10)
    values = [
        0.0,
        -0.0,
        1.0,
        5,
        2**53,
        999999.9,
        1e6,
        1e7,
        1234567.0,
        1.7e9,
        1e16,
        1e22,
        1e-7,
        -1e9,
        0.1,
        math.inf,
        -math.inf,
        math.nan,
    ]
    values += [rng.uniform(-1e12, 1e12) for _ in range(2000)]
    values += [10 ** rng.uniform(-10, 25) for _ in range(2000)]
    values += [struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0] for _ in range(2000)]
    assert [go_float(value) for value in values] == [floatToGoString(value) for value in values]
