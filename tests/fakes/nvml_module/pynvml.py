"""A ``pynvml`` module for processes a test starts (the standalone monitor): put this directory first on PYTHONPATH.

It answers with tests.fakes.nvml's FakeNvml, whose GPUs it sets before every call from the JSON file named by
``$FAKE_NVML_STATE`` (written by the test's process, which drives the scenario), so a process that cannot be handed
a FakeNvml object still reads the fake at NVML's own interface::

    {"gpus": [{"uuid": "GPU-...", "power_watts": 200.0, "energy_joules": 12.5, "processes": {"4242": 1073741824}}]}

Per-process utilisation is NOT_SUPPORTED, so the NVML source splits a GPU by its processes' memory.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent


def _real_pynvml() -> Any:
    """nvidia-ml-py's own pynvml, found on sys.path past this directory (its types and errors are the fake's)."""
    path = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("pynvml", path)
    assert spec is not None and spec.loader is not None, "nvidia-ml-py is not installed"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_real = _real_pynvml()
_self = sys.modules[__name__]
sys.modules["pynvml"] = _real
try:
    from tests.fakes.nvml import FakeGpu, FakeNvml
finally:
    sys.modules["pynvml"] = _self

_state = json.loads(Path(os.environ["FAKE_NVML_STATE"]).read_text())
_fake = FakeNvml([FakeGpu(gpu["uuid"], process_utilization_supported=False) for gpu in _state["gpus"]])


def _sync() -> None:
    """Set the fake's GPUs from the state file as the driving process last wrote it."""
    state = json.loads(Path(os.environ["FAKE_NVML_STATE"]).read_text())
    for gpu, written in zip(_fake.gpus, state["gpus"], strict=True):
        gpu.power_watts = written["power_watts"]
        gpu.energy_joules = written["energy_joules"]
        gpu.processes = {int(pid): used for pid, used in written["processes"].items()}


def __getattr__(name: str) -> Any:
    if name.startswith("nvml") and hasattr(_fake, name):
        function = getattr(_fake, name)

        def synced(*args: Any, **kwargs: Any) -> Any:
            _sync()
            return function(*args, **kwargs)

        return synced
    return getattr(_real, name)
