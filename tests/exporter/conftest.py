"""Fixtures shared by the exporter's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from impact_exporter.store import RunStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RunStore]:
    """A run store in the test's own state directory, closed after the test."""
    store = RunStore(tmp_path / "state" / "runs.sqlite")
    yield store
    store.close()
