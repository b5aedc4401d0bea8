"""Turns the sampler's latest snapshot into Prometheus metric families at scrape time.

A custom collector in the ``prometheus_client`` sense: it keeps no metric state of its own and builds fresh
families from the snapshot on every scrape, so a scrape never reads hardware. Every metric is documented in
docs/metrics.md.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from math import isfinite

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric, Sample
from prometheus_client.registry import Collector

from impact_exporter.exposition import PrerenderedFamily, go_float, label_text
from impact_exporter.host import HostInfo
from impact_exporter.run import COMPONENT_DOMAINS, Run, RunKey
from impact_exporter.sampler import Snapshot

RAPL_DOMAIN_HELP = {
    "package": "Energy of the whole CPU package (socket): cores, caches, uncore, integrated graphics.",
    "dram": "Energy of the DRAM attached to the package.",
    "core": "Energy of the CPU cores alone; part of the package energy, never add the two.",
    "uncore": "Energy of the uncore (integrated graphics on client CPUs); part of the package energy.",
    "psys": "Energy of the whole platform (SoC and more) as the firmware reports it.",
}


class ImpactCollector(Collector):
    """Exports the latest snapshot.

    Sample lines::

        impact_rapl_package_joules_total{package="0"} 240422.366267
        impact_run_energy_joules_total{component="cpu",run_id="4f0c...",user="alice"} 812.5
        impact_source_up{source="rapl"} 1.0
    """

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        host: HostInfo,
        version: str,
        runs: Callable[[], list[Run]] = list,
    ) -> None:
        self._snapshot = snapshot
        self._host = host
        self._version = version
        self._runs = runs
        self._run_labels = RunLabelCache()
        self._last_run_scrape = RunScrape([], self._run_labels)

    def collect(self) -> Iterator[Metric]:
        snapshot = self._snapshot()
        yield from energy_families(snapshot)
        yield from gpu_families(snapshot)
        yield from self._run_scrape().families()
        yield unattributed_family(snapshot)
        yield energy_source_family(snapshot)
        yield from source_families(snapshot)
        yield from exporter_families(snapshot)
        yield from info_families(self._host, self._version)

    def _run_scrape(self) -> RunScrape:
        """The per-run families of the current runs: the last scrape's when the runs have not changed since."""
        runs = self._runs()
        if not self._last_run_scrape.covers(runs):
            self._last_run_scrape = RunScrape(runs, self._run_labels)
        return self._last_run_scrape


METHOD_PREFIX = {"rapl": "impact_rapl", "estimate": "impact_estimated"}


def energy_families(snapshot: Snapshot) -> Iterator[Metric]:
    """One counter per energy domain, labelled by package: domains overlap, so they must not share a name.

    Measured energy is ``impact_rapl_<domain>_joules_total``; an estimate has its own names,
    ``impact_estimated_<domain>_joules_total``, so nobody mistakes it for a measurement. Each reading's method
    picks the name, and its ``measured`` flag the help text.
    """
    families: dict[tuple[str, str], CounterMetricFamily] = {}
    for reading in snapshot.energy_domains:
        prefix = METHOD_PREFIX[reading.method]
        key = (prefix, reading.domain)
        if key not in families:
            help_text = RAPL_DOMAIN_HELP[reading.domain]
            if not reading.measured:
                help_text = f"Estimated, not measured (docs/attribution.md). {help_text}"
            families[key] = CounterMetricFamily(
                f"{prefix}_{reading.domain}_joules", help_text, labels=["package"], unit="joules"
            )
        families[key].add_metric([reading.package], reading.joules_total)
    yield from families.values()


INFO = "info"
"""The series key of ``impact_run_info``: its labels are the run's own (run_info_labels)."""
RUN_ID = None
"""The series key of a series labelled by the run's identity alone (``run_id`` and ``user``: run ids are scoped
by user, see RunKey). A WorkUnit key is a unit of work; any other key is an energy component."""


class WorkUnit(str):
    """The series key of a run's count of one unit of work (labelled ``unit``), told apart from a component."""


SeriesKey = str | None


@dataclass(frozen=True)
class RunFamily:
    """A per-run metric family: both the fast text path (RunLayout) and prometheus_client's samples
    (RunScrape.samples) are made from this declaration, so a new per-run metric is one more entry in RUN_FAMILIES.

    ``series`` gives a run's series in the family as (key, value) pairs. A ``per_sample`` family's values change
    at every sample and are written by one ``%`` format per scrape; the lines of the others change only when a run
    starts, ends or is relabelled (its label text, end time, energy components or units of work: RunLayout.fits). A
    ``per_sample`` family also gives ``values``: every run's values at once, in the order of ``series`` (what each
    scrape of a new sample computes for 1,000s of runs, without a call per run; tests/exporter/test_collector.py
    checks that it agrees with ``series``).
    """

    name: str
    documentation: str
    type: str
    unit: str
    series: Callable[[Run], Sequence[tuple[SeriesKey, float]]]
    per_sample: bool = False
    gpu_only: bool = False  # exposed only when some run has GPU series
    values: Callable[[Sequence[Run]], list[float]] | None = None  # per_sample families only

    @property
    def sample_name(self) -> str:
        return self.name + "_total" if self.type == "counter" else self.name


def exposes_gpu(run: Run) -> bool:
    """Whether the run has GPU series: only runs on a node with GPUs get GPU energy and GPU time."""
    return "gpu" in run.energy_joules


RUN_FAMILIES = (  # in the order they are exposed
    RunFamily(
        "impact_run_info",
        "Labels of a run; join on run_id and user. Always 1.",
        "gauge",
        "",
        lambda run: ((INFO, 1.0),),
    ),
    RunFamily(
        "impact_run_start_time_seconds",
        "Unix time the run started.",
        "gauge",
        "seconds",
        lambda run: ((RUN_ID, run.start_time),),
    ),
    RunFamily(
        "impact_run_end_time_seconds",
        "Unix time the run ended (finished runs only).",
        "gauge",
        "seconds",
        lambda run: () if run.end_time is None else ((RUN_ID, run.end_time),),
    ),
    RunFamily(
        "impact_run_active",
        "1 while the run is active, 0 once it ended.",
        "gauge",
        "",
        lambda run: ((RUN_ID, 1.0 if run.active else 0.0),),
    ),
    RunFamily(
        "impact_run_energy_joules",
        "Energy attributed to the run per component: cpu is its share of package energy, dram of DRAM energy.",
        "counter",
        "joules",
        lambda run: tuple(run.energy_joules.items()),
        per_sample=True,
        values=lambda runs: [joules for run in runs for joules in run.energy_joules.values()],
    ),
    RunFamily(
        "impact_run_cpu_seconds",
        "CPU time of the run's processes and their reaped children.",
        "counter",
        "seconds",
        lambda run: ((RUN_ID, run.cpu_seconds),),
        per_sample=True,
        values=lambda runs: [run.cpu_seconds for run in runs],
    ),
    RunFamily(
        "impact_run_gpu_seconds",
        "GPU time of the run: seconds x its processes' share of SM utilisation, on the GPUs it used.",
        "counter",
        "seconds",
        lambda run: ((RUN_ID, run.gpu_seconds),) if exposes_gpu(run) else (),
        per_sample=True,
        gpu_only=True,
        values=lambda runs: [run.gpu_seconds for run in runs if "gpu" in run.energy_joules],  # exposes_gpu, inlined
    ),
    RunFamily(
        "impact_run_work_units",
        "Units of work the run reported (POST /api/v1/runs/<id>/work), per unit: samples, steps or tokens.",
        "counter",
        "",
        lambda run: tuple((WorkUnit(unit), float(count)) for unit, count in run.work_units.items()),
        per_sample=True,
        values=lambda runs: [float(count) for run in runs for count in run.work_units.values()],
    ),
)
"""The per-run families. Their series are keyed by ``run_id`` and ``user`` (run_identity); descriptive labels
live only on ``impact_run_info``."""


def run_identity(run: Run) -> dict[str, str]:
    """The labels that tell a run's series from any other run's: two users may each hold a run id."""
    return {"run_id": run.run_id, "user": run.user}


def run_info_labels(run: Run) -> dict[str, str]:
    """The labels of a run's ``impact_run_info`` series: its own labels, its placement and its identity."""
    return {
        **run.labels,
        **run.placement,
        "run_id": run.run_id,
        "experiment": run.experiment,
        "set": run.set,
        "user": run.user,
    }


@dataclass(frozen=True)
class RunLabelText:
    """A run's label sets, escaped and formatted once: they do not change while the run is exposed, and
    formatting them at every scrape is most of the cost of many runs."""

    source: tuple[object, ...]  # what the text was made from (run_label_source); made again if it differs
    info: str  # '{experiment="...",run_id="...",set="...",user="..."}'
    run_id: str  # '{run_id="...",user="..."}'
    components: Mapping[str, str]  # component -> '{component="cpu",run_id="...",user="..."}'

    @classmethod
    def of(cls, run: Run) -> RunLabelText:
        """The escaped and formatted label sets of ``run``."""
        identity = run_identity(run)
        return cls(
            source=run_label_source(run),
            info=label_text(run_info_labels(run)),
            run_id=label_text(identity),
            components={component: label_text({"component": component, **identity}) for component in COMPONENT_DOMAINS},
        )

    def label(self, key: SeriesKey, run: Run) -> str:
        """The label set of the series ``key`` of a family (see RunFamily)."""
        if key is RUN_ID:
            return self.run_id
        if isinstance(key, WorkUnit):
            return label_text(sample_labels(run, key))
        if key == INFO:
            return self.info
        return self.component(key, run)

    def component(self, component: str, run: Run) -> str:
        """The label set of one component's energy series."""
        text = self.components.get(component)
        return text if text is not None else label_text({"component": component, **run_identity(run)})


def run_label_source(run: Run) -> tuple[object, ...]:
    """Everything a run's label text depends on; cheap to compare, as a run keeps the same label mappings."""
    return (run.run_id, run.experiment, run.set, run.user, run.labels, run.placement, run.start_time)


class RunLabelCache:
    """Formatted label sets of the runs of the last scrape, by RunKey (runs no longer exposed are dropped), and the
    layout of their lines."""

    def __init__(self) -> None:
        self._texts: dict[RunKey, RunLabelText] = {}
        self._layout: RunLayout | None = None

    def __len__(self) -> int:
        """How many runs' label text is kept."""
        return len(self._texts)

    def texts(self, runs: list[Run]) -> list[RunLabelText]:
        """Each run's label text, in the order of ``runs``."""
        texts = self._texts
        result = []
        for run in runs:
            text = texts.get(run.key)
            if text is None or text.source != run_label_source(run):
                text = texts[run.key] = RunLabelText.of(run)
            result.append(text)
        if len(texts) > len(runs):
            self._texts = {run.key: texts[run.key] for run in runs}
        return result

    def layout(self, runs: Sequence[Run], texts: list[RunLabelText]) -> RunLayout:
        """The layout of ``runs``: the previous scrape's when nothing but their figures changed since."""
        ends = [run.end_time for run in runs]
        components = [(*run.energy_joules, *map(WorkUnit, run.work_units)) for run in runs]
        last = self._layout
        if last is None or not last.fits(texts, ends, components):
            last = self._layout = RunLayout.of(runs, texts, ends, components)
        return last


@dataclass(frozen=True)
class RunLayout:
    """The per-run lines but for the per-sample values: the other families' lines whole, and for each per-sample
    family a format string with a ``%r`` where each value goes, so a scrape with the same runs writes each
    family's values in one ``%`` operation.

    Values are written as ``repr`` writes them, without prometheus_client's Go-style exponents (1500000.0 rather
    than 1.5e+06): any parser reads the same float, faster. Non-finite values keep prometheus_client's spelling
    (+Inf, NaN).
    """

    texts: list[RunLabelText]
    ends: list[float | None]
    components: list[tuple[str, ...]]  # each run's energy components, then its units of work, in their order
    fixed: Mapping[str, str]  # family that is not per_sample -> its lines
    series: Mapping[str, list[str]]  # per_sample family -> 'name{labels} ' of each line
    formats: Mapping[str, str]  # per_sample family -> its lines with %r for the values

    @classmethod
    def of(
        cls,
        runs: Sequence[Run],
        texts: list[RunLabelText],
        ends: list[float | None],
        components: list[tuple[str, ...]],
    ) -> RunLayout:
        fixed: dict[str, str] = {}
        series: dict[str, list[str]] = {}
        for family in RUN_FAMILIES:
            name = family.sample_name
            if family.per_sample:
                series[family.name] = [
                    f"{name}{text.label(key, run)} "
                    for run, text in zip(runs, texts, strict=True)
                    for key, _ in family.series(run)
                ]
            else:
                fixed[family.name] = "".join(
                    f"{name}{text.label(key, run)} {go_float(value)}\n"
                    for run, text in zip(runs, texts, strict=True)
                    for key, value in family.series(run)
                )
        formats = {name: "".join(f"{line.replace('%', '%%')}%r\n" for line in lines) for name, lines in series.items()}
        return cls(texts, ends, components, fixed, series, formats)

    def fits(self, texts: list[RunLabelText], ends: list[float | None], components: list[tuple[str, ...]]) -> bool:
        """Whether this is the layout of runs with these very label texts, end times and components."""
        return (
            len(texts) == len(self.texts)
            and all(map(operator.is_, texts, self.texts))
            and ends == self.ends
            and components == self.components
        )

    def lines(self, family: str, values: list[float]) -> str:
        """The lines of a per-sample family with these values, one per line in order."""
        if all(map(isfinite, values)):
            return self.formats[family] % tuple(values)
        series = self.series[family]
        return "".join(f"{text}{go_float(value)}\n" for text, value in zip(series, values, strict=True))


class RunScrape:
    """The per-run families of one scrape, made on demand: as exposition lines from the cached label text (the
    /metrics path, exporter/exposition.py), or as prometheus_client samples for any other encoder."""

    def __init__(self, runs: list[Run], cache: RunLabelCache) -> None:
        self._runs = tuple(runs)
        self._cache = cache
        self._lines: dict[str, str] | None = None
        self._samples: dict[str, list[Sample]] | None = None

    def covers(self, runs: list[Run]) -> bool:
        """Whether ``runs`` are the very runs this scrape was made of. Runs are immutable and the registry replaces
        a run at each sample, so the same objects mean the same figures: scrapes between two samples (several
        Prometheus servers, a benchmark) then share one rendering."""
        return len(runs) == len(self._runs) and all(map(operator.is_, runs, self._runs))

    def families(self) -> Iterator[Metric]:
        with_gpu = any(exposes_gpu(run) for run in self._runs)
        for family in RUN_FAMILIES:
            if family.gpu_only and not with_gpu:
                continue
            yield PrerenderedFamily(
                family.name,
                family.documentation,
                family.type,
                family.unit,
                lines=partial(self.lines, family.name),
                samples=partial(self.samples, family.name),
            )

    def lines(self, family: str) -> str:
        """One family's sample lines."""
        if self._lines is None:
            self._lines = self._render_lines()
        return self._lines[family]

    def samples(self, family: str) -> list[Sample]:
        """One family's samples."""
        if self._samples is None:
            self._samples = self._build_samples()
        return self._samples[family]

    def _render_lines(self) -> dict[str, str]:
        runs = self._runs
        layout = self._cache.layout(runs, self._cache.texts(runs))
        lines = dict(layout.fixed)
        for family in RUN_FAMILIES:
            if family.values is not None:
                lines[family.name] = layout.lines(family.name, family.values(runs))
        return lines

    def _build_samples(self) -> dict[str, list[Sample]]:
        samples: dict[str, list[Sample]] = {}
        for family in RUN_FAMILIES:
            samples[family.name] = [
                Sample(family.sample_name, sample_labels(run, key), value)
                for run in self._runs
                for key, value in family.series(run)
            ]
        return samples


def sample_labels(run: Run, key: SeriesKey) -> dict[str, str]:
    """The labels of the series ``key`` of a run (see RunFamily)."""
    if key is RUN_ID:
        return run_identity(run)
    if isinstance(key, WorkUnit):
        return {**run_identity(run), "unit": str(key)}
    if key == INFO:
        return run_info_labels(run)
    return {**run_identity(run), "component": key}


def unattributed_family(snapshot: Snapshot) -> Metric:
    """Energy no run was given, per component: with the runs' energy it adds up to what RAPL measured."""
    family = CounterMetricFamily(
        "impact_unattributed_energy_joules",
        "Energy measured since the exporter started that no run was given, per component.",
        labels=["component"],
        unit="joules",
    )
    for component, domain in COMPONENT_DOMAINS.items():
        if domain in snapshot.unattributed_joules:
            family.add_metric([component], snapshot.unattributed_joules[domain])
    return family


def energy_source_family(snapshot: Snapshot) -> Metric:
    """How each component's energy is obtained, so reports can say "measured" or "estimated" next to it."""
    family = GaugeMetricFamily(
        "impact_energy_source_info",
        "The method behind each component's energy (rapl: measured by RAPL; estimate: modelled). Always 1.",
        labels=["component", "method"],
    )
    method_of = {reading.domain: reading.method for reading in snapshot.energy_domains}
    for component, domain in COMPONENT_DOMAINS.items():
        if domain in method_of:
            family.add_metric([component, method_of[domain]], 1.0)
    if snapshot.gpu_energy_method is not None:
        family.add_metric(["gpu", snapshot.gpu_energy_method], 1.0)
    return family


def gpu_families(snapshot: Snapshot) -> Iterator[Metric]:
    """Per-GPU energy, power, utilisation and memory, and per-process figures for processes on a GPU now.

    Sample lines::

        impact_gpu_energy_joules_total{gpu="0",uuid="GPU-5e0c..."} 81234.5
        impact_gpu_process_power_watts{comm="python",gpu="0",pid="4242",uuid="GPU-5e0c..."} 212.0
    """
    if not snapshot.gpu_info:
        return
    gpu_labels = ["gpu", "uuid"]
    info = GaugeMetricFamily(
        "impact_gpu_info",
        "A GPU and its driver. Always 1.",
        labels=["gpu", "uuid", "name", "driver_version", "cuda_version", "memory_total_bytes", "mig"],
    )
    for gpu in snapshot.gpu_info:
        info.add_metric(
            [
                str(gpu.index),
                gpu.uuid,
                gpu.name,
                gpu.driver_version or "",
                gpu.cuda_version or "",
                str(gpu.memory_total_bytes or ""),
                "enabled" if gpu.mig_enabled else "disabled",
            ],
            1.0,
        )
    yield info
    up = GaugeMetricFamily("impact_gpu_up", "1 if the GPU answered at the last sample.", labels=gpu_labels)
    energy = CounterMetricFamily(
        "impact_gpu_energy_joules",
        "Energy of the GPU (its counter, or its power integrated).",
        labels=gpu_labels,
        unit="joules",
    )
    power = GaugeMetricFamily("impact_gpu_power_watts", "Power the GPU draws.", labels=gpu_labels, unit="watts")
    utilization = GaugeMetricFamily(
        "impact_gpu_utilization_ratio", "Fraction of time a kernel ran on the GPU.", labels=gpu_labels
    )
    memory = GaugeMetricFamily("impact_gpu_memory_used_bytes", "GPU memory in use.", labels=gpu_labels, unit="bytes")
    process_labels = ["gpu", "uuid", "pid", "comm"]
    process_power = GaugeMetricFamily(
        "impact_gpu_process_power_watts",
        "The process's share of the GPU's power over the last interval.",
        labels=process_labels,
        unit="watts",
    )
    process_sm = GaugeMetricFamily(
        "impact_gpu_process_sm_utilization_ratio",
        "The process's share of the GPU's SM time over the last interval.",
        labels=process_labels,
    )
    process_memory = GaugeMetricFamily(
        "impact_gpu_process_memory_used_bytes", "GPU memory the process holds.", labels=process_labels, unit="bytes"
    )
    for gpu in snapshot.gpus:
        labels = [str(gpu.index), gpu.uuid]
        up.add_metric(labels, 1.0 if gpu.up else 0.0)
        if gpu.energy_joules_total is not None:
            energy.add_metric(labels, gpu.energy_joules_total)
        if not gpu.up:
            continue
        for family, value in (
            (power, gpu.power_watts),
            (utilization, gpu.utilization_ratio),
            (memory, gpu.memory_used_bytes),
        ):
            if value is not None:
                family.add_metric(labels, float(value))
        for process in gpu.processes:
            process_labels_values = [*labels, str(process.pid), snapshot.process_names.get(process.pid, "")]
            watts = snapshot.gpu_process_watts.get((gpu.index, process.pid))
            if watts is not None:
                process_power.add_metric(process_labels_values, watts)
            if process.sm_utilization_ratio is not None:
                process_sm.add_metric(process_labels_values, process.sm_utilization_ratio)
            if process.used_memory_bytes is not None:
                process_memory.add_metric(process_labels_values, float(process.used_memory_bytes))
    yield from (up, energy, power, utilization, memory, process_power, process_sm, process_memory)


def source_families(snapshot: Snapshot) -> Iterator[Metric]:
    """Health of each source: up at the last sample, and failed reads since start."""
    up = GaugeMetricFamily("impact_source_up", "1 if the source's last read succeeded, else 0.", labels=["source"])
    errors = CounterMetricFamily(
        "impact_source_errors", "Failed reads of the source since the exporter started.", labels=["source"]
    )
    for name, status in sorted(snapshot.sources.items()):
        up.add_metric([name], 1.0 if status.up else 0.0)
        errors.add_metric([name], float(status.errors_total))
    yield up
    yield errors


def exporter_families(snapshot: Snapshot) -> Iterator[Metric]:
    """How the sampler itself is doing."""
    yield GaugeMetricFamily(
        "impact_exporter_sample_duration_seconds",
        "Time the last sample took to read every source.",
        value=snapshot.sample_duration_seconds,
        unit="seconds",
    )
    yield CounterMetricFamily(
        "impact_exporter_samples", "Samples taken since the exporter started.", value=snapshot.samples_total
    )
    yield GaugeMetricFamily(
        "impact_exporter_last_sample_timestamp_seconds",
        "Unix time of the last sample; stale when far behind the scrape time.",
        value=snapshot.timestamp,
        unit="seconds",
    )


def info_families(host: HostInfo, version: str) -> Iterator[Metric]:
    """Build and host facts, as info metrics of value 1."""
    yield InfoMetricFamily("impact_build", "The exporter's version.", value={"version": version})
    labels = {
        "hostname": host.hostname,
        "cpu_model": host.cpu_model,
        "cpu_vendor": host.cpu_vendor,
        "cpu_count": str(host.cpu_count),
        "kernel": host.kernel,
    }
    if host.region:  # Prometheus stores an empty label as none at all
        labels["region"] = host.region
    yield InfoMetricFamily(
        "impact_host",
        "The host the exporter runs on; the reporter reads hardware and grid region from here.",
        value=labels,
    )
