"""Every YAML and JSON file under deploy/ parses, so no tool meets a syntax error on a machine we never see."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.manifests import DEPLOY, load_data_file

DATA_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml", ".json"})


def test_deploy_holds_the_files_the_issue_asks_for() -> None:
    names = {str(path.relative_to(DEPLOY)) for path in DATA_FILES}
    assert {
        "prometheus/prometheus.yml",
        "prometheus/rules/impact-recording.yml",
        "prometheus/rules/impact-alerts.yml",
        "docker-compose.yml",
        "kubernetes/daemonset.yaml",
        "kubernetes/service.yaml",
        "kubernetes/servicemonitor.yaml",
    } <= names


@pytest.mark.parametrize("path", DATA_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_the_file_parses_into_data(path: Path) -> None:
    documents = load_data_file(path)
    assert documents and all(isinstance(doc, dict) for doc in documents)
