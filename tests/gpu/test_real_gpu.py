"""Against a real NVIDIA GPU, when this machine has one (skipped elsewhere, CI included: CI has no GPU)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from impact_exporter.sources import HardwareNotFound
from impact_exporter.sources.nvml import NvmlSource
from tests.servers import REPO_ROOT


def gpus() -> tuple:
    try:
        source = NvmlSource()
    except HardwareNotFound:
        return ()
    try:
        return source.gpus
    finally:
        source.close()


pytestmark = pytest.mark.skipif(not gpus(), reason="no NVIDIA GPU on this machine")


def test_nvml_source_reads_every_gpu() -> None:
    source = NvmlSource()
    try:
        first = source.sample()
        second = source.sample()
    finally:
        source.close()
    assert all(gpu.up for gpu in second.gpus)
    for before, after in zip(first.gpus, second.gpus, strict=True):
        assert after.energy_joules_total is None or after.energy_joules_total >= (before.energy_joules_total or 0)
        assert after.power_watts is None or after.power_watts > 0


def test_gpu_check_script_passes() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/gpu-check"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180
    )
    if result.returncode == 2:
        pytest.skip(result.stderr.strip())
    assert result.returncode == 0, result.stdout + result.stderr
