"""experiment-impact-tracker: mark experiment runs so that impact-exporter measures their energy.

``track_run`` (a context manager and decorator) registers the running process with the node's exporter;
``impact-run`` does the same for a command; ``compute_tracker.ImpactTracker`` keeps the original library's API.

The names below are imported on first use (``__getattr__``): the exporter and the standalone monitor import
submodules of this package (its NVML helpers, run directories), and importing the package must not load the HTTP
client (requests, ssl, email) for them: the monitor's start-up is time an experiment waits for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from experiment_impact_tracker.client import ExporterClient
    from experiment_impact_tracker.errors import (
        ExporterError,
        ExporterUnavailable,
        ImpactTrackerError,
        RunNotTracked,
        RunUnhealthy,
        UnknownRun,
    )
    from experiment_impact_tracker.rundir import read_run_dir
    from experiment_impact_tracker.runs import Run, track_run

_EXPORTS = {
    "ExporterClient": "client",
    "ExporterError": "errors",
    "ExporterUnavailable": "errors",
    "ImpactTrackerError": "errors",
    "RunNotTracked": "errors",
    "RunUnhealthy": "errors",
    "UnknownRun": "errors",
    "read_run_dir": "rundir",
    "Run": "runs",
    "track_run": "runs",
}


def __getattr__(name: str) -> Any:
    """The public names, imported from their modules on first use, and ``__version__``, read from the installed
    metadata on first use (importing the client does not load importlib.metadata)."""
    if name == "__version__":
        value: Any = _version()
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("experiment-impact-tracker")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+unknown"


__all__ = [
    "ExporterClient",
    "ExporterError",
    "ExporterUnavailable",
    "ImpactTrackerError",
    "Run",
    "RunNotTracked",
    "RunUnhealthy",
    "UnknownRun",
    "read_run_dir",
    "track_run",
]
