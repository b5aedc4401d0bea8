"""What Grafana does with the dashboards, as far as the tests need it (Grafana itself cannot be installed here):
walk panels and their queries, interpolate template variables the way the Prometheus data source does, turn an
annotation query's result into events, and merge a table's instant queries into rows."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.servers import REPO_ROOT

DASHBOARDS = REPO_ROOT / "grafana" / "dashboards"
PROVISIONING = REPO_ROOT / "grafana" / "provisioning"
BUILTIN_VARIABLES = {"__range", "__rate_interval", "__interval", "__range_s", "__range_ms", "__interval_ms"}
ALL = ".*"  # the dashboards' allValue: what "All" becomes in a query
VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
LABEL_VALUES = re.compile(r"^label_values\((.*),\s*(\w+)\)$", re.DOTALL)


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a dashboard and where it sits; ``instant`` as Grafana runs it."""

    dashboard: str
    where: str
    expr: str
    instant: bool
    panel: dict[str, Any] | None = None
    label: str = ""  # for a label_values variable: the label whose values it lists (``expr`` is the selector)

    def __str__(self) -> str:
        return f"{self.dashboard}: {self.where}"


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels a collapsed row keeps inside it."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(name: str, dashboard: Mapping[str, Any]) -> Iterator[Query]:
    """Every PromQL expression: panel targets, Prometheus annotations, and query variables' selectors."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield Query(
                name,
                f"panel {panel['title']!r} query {target['refId']}",
                target["expr"],
                bool(target.get("instant")) and not target.get("range"),
                panel,
            )
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            yield Query(name, f"annotation {annotation['name']!r}", annotation["expr"], instant=False)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            selector, label = label_values(variable)
            yield Query(name, f"variable {variable['name']!r}", selector, instant=True, label=label)


def label_values(variable: Mapping[str, Any]) -> tuple[str, str]:
    """The (series selector, label) of a ``label_values(selector, label)`` query variable."""
    match = LABEL_VALUES.match(variable["query"]["query"])
    assert match, f"variable {variable['name']!r} is not label_values(selector, label): {variable['query']}"
    return match.group(1).strip(), match.group(2)


def used_variables(text: str) -> set[str]:
    return {braced or plain for braced, plain in VARIABLE.findall(text)}


def regex_escape(value: str) -> str:
    """A value as Grafana's Prometheus data source puts it into a regex matcher (prometheusSpecialRegexEscape):
    regex metacharacters get a backslash, written doubled inside the PromQL string."""
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda match: "\\\\" + match.group(0), value.replace("\\", "\\\\\\\\"))


def multi_value(values: list[str]) -> str:
    """What a multi-value variable with these values selected becomes: one escaped value, or (a|b|...)."""
    escaped = [regex_escape(value) for value in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def interpolate(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` with every $name and ${name} replaced; an undefined variable fails the test by name."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"variable ${name} has no value (defined: {sorted(values)}) in {expr}"
        return values[name]

    return VARIABLE.sub(value, expr)


def render_legend(template: str, labels: Mapping[str, str]) -> str:
    """Grafana's legend/title format: {{label}} becomes the label's value ("" when absent)."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda match: labels.get(match.group(1), ""), template)


def annotation_events(annotation: Mapping[str, Any], matrix: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events Grafana's Prometheus data source makes of an annotation's range-query result
    (processAnnotationResponse): per series, each non-zero point is an event at its timestamp, or with
    ``useValueForTime`` at its value in milliseconds; points within one step of each other merge."""
    step_ms = _seconds(annotation.get("step", "60s")) * 1000
    tag_keys = annotation.get("tagKeys", "").split(",")
    events = []
    for series in matrix:
        labels = {key: value for key, value in series["metric"].items() if key != "__name__"}
        points = [
            (int(float(value)), 1.0) if annotation.get("useValueForTime") else (int(float(at) * 1000), float(value))
            for at, value in series["values"]
        ]
        current: dict[str, Any] | None = None
        for timestamp in [timestamp for timestamp, value in points if value > 0]:
            if current is not None and current["timeEnd"] + step_ms >= timestamp:
                current["timeEnd"] = timestamp
                continue
            if current is not None:
                events.append(current)
            current = {
                "time": timestamp,
                "timeEnd": timestamp,
                "title": render_legend(annotation.get("titleFormat", ""), labels),
                "text": render_legend(annotation.get("textFormat", ""), labels),
                "tags": [value for key, value in labels.items() if key in tag_keys],
            }
        if current is not None:
            events.append(current)
    return events


def merged_rows(panel: Mapping[str, Any], results: Mapping[str, list[dict[str, Any]]]) -> dict[tuple, dict]:
    """A table panel's instant queries as its "merge" transformation joins them: one row per label set, with
    each query's value under "Value #<refId>" ("Value" for a single query). Rows are keyed by their labels."""
    single = len(panel["targets"]) == 1
    rows: dict[tuple, dict[str, Any]] = {}
    for ref_id, vector in results.items():
        for series in vector:
            labels = {key: value for key, value in series["metric"].items() if key != "__name__"}
            row = rows.setdefault(tuple(sorted(labels.items())), dict(labels))
            row["Value" if single else f"Value #{ref_id}"] = float(series["value"][1])
    return rows


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    assert match, f"unsupported step {duration!r}"
    return int(match.group(1)) * units[match.group(2)]
