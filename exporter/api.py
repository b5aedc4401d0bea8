"""The run API: JSON routes through which experiments start, stop and read their runs.

Transport-free: exporter/http.py identifies the caller (SO_PEERCRED on the Unix socket, a bearer token over
TCP) and hands the request here; this module validates it (the rules for run ids, labels and text fields are
here), asks the registry, and maps the registry's errors to HTTP statuses (``HTTP_STATUS``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from impact_exporter.cgroups import parse_cgroup
from impact_exporter.limits import DEFAULT_LIMITS, Limits, flag, label_bytes
from impact_exporter.run import (
    MAX_WORK_UNITS,
    WORK_UNITS,
    Conflict,
    Forbidden,
    HeldByCgroupRun,
    InvalidRequest,
    Run,
    RunError,
    StartRequest,
    StoreUnavailable,
    TooManyRequests,
    UnknownRun,
    run_object,
)
from impact_exporter.runs import RunRegistry
from impact_exporter.sampler import Snapshot
from impact_exporter.settling import RunSettler

MAX_BODY_BYTES = 64 * 1024
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
"""The characters of a run id; its length is a limit (--limits.run-id-length)."""
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
RESERVED_LABELS = frozenset(
    {"job", "instance", "run_id", "experiment", "set", "user", "component", "pod_uid", "container_id"}
)

HTTP_STATUS: Mapping[type[RunError], HTTPStatus] = {
    InvalidRequest: HTTPStatus.BAD_REQUEST,
    Forbidden: HTTPStatus.FORBIDDEN,
    UnknownRun: HTTPStatus.NOT_FOUND,
    Conflict: HTTPStatus.CONFLICT,
    StoreUnavailable: HTTPStatus.SERVICE_UNAVAILABLE,
    TooManyRequests: HTTPStatus.TOO_MANY_REQUESTS,
}
"""The HTTP status of each kind of run error; any other RunError is a 400."""

RUNS = "/api/v1/runs"
RUN = re.compile(r"/api/v1/runs/([^/]+)")
STOP = re.compile(r"/api/v1/runs/([^/]+)/stop")
WORK = re.compile(r"/api/v1/runs/([^/]+)/work")


@dataclass(frozen=True)
class Caller:
    """Who sent a request: uid 0 may act on any run; ``pid`` is known on the Unix socket only. An ``operator``
    (root, or a member of --runs.cgroup-operators) may register cgroup runs and read and stop anyone's."""

    uid: int
    pid: int | None
    operator: bool = False


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]


def error(status: int, message: str) -> Reply:
    return Reply(status, {"error": message})


def validate_labels(labels: object, limits: Limits = DEFAULT_LIMITS) -> dict[str, str]:
    """The labels as a plain dict, or InvalidRequest saying which rule a label breaks."""
    if not isinstance(labels, dict):
        raise InvalidRequest("labels must be an object of string values")
    if len(labels) > limits.labels:
        raise InvalidRequest(
            f"at most {limits.labels} labels are allowed, got {len(labels)} ({flag('labels', limits)})"
        )
    for name, value in labels.items():
        if len(name) > limits.label_name_length:
            raise InvalidRequest(
                f"label name {name[:32]!r}... is longer than {limits.label_name_length} characters "
                f"({flag('label_name_length', limits)})"
            )
        if not LABEL_NAME.fullmatch(name) or name.startswith("__"):
            raise InvalidRequest(
                f"label name {name!r} is not a valid Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not __*)"
            )
        if name in RESERVED_LABELS:
            raise InvalidRequest(f"label name {name!r} is reserved: {', '.join(sorted(RESERVED_LABELS))}")
        validate_text(f"label {name}", value, limits=limits)
    return dict(labels)


def validate_text(what: str, value: object, required: bool = False, limits: Limits = DEFAULT_LIMITS) -> str:
    """A string field of at most ``limits.label_value_length`` characters: it is exported as a label value."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} must be a string")
    if required and not value:
        raise InvalidRequest(f"{what} must not be empty")
    if len(value) > limits.label_value_length:
        raise InvalidRequest(
            f"{what} is longer than {limits.label_value_length} characters ({flag('label_value_length', limits)})"
        )
    try:
        value.encode()  # JSON may escape a lone surrogate, which neither SQLite nor /metrics can encode
    except UnicodeEncodeError:
        raise InvalidRequest(f"{what} is not valid Unicode: it holds a lone surrogate (\\ud800 to \\udfff)") from None
    return value


def validate_run_id(value: object, limits: Limits = DEFAULT_LIMITS) -> str:
    if not isinstance(value, str) or not RUN_ID.fullmatch(value) or len(value) > limits.run_id_length:
        raise InvalidRequest(
            f"run_id must be 1 to {limits.run_id_length} characters ({flag('run_id_length', limits)}) of letters, "
            "digits, '.', '_', ':' or '-', starting with a letter or digit"
        )
    return value


def parse_start_request(body: object, limits: Limits = DEFAULT_LIMITS) -> StartRequest:
    """Validate a decoded JSON body of ``POST /api/v1/runs``."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    unknown = set(body) - {"experiment", "set", "labels", "pid", "run_id", "cgroup", "uid"}
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    if "experiment" not in body:
        raise InvalidRequest("experiment is required")
    pid = body.get("pid")
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 2**22):
        raise InvalidRequest("pid must be a positive integer process id")
    run_id = body.get("run_id")
    request = StartRequest(
        experiment=validate_text("experiment", body["experiment"], required=True, limits=limits),
        set=validate_text("set", body.get("set", ""), limits=limits),
        labels=validate_labels(body.get("labels", {}), limits),
        pid=pid,
        run_id=None if run_id is None else validate_run_id(run_id, limits),
        **cgroup_fields(body),
    )
    size = label_bytes(request.experiment, request.set, request.labels)
    if size > limits.label_bytes:
        raise InvalidRequest(
            f"the labels, experiment and set take {size} bytes, more than {limits.label_bytes} "
            f"({flag('label_bytes', limits)})"
        )
    return request


def cgroup_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The ``cgroup`` and ``uid`` of a cgroup run's request, checked (exporter/cgroups.py), or none."""
    cgroup, uid = body.get("cgroup"), body.get("uid")
    if cgroup is None:
        if uid is not None:
            raise InvalidRequest("uid names the owner of a cgroup run; a process run belongs to its process's owner")
        return {}
    if not isinstance(cgroup, str):
        raise InvalidRequest("cgroup must be a string: /PATH (cgroup v2) or CONTROLLER:/PATH (v1)")
    if body.get("pid") is not None:
        raise InvalidRequest("a cgroup run holds every process of its cgroup: give cgroup or pid, not both")
    if uid is not None and (not isinstance(uid, int) or isinstance(uid, bool) or not 0 <= uid < 2**32 - 1):
        raise InvalidRequest("uid must be a user id, an integer from 0")
    try:
        return {"cgroup": str(parse_cgroup(cgroup)), "uid": uid}
    except ValueError as failure:
        raise InvalidRequest(str(failure)) from None


def parse_work_request(body: object) -> dict[str, int]:
    """Validate a decoded JSON body of ``POST /api/v1/runs/<id>/work``: units of work done since the last report,
    ``{"samples": 64, "steps": 1}``, each unit one of WORK_UNITS and each count a whole number from 0 to 2^53."""
    if not isinstance(body, dict) or not body:
        raise InvalidRequest(
            'the body must be a JSON object of units of work done since the last report, e.g. {"samples": 64}'
        )
    unknown = set(body) - set(WORK_UNITS)
    if unknown:
        names = ", ".join(sorted(repr(name)[:40] for name in unknown))
        raise InvalidRequest(f"unknown unit(s) of work: {names}; the units are {', '.join(WORK_UNITS)}")
    for unit, count in body.items():
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_WORK_UNITS:
            raise InvalidRequest(f"{unit} must be a whole number from 0 to 2^53, not {json.dumps(count)[:40]}")
    return dict(body)


def user_of(query: str) -> str | None:
    """The ``user`` a query names (``?user=alice``), or None: root's way to choose among users who hold the same
    run id, since ids are scoped by user. Any other parameter is refused rather than ignored."""
    try:
        parameters = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=1)
    except ValueError:
        raise InvalidRequest("the only query parameter of the run API is user, once: ?user=NAME") from None
    unknown = set(parameters) - {"user"}
    if unknown or len(parameters.get("user", [])) > 1:
        raise InvalidRequest("the only query parameter of the run API is user, once: ?user=NAME")
    if "user" not in parameters:
        return None
    return validate_text("user", parameters["user"][0], required=True)


def decoded_body(body: bytes) -> object:
    """A request's JSON body, decoded; InvalidRequest when it is not JSON."""
    try:
        return json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError) as failure:  # RecursionError: nested too deep
        raise InvalidRequest(f"the body is not valid JSON: {failure}") from failure


def status_of(failure: RunError) -> int:
    """The HTTP status that answers ``failure``."""
    return HTTP_STATUS.get(type(failure), HTTPStatus.BAD_REQUEST)


class RunAPI:
    """Routes ``/api/v1/runs`` requests to the registry and renders runs as JSON."""

    def __init__(
        self, registry: RunRegistry | RunSettler, snapshot: Callable[[], Snapshot], limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self._registry = registry
        self._snapshot = snapshot
        self._limits = limits

    def handle(self, method: str, target: str, body: bytes, caller: Caller) -> Reply:
        """The reply to one request for ``target`` (a path, with its query if any); every outcome, errors
        included, is a JSON object."""
        path, _, query = target.partition("?")
        try:
            return self._route(method, urlsplit(path).path.rstrip("/") or "/", body, caller, user_of(query))
        except HeldByCgroupRun as failure:  # the caller's own job measures the process: say which run
            return Reply(HTTPStatus.CONFLICT, {"error": str(failure), "run": self.render(failure.run)})
        except RunError as failure:
            return error(status_of(failure), str(failure))

    def _route(self, method: str, path: str, body: bytes, caller: Caller, user: str | None) -> Reply:
        if path == RUNS:
            if method == "POST":
                return self._start(body, caller)
            if method == "GET":
                runs = self._registry.list(caller.uid, caller.operator)
                return Reply(HTTPStatus.OK, {"runs": [self.render(run) for run in runs]})
            return error(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not allowed on {RUNS}; use GET or POST")
        if match := STOP.fullmatch(path):
            if method != "POST":
                return error(HTTPStatus.METHOD_NOT_ALLOWED, "use POST to stop a run")
            run_id = validate_run_id(unquote(match.group(1)), self._limits)
            run = self._registry.stop(run_id, caller.uid, user, caller.operator)
            return Reply(HTTPStatus.OK, self.render(run))
        if match := WORK.fullmatch(path):
            if method != "POST":
                return error(HTTPStatus.METHOD_NOT_ALLOWED, "use POST to report work")
            run_id = validate_run_id(unquote(match.group(1)), self._limits)
            run = self._registry.add_work(run_id, parse_work_request(decoded_body(body)), caller.uid, user)
            return Reply(HTTPStatus.OK, self.render(run))
        if match := RUN.fullmatch(path):
            if method != "GET":
                return error(HTTPStatus.METHOD_NOT_ALLOWED, "use GET to read a run")
            run_id = validate_run_id(unquote(match.group(1)), self._limits)
            run = self._registry.get(run_id, caller.uid, user, caller.operator)
            return Reply(HTTPStatus.OK, self.render(run))
        return error(HTTPStatus.NOT_FOUND, f"no such API route: {path}")

    def _start(self, body: bytes, caller: Caller) -> Reply:
        request = parse_start_request(decoded_body(body), self._limits)
        if request.cgroup is not None and not caller.operator:
            raise Forbidden(
                "only the exporter's operators (root, or the group --runs.cgroup-operators) may register a cgroup "
                "run: it measures every process in the cgroup, whoever owns it"
            )
        run, created = self._registry.start(request, caller.uid, caller.pid)
        return Reply(HTTPStatus.CREATED if created else HTTPStatus.OK, self.render(run))

    def render(self, run: Run) -> dict[str, Any]:
        """A run as the API shows it, with the freshness and health of the figures."""
        return run_object(run, self._snapshot())
