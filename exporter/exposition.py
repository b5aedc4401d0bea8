"""The ``/metrics`` body in the text 0.0.4 and OpenMetrics formats, line for line as prometheus_client writes it,
without its per-sample costs. (One difference, for speed: the per-run counters write a value of a million or more
as ``repr`` does, 1234567.891 where prometheus_client writes 1.234567891e+06. Parsers read the same float.)

prometheus_client's encoders escape every sample name character by character and every label set on every
scrape: with 1,000 runs (about 8,000 samples) that is most of a scrape's CPU time (docs/performance.md). Here:

- a :class:`PrerenderedFamily` (the per-run families, exporter/collector.py) writes its own sample lines from
  label strings its owner escaped once, and builds ``Sample`` objects only for an encoder that asks for them;
- any other plain family (gauge, counter, info, unknown; legacy names; no timestamps, exemplars or native
  histograms) is written by a short loop that produces the same lines as prometheus_client;
- anything else, and every name escaping scheme that rewrites names (``dots``, ``values``), goes to
  prometheus_client's own encoder, so no output ever differs from it.

tests/exporter/test_exposition.py checks both formats against prometheus_client's encoders and parsers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import partial

from prometheus_client.core import Metric, Sample
from prometheus_client.exposition import choose_encoder
from prometheus_client.exposition import generate_latest as text_encoder
from prometheus_client.openmetrics.exposition import ALLOWUTF8, UNDERSCORES
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_encoder
from prometheus_client.registry import Collector

OPENMETRICS = "application/openmetrics-text"
OPENMETRICS_EOF = "# EOF\n"
NAME_KEEPING_ESCAPINGS = frozenset({UNDERSCORES, ALLOWUTF8})
"""Escaping schemes that leave a legacy name ([a-zA-Z_][a-zA-Z0-9_]*) as it is: the only ones written here."""

LEGACY_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
PLAIN_TYPES = frozenset({"gauge", "counter", "info", "unknown"})
TEXT_TYPES = {"counter": "counter", "info": "gauge", "unknown": "untyped"}
"""A family's TYPE in the text format when it differs from its OpenMetrics type."""
TEXT_NAME_SUFFIXES = {"counter": "_total", "info": "_info"}
"""What the text format appends to a family's name in HELP and TYPE."""
TEXT_SEPARATE_SUFFIXES = ("_created", "_gsum", "_gcount")
"""Samples the text format moves to families of their own: such families go to prometheus_client."""

GO_SPECIAL_FLOATS = {"inf": "+Inf", "-inf": "-Inf", "nan": "NaN"}


def go_float(value: float) -> str:
    """A sample value as prometheus_client's ``floatToGoString`` writes it (1.7e+09, +Inf, NaN), with fewer
    steps: a scrape of 1,000 runs formats 6,000 values."""
    value = float(value)
    text = repr(value)
    dot = text.find(".")
    if dot > 6 and value > 0:  # Go switches to an exponent sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    if dot < 0:
        return GO_SPECIAL_FLOATS.get(text, text)
    return text


def escape_label_value(value: str) -> str:
    """A label value as both formats quote it: backslash, newline and double quote escaped."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def label_text(labels: dict[str, str]) -> str:
    """``{a="1",b="2"}`` with names sorted, as both formats write a label set; empty for no labels."""
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{escape_label_value(value)}"' for name, value in sorted(labels.items())) + "}"


class PrerenderedFamily(Metric):
    """A family that writes its own sample lines, identical in both formats.

    Its owner escapes label strings once and keeps them (see exporter/collector.py, the per-run families); a
    scrape then formats only values. ``samples`` are built only when an encoder other than :func:`encode` (a
    test's ``generate_latest``, a name-rewriting escaping) asks for them, and describe the same lines.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        typ: str,
        unit: str,
        lines: Callable[[], str],
        samples: Callable[[], list[Sample]],
    ) -> None:
        # Metric.__init__ would assign an empty sample list; this family's samples come from `samples`.
        self.name = name
        self.documentation = documentation
        self.type = typ
        self.unit = unit
        self._lines = lines
        self._build_samples = samples
        self._samples: list[Sample] | None = None

    @property
    def samples(self) -> list[Sample]:  # type: ignore[override]
        if self._samples is None:
            self._samples = self._build_samples()
        return self._samples

    def sample_lines(self) -> str:
        """Every sample line of the family, newline-terminated."""
        return self._lines()


def negotiate(accept_header: str) -> tuple[Callable[[Collector], bytes], str]:
    """The encoder and Content-Type for a request's Accept header, as prometheus_client chooses them, with the
    encoder replaced by :func:`encode` wherever that writes the same samples."""
    encoder, content_type = choose_encoder(accept_header)
    escaping = content_type_escaping(content_type)
    if escaping not in NAME_KEEPING_ESCAPINGS:
        return encoder, content_type
    return partial(encode, openmetrics=content_type.startswith(OPENMETRICS)), content_type


def content_type_escaping(content_type: str) -> str:
    """The ``escaping=`` parameter of a Content-Type prometheus_client chose; underscores when it has none."""
    for parameter in content_type.split(";"):
        name, _, value = parameter.strip().partition("=")
        if name == "escaping":
            return value
    return UNDERSCORES


def encode(registry: Collector, openmetrics: bool) -> bytes:
    """The registry's exposition: OpenMetrics 1.0 when ``openmetrics``, else the text format 0.0.4."""
    output: list[str] = []
    for metric in registry.collect():
        if isinstance(metric, PrerenderedFamily):
            output.extend(header(metric, openmetrics))
            output.append(metric.sample_lines())
        elif is_plain(metric, openmetrics):
            output.extend(header(metric, openmetrics))
            output.extend(plain_sample_lines(metric.samples))
        else:
            output.append(fallback(metric, openmetrics))
    if openmetrics:
        output.append(OPENMETRICS_EOF)
    return "".join(output).encode("utf-8")


def header(metric: Metric, openmetrics: bool) -> Iterable[str]:
    """The HELP, TYPE (and, in OpenMetrics, UNIT) lines of a family with a legacy name."""
    if openmetrics:
        yield f"# HELP {metric.name} {escape_label_value(metric.documentation)}\n"
        yield f"# TYPE {metric.name} {metric.type}\n"
        if metric.unit:
            yield f"# UNIT {metric.name} {metric.unit}\n"
        return
    name = metric.name + TEXT_NAME_SUFFIXES.get(metric.type, "")
    documentation = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
    yield f"# HELP {name} {documentation}\n"
    yield f"# TYPE {name} {TEXT_TYPES.get(metric.type, metric.type)}\n"


def is_plain(metric: Metric, openmetrics: bool) -> bool:
    """Whether the family's lines are written by :func:`plain_sample_lines` exactly as prometheus_client writes
    them: a plain type, legacy names, values only (no timestamp, exemplar or native histogram)."""
    if metric.type not in PLAIN_TYPES or not LEGACY_NAME.fullmatch(metric.name):
        return False
    separate = () if openmetrics else tuple(metric.name + suffix for suffix in TEXT_SEPARATE_SUFFIXES)
    return all(
        sample.value is not None
        and sample.timestamp is None
        and sample.exemplar is None
        and sample.native_histogram is None
        and sample.name not in separate
        and LEGACY_NAME.fullmatch(sample.name)
        and all(LEGACY_NAME.fullmatch(name) for name in sample.labels)
        for sample in metric.samples
    )


def plain_sample_lines(samples: Iterable[Sample]) -> Iterable[str]:
    """``name{labels} value`` lines, the same in both formats."""
    for sample in samples:
        yield f"{sample.name}{label_text(sample.labels)} {go_float(sample.value)}\n"


def fallback(metric: Metric, openmetrics: bool) -> str:
    """One family as prometheus_client's own encoder writes it, for what :func:`is_plain` does not cover."""
    one = SingleFamily(metric)
    if openmetrics:
        return openmetrics_encoder(one).decode("utf-8").removesuffix(OPENMETRICS_EOF)
    return text_encoder(one).decode("utf-8")


class SingleFamily(Collector):
    """A collector of one given family, to hand one family to prometheus_client's encoders."""

    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> Iterable[Metric]:
        return [self._metric]
