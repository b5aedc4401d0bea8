"""The library's exceptions: one base class, so ``except ImpactTrackerError`` catches every tracking problem.

Messages are one line and end with what to do about it, because they are printed as warnings in the middle
of an experiment's output.
"""

from __future__ import annotations

from typing import Any

ADDRESS_HINT = "unix:///path/to/api.sock or http://HOST:9877"


class ImpactTrackerError(Exception):
    """Base of every error this library raises."""


class BadExporterAddress(ImpactTrackerError, ValueError):
    """``IMPACT_EXPORTER`` (or an address passed in) is not a form the client understands."""

    def __init__(self, address: str, why: str) -> None:
        self.address = address
        super().__init__(f"bad impact-exporter address {address!r}: {why}; expected {ADDRESS_HINT}")


class ExporterUnavailable(ImpactTrackerError):
    """The exporter cannot be reached (no socket, connection refused, no answer in time)."""

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        self.reason = reason
        super().__init__(
            f"cannot reach impact-exporter at {address} ({reason}); start impact-exporter on this machine, "
            f"or set IMPACT_EXPORTER to its address ({ADDRESS_HINT})"
        )


class ExporterError(ImpactTrackerError):
    """The exporter answered with an error; ``status`` is the HTTP status, ``message`` the API's own text."""

    def __init__(
        self,
        status: int,
        message: str,
        address: str | None = None,
        hint: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """``body``: the whole JSON object of the answer (a 409 for a process in the caller's Slurm job carries
        that job's run under "run")."""
        self.status = status
        self.message = message
        self.address = address
        self.body = body or {}
        where = f" at {address}" if address else ""
        if hint is None and status == 401:
            hint = "set IMPACT_EXPORTER_TOKEN to the exporter's API token (the content of its --api.token-file)"
        super().__init__(f"impact-exporter{where} answered {status}: {message}" + (f"; {hint}" if hint else ""))


class UnknownRun(ExporterError):
    """The exporter does not know the run (404): it was restarted with another state, or the run expired."""

    def __init__(self, run_id: str, message: str, address: str | None = None) -> None:
        self.run_id = run_id
        super().__init__(
            404,
            message,
            address,
            hint=f"run {run_id} is not (or no longer) known there: was the exporter restarted with another "
            "--state-dir, or did the run finish long ago?",
        )


class RunNotTracked(ImpactTrackerError):
    """A figure was asked of a run that the exporter does not know, because registering it failed."""

    def __init__(self, experiment: str, reason: str) -> None:
        self.reason = reason
        super().__init__(f"run of {experiment!r} is not tracked: {reason}")


class RunUnhealthy(ImpactTrackerError):
    """The exporter knows the run, but its figures cannot be trusted: stale samples, a source down, run over."""


class RunDirError(ImpactTrackerError):
    """A run directory has no readable ``run.json``."""


class MeasurementFailed(ImpactTrackerError):
    """The standalone monitor (measuring a run without an exporter) cannot measure, or stopped measuring."""
