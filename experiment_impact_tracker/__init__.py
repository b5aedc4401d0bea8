"""experiment-impact-tracker: mark experiment runs so that impact-exporter measures their energy.

``track_run`` (a context manager and decorator) registers the running process with the node's exporter;
``impact-run`` does the same for a command; ``compute_tracker.ImpactTracker`` keeps the original library's API.
"""

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


def __getattr__(name: str) -> str:
    """``__version__``, read from the installed metadata on first use: importing the client does not load
    importlib.metadata, so an experiment that only marks runs does not pay for it."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("experiment-impact-tracker")
    except PackageNotFoundError:  # running from a source tree that was never installed
        value = "0.0.0+unknown"
    globals()["__version__"] = value
    return value


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
