"""Write deploy/kubernetes/prometheusrule.yaml: the rule files of deploy/prometheus/rules as one PrometheusRule, so
prometheus-operator loads the same recording and alerting rules as every other Prometheus. Run it from anywhere
after changing a rule file:

    python deploy/kubernetes/prometheusrule.py > deploy/kubernetes/prometheusrule.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

RULES_DIR = Path(__file__).resolve().parents[1] / "prometheus" / "rules"
HEADER = (
    "# Generated from deploy/prometheus/rules/*.yml by deploy/kubernetes/prometheusrule.py; do not edit. After\n"
    "# changing a rule file: python deploy/kubernetes/prometheusrule.py > deploy/kubernetes/prometheusrule.yaml\n"
)


class RuleDumper(yaml.SafeDumper):
    """Writes multi-line strings (PromQL, descriptions) as literal blocks, as the rule files have them."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


RuleDumper.add_representer(str, _represent_str)


def rule_groups(rules_dir: Path = RULES_DIR) -> list[dict[str, Any]]:
    """The groups of every rule file in ``rules_dir``, in file name order."""
    return [group for path in sorted(rules_dir.glob("*.yml")) for group in yaml.safe_load(path.read_text())["groups"]]


def prometheus_rule(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """A prometheus-operator PrometheusRule holding ``groups``."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "impact-exporter",
            "namespace": "impact-exporter",
            "labels": {"app.kubernetes.io/name": "impact-exporter"},
        },
        "spec": {"groups": groups},
    }


def render(groups: list[dict[str, Any]]) -> str:
    """The text of prometheusrule.yaml."""
    return HEADER + yaml.dump(prometheus_rule(groups), Dumper=RuleDumper, sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(render(rule_groups()))
