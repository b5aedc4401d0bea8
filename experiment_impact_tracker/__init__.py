"""experiment-impact-tracker: mark experiment runs so that impact-exporter measures their energy.

``track_run`` (a context manager and decorator) registers the running process with the node's exporter;
``impact-run`` does the same for a command; ``compute_tracker.ImpactTracker`` keeps the original library's API.
"""

from importlib.metadata import PackageNotFoundError, version

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

try:
    __version__ = version("experiment-impact-tracker")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

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
