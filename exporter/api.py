"""The run API: JSON routes through which experiments start, stop and read their runs.

Transport-free: exporter/http.py identifies the caller (SO_PEERCRED on the Unix socket, a bearer token over
TCP) and hands the request here; this module validates it, asks the registry, and says what to answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from exporter.runs import InvalidRequest, Run, RunError, RunRegistry, parse_start_request, validate_run_id
from exporter.sampler import Snapshot

MAX_BODY_BYTES = 64 * 1024
RUNS = "/api/v1/runs"
RUN = re.compile(r"/api/v1/runs/([^/]+)")
STOP = re.compile(r"/api/v1/runs/([^/]+)/stop")


@dataclass(frozen=True)
class Caller:
    """Who sent a request: uid 0 may act on any run; ``pid`` is known on the Unix socket only."""

    uid: int
    pid: int | None


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]


def error(status: int, message: str) -> Reply:
    return Reply(status, {"error": message})


class RunAPI:
    """Routes ``/api/v1/runs`` requests to the registry and renders runs as JSON."""

    def __init__(self, registry: RunRegistry, snapshot: Callable[[], Snapshot]) -> None:
        self._registry = registry
        self._snapshot = snapshot

    def handle(self, method: str, path: str, body: bytes, caller: Caller) -> Reply:
        """The reply to one request; every outcome, errors included, is a JSON object."""
        try:
            return self._route(method, path.rstrip("/") or "/", body, caller)
        except RunError as failure:
            return error(failure.status, str(failure))

    def _route(self, method: str, path: str, body: bytes, caller: Caller) -> Reply:
        if path == RUNS:
            if method == "POST":
                return self._start(body, caller)
            if method == "GET":
                return Reply(HTTPStatus.OK, {"runs": [self.render(run) for run in self._registry.list(caller.uid)]})
            return error(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not allowed on {RUNS}; use GET or POST")
        if match := STOP.fullmatch(path):
            if method != "POST":
                return error(HTTPStatus.METHOD_NOT_ALLOWED, "use POST to stop a run")
            run = self._registry.stop(validate_run_id(unquote(match.group(1))), caller.uid)
            return Reply(HTTPStatus.OK, self.render(run))
        if match := RUN.fullmatch(path):
            if method != "GET":
                return error(HTTPStatus.METHOD_NOT_ALLOWED, "use GET to read a run")
            run = self._registry.get(validate_run_id(unquote(match.group(1))), caller.uid)
            return Reply(HTTPStatus.OK, self.render(run))
        return error(HTTPStatus.NOT_FOUND, f"no such API route: {path}")

    def _start(self, body: bytes, caller: Caller) -> Reply:
        try:
            decoded = json.loads(body or b"null")
        except (ValueError, UnicodeDecodeError, RecursionError) as failure:  # RecursionError: nested too deep
            raise InvalidRequest(f"the body is not valid JSON: {failure}") from failure
        run, created = self._registry.start(parse_start_request(decoded), caller.uid, caller.pid)
        return Reply(HTTPStatus.CREATED if created else HTTPStatus.OK, self.render(run))

    def render(self, run: Run) -> dict[str, Any]:
        """A run as the API shows it, with the freshness and health of the figures."""
        snapshot = self._snapshot()
        return {
            "run_id": run.run_id,
            "experiment": run.experiment,
            "set": run.set,
            "labels": dict(run.labels),
            "user": run.user,
            "pids": list(run.pids),
            "status": "active" if run.active else "finished",
            "start_time": run.start_time,
            "end_time": run.end_time,
            "energy_joules": dict(run.energy_joules),
            "cpu_seconds": run.cpu_seconds,
            "gpu_seconds": run.gpu_seconds,
            "last_sample_time": snapshot.timestamp,
            "sources_up": {name: status.up for name, status in snapshot.sources.items()},
            "source_errors": {name: status.errors_total for name, status in snapshot.sources.items()},
        }
