"""A tiny Prometheus HTTP API on a loopback port, for what real stores do that a real Prometheus here cannot.

It serves ``/api/v1/query``, ``/api/v1/query_range`` and ``/api/v1/series`` from series the test gives it,
and evaluates only the PromQL the reporter writes: a selector (``name{label="v",label=~"re"}``), a range
selector (``selector[90s]``), ``min|max|last|count_over_time(range)`` and ``min|max|sum|count by (labels)
(expr)``. Anything else is answered 400, so a reporter change that needs more is noticed, not faked.

Switches, each a documented behaviour of a real store:

- ``warnings``: Thanos and Mimir add ``warnings`` to a successful answer when part of the data is missing.
- ``partial_instance``: series of this instance are left out of every answer and a warning says a store did
  not answer (a Thanos partial response), unless the request says ``partial_response=false``, which Thanos
  then answers with an error.
- ``series_whole_day``: ``/api/v1/series`` answers for every UTC day the window touches, not the window
  (VictoriaMetrics' per-day index).
- ``max_query_length``: a longer ``query`` is answered 422 as VictoriaMetrics' ``-search.maxQueryLen`` does.
- ``org_id``: requests without ``X-Scope-OrgID: <org_id>`` are answered 401 (Mimir's multi-tenancy).

Every request is recorded (path, form, headers) for the test to check.
"""

from __future__ import annotations

import functools
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

DAY_SECONDS = 86400
DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")
UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
MATCHER = re.compile(r'\s*([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')
SELECTOR = re.compile(r"\s*([A-Za-z_:][\w:]*)?\s*(?:\{(.*)\})?\s*(?:\[(\w+)\])?\s*", re.DOTALL)
AGGREGATION = re.compile(r"\s*(min|max|sum|count)\s+by\s*\(([^)]*)\)\s*\((.*)\)\s*", re.DOTALL)
OVER_TIME = re.compile(r"\s*(min|max|last|count)_over_time\((.*)\)\s*", re.DOTALL)
LOOKBACK_MS = 300_000
ONE_RUN = re.compile(r'[{,]\s*run_id\s*=\s*"([^"\\]*)"')
SOME_RUNS = re.compile(r'[{,]\s*run_id\s*=~\s*"((?:[\w-]|\\\\\.)+(?:\|(?:[\w-]|\\\\\.)+)*)"')


class Unsupported(Exception):
    """PromQL this fake does not evaluate."""


@dataclass
class FakeSeries:
    """One series: its labels (``__name__`` included) and its (unix seconds, value) samples in time order."""

    labels: dict[str, str]
    samples: list[tuple[float, float]] = field(default_factory=list)


@dataclass
class Request:
    path: str
    form: dict[str, list[str]]
    headers: dict[str, str]


class FakePrometheus:
    """The server; ``url`` is its base URL, ``requests`` what it was sent. Use as a context manager."""

    def __init__(
        self,
        series: Sequence[FakeSeries],
        *,
        warnings: Sequence[str] = (),
        partial_instance: str | None = None,
        series_whole_day: bool = False,
        max_query_length: int | None = None,
        org_id: str | None = None,
    ) -> None:
        self.series = list(series)
        self.warnings = list(warnings)
        self.partial_instance = partial_instance
        self.series_whole_day = series_whole_day
        self.max_query_length = max_query_length
        self.org_id = org_id
        self.requests: list[Request] = []
        self._by_run_id: dict[str, list[FakeSeries]] | None = None
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def __enter__(self) -> FakePrometheus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def queries(self) -> list[str]:
        """The PromQL of every query and query_range request, in order."""
        return [q for request in self.requests for q in request.form.get("query", [])]

    # -- HTTP ------------------------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                form = parse_qs(parts.query, keep_blank_values=True)
                for key, values in parse_qs(body, keep_blank_values=True).items():
                    form.setdefault(key, []).extend(values)
                request = Request(parts.path, form, dict(self.headers))
                with fake._lock:
                    fake.requests.append(request)
                status, answer = fake._answer(request)
                payload = json.dumps(answer).encode() if not isinstance(answer, str) else answer.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if isinstance(answer, str) else "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def _answer(self, request: Request) -> tuple[int, Any]:
        if self.org_id is not None and request.headers.get("X-Scope-OrgID") != self.org_id:
            return 401, "no org id\n"
        query = request.form.get("query", [""])[0]
        if self.max_query_length is not None and len(query) > self.max_query_length:
            return 422, _error(
                "422",
                f"too long query; got {len(query)} bytes; mustn't exceed `-search.maxQueryLen={self.max_query_length}`"
                " command-line flag value",
            )
        partial = self.partial_instance is not None
        if partial and request.form.get("partial_response") == ["false"]:
            return 422, _error("execution", f"store of {self.partial_instance} did not answer; partial response off")
        keep = (lambda labels: labels.get("instance") != self.partial_instance) if partial else (lambda _: True)
        try:
            data = self._data(request, query, keep)
        except (Unsupported, KeyError, ValueError) as error:
            return 400, _error("bad_data", str(error))
        answer: dict[str, Any] = {"status": "success", "data": data}
        warnings = self.warnings + ([f"store of {self.partial_instance} did not answer"] if partial else [])
        if warnings:
            answer["warnings"] = warnings
        return 200, answer

    def _narrowed(self, query: str) -> list[FakeSeries]:
        """Only the series of the runs a one-selector query names with run_id="..." or run_id=~"a|b|..." of
        literal ids (a shortcut for speed: the reporter's batches name hundreds of runs)."""
        named, some = ONE_RUN.search(query), SOME_RUNS.search(query)
        if query.count("{") != 1 or not (named or some):
            return self.series
        if self._by_run_id is None:
            self._by_run_id = {}
            for s in self.series:
                self._by_run_id.setdefault(s.labels.get("run_id", ""), []).append(s)
        run_ids = [named.group(1)] if named else [i.replace("\\\\.", ".") for i in some.group(1).split("|")]
        return [s for run_id in dict.fromkeys(run_ids) for s in self._by_run_id.get(run_id, [])]

    def _data(self, request: Request, query: str, keep: Callable[[dict[str, str]], bool]) -> Any:
        form = request.form
        stored = [s for s in self.series if keep(s.labels)]
        if request.path.endswith("/api/v1/series"):
            start_ms, end_ms = _ms(form["start"][0]), _ms(form["end"][0])
            if self.series_whole_day:
                day_ms = DAY_SECONDS * 1000
                start_ms, end_ms = start_ms - start_ms % day_ms, end_ms - end_ms % day_ms + day_ms - 1
            return series_labels(stored, form["match[]"], start_ms, end_ms)
        if request.path.endswith("/api/v1/query"):
            stored = [s for s in self._narrowed(query) if keep(s.labels)]
            at_ms = _ms(form["time"][0]) if "time" in form else round(time.time() * 1000)
            return evaluate(stored, query, at_ms)
        if request.path.endswith("/api/v1/query_range"):
            start_ms, end_ms, step_ms = (_ms(form[k][0]) for k in ("start", "end", "step"))
            return evaluate_range(stored, query, start_ms, end_ms, step_ms)
        raise Unsupported(f"no endpoint {request.path}")


# -- a PromQL subset -------------------------------------------------------------------------------------------


def series_labels(stored: Iterable[FakeSeries], matchers: Sequence[str], start_ms: int, end_ms: int) -> list[dict]:
    """The label sets of the series any selector matches with a sample in [start, end]."""
    found = []
    for s in stored:
        if any(_selects(s.labels, selector) for selector in matchers) and any(
            start_ms <= round(t * 1000) <= end_ms for t, _ in s.samples
        ):
            found.append(dict(s.labels))
    return found


def evaluate(stored: Sequence[FakeSeries], query: str, at_ms: int) -> dict[str, Any]:
    """An instant query's ``data``: a matrix for a range selector, else a vector."""
    selector = SELECTOR.fullmatch(query)
    if selector and selector.group(3):
        return {"resultType": "matrix", "result": _range(stored, query, at_ms)}
    return {
        "resultType": "vector",
        "result": [
            {"metric": labels, "value": [at_ms / 1000, _format(value)]}
            for labels, value in _vector(stored, query, at_ms)
        ],
    }


def evaluate_range(stored: Sequence[FakeSeries], query: str, start_ms: int, end_ms: int, step_ms: int) -> dict:
    points: dict[tuple, tuple[dict, list]] = {}
    for at_ms in range(start_ms, end_ms + 1, step_ms):
        for labels, value in _vector(stored, query, at_ms):
            key = tuple(sorted(labels.items()))
            points.setdefault(key, (labels, []))[1].append([at_ms / 1000, _format(value)])
    return {"resultType": "matrix", "result": [{"metric": m, "values": v} for m, v in points.values()]}


def _vector(stored: Sequence[FakeSeries], query: str, at_ms: int) -> list[tuple[dict[str, str], float]]:
    if aggregation := AGGREGATION.fullmatch(query):
        operator, by, inner = aggregation.groups()
        names = [name.strip() for name in by.split(",") if name.strip()]
        groups: dict[tuple, list[float]] = {}
        for labels, value in _vector(stored, inner, at_ms):
            groups.setdefault(tuple(labels.get(name, "") for name in names), []).append(value)
        combine = {"min": min, "max": max, "sum": sum, "count": len}[operator]
        return [
            ({n: v for n, v in zip(names, key, strict=True) if v}, float(combine(values)))
            for key, values in groups.items()
        ]
    if over_time := OVER_TIME.fullmatch(query):
        function, inner = over_time.groups()
        combine = {"min": min, "max": max, "last": lambda v: v[-1], "count": len}[function]
        return [
            ({k: v for k, v in item["metric"].items() if k != "__name__"}, float(combine(values)))
            for item in _range(stored, inner, at_ms)
            if (values := [float(value) for _, value in item["values"]])
        ]
    selector = SELECTOR.fullmatch(query)
    if not selector or selector.group(3):
        raise Unsupported(f"the fake does not evaluate {query!r}")
    found = []
    for s in stored:
        if _selects(s.labels, query):
            recent = [v for t, v in s.samples if at_ms - LOOKBACK_MS < round(t * 1000) <= at_ms]
            if recent:
                found.append((dict(s.labels), recent[-1]))
    return found


def _range(stored: Sequence[FakeSeries], query: str, at_ms: int) -> list[dict[str, Any]]:
    selector = SELECTOR.fullmatch(query)
    if not selector or not selector.group(3):
        raise Unsupported(f"expected a range selector, not {query!r}")
    width_ms = _duration_ms(selector.group(3))
    plain = query[: query.rindex("[")]
    result = []
    for s in stored:
        if not _selects(s.labels, plain):
            continue
        values = [[t, _format(v)] for t, v in s.samples if at_ms - width_ms < round(t * 1000) <= at_ms]
        if values:
            result.append({"metric": dict(s.labels), "values": values})
    return result


def _selects(labels: dict[str, str], selector: str) -> bool:
    name, matchers = _parse_selector(selector)
    if name and labels.get("__name__") != name:
        return False
    for label, operator, value, pattern in matchers:
        have = labels.get(label, "")
        equal = have == value if pattern is None else pattern.fullmatch(have) is not None
        if equal != (operator in ("=", "=~")):
            return False
    return True


@functools.lru_cache(maxsize=4096)
def _parse_selector(selector: str) -> tuple[str, tuple[tuple[str, str, str, re.Pattern[str] | None], ...]]:
    """A series selector as its metric name and its matchers (label, operator, value, compiled regex or None)."""
    match = SELECTOR.fullmatch(selector)
    if not match or match.group(3):
        raise Unsupported(f"expected a series selector, not {selector!r}")
    text, matchers, position = match.group(2) or "", [], 0
    while position < len(text.rstrip()):
        matcher = MATCHER.match(text, position)
        if not matcher:
            raise Unsupported(f"cannot parse the label matchers {text!r}")
        label, operator, quoted = matcher.groups()
        value = re.sub(r"\\(.)", r"\1", quoted)
        matchers.append((label, operator, value, re.compile(value) if "~" in operator else None))
        position = matcher.end()
    return match.group(1) or "", tuple(matchers)


def _duration_ms(text: str) -> int:
    parts = DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise Unsupported(f"bad duration {text!r}")
    return sum(int(number) * UNITS_MS[unit] for number, unit in parts)


def _ms(text: str) -> int:
    return round(float(text) * 1000)


def _format(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _error(error_type: str, error: str) -> dict[str, str]:
    return {"status": "error", "errorType": error_type, "error": error}
