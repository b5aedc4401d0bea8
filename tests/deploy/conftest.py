"""Fixtures of the deployment tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.rapl_access import make_node_root


@pytest.fixture
def node_root() -> Iterator[Path]:
    """A machine root whose RAPL counters are root-only, as current kernels make them (rapl_access.py)."""
    root = make_node_root()
    yield root
    shutil.rmtree(root)
