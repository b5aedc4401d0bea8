"""The framework callbacks' tests run in their own step (scripts/test-frameworks, after the main suite): they need
torch, Lightning, transformers and Keras (the [frameworks] extra), which the main suite does not install. They are
collected only when pytest is asked for them with ``-m frameworks``; then a missing framework is an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.experiment_impact_tracker.test_with_exporter import (  # noqa: F401 (fixtures)
    client,
    env,
    exporter,
    exporter_flags,
    power,
    powercap,
    socket_path,
)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave this folder out unless the run selects ``-m frameworks``."""
    return True if (config.getoption("markexpr") or "").strip() != "frameworks" else None
