"""The reporter's only network code: a small client for the Prometheus HTTP API.

Only three endpoints are used, ``/api/v1/query``, ``/api/v1/query_range`` and ``/api/v1/series``, so the
client works against anything that speaks the standard API: Prometheus, Thanos Query, Grafana Mimir,
VictoriaMetrics. Queries go out as POST form data (Prometheus accepts both GET and POST), so long PromQL never
hits a URL length limit.

Every failure becomes one of the one-line exceptions below, which the CLI prints without a traceback:

- ``PrometheusUnreachable``: nothing answered (refused, DNS, timeout, TLS), after the configured retries.
- ``PrometheusQueryError``: Prometheus answered 4xx; carries its ``errorType`` and ``error`` text.
- ``PrometheusServerError``: it kept answering 5xx until the retries ran out.
- ``BadPrometheusURL``: the URL is not http(s), or what answers is not a Prometheus HTTP API.
- ``PartialResponse``: the answer carries warnings (Thanos, Mimir: some store or querier did not answer), so
  its data may be incomplete; unless ``allow_partial``, when the warnings are logged instead.

Every request asks Thanos for no partial responses (``partial_response=false``; other servers ignore it), so a
store that does not answer is an error rather than silently low numbers.

Times are unix seconds (floats). Prometheus works in whole milliseconds, so the client does its time
arithmetic in integer milliseconds: chunk seams and window edges then fall exactly where Prometheus puts them.
"""

from __future__ import annotations

import gc
import ipaddress
import itertools
import logging
import math
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson
import requests

logger = logging.getLogger(__name__)

# Prometheus refuses a range query when (end - start) / step > 11,000. Chunks of 10,000 points (9,999 steps)
# stay well below that.
MAX_POINTS_PER_CHUNK = 10_000

URL_HINT = "start it or pass --prometheus / PROMETHEUS_URL"


class PrometheusError(Exception):
    """Base of every error this module raises; its message is one line, fit to print as is."""


class PrometheusUnreachable(PrometheusError):
    """Nothing answered at the URL: connection refused, name not resolved, timeout or TLS failure."""


class PrometheusServerError(PrometheusError):
    """The server kept answering 5xx until the retries ran out."""


class BadPrometheusURL(PrometheusError):
    """The URL is not http(s), or the server that answers there is not a Prometheus HTTP API."""


class PartialResponse(PrometheusError):
    """The answer carried warnings, so its data may lack what a store or querier did not answer."""


class PrometheusQueryError(PrometheusError):
    """Prometheus rejected a request with a 4xx status; ``error_type`` and ``error`` are its own words."""

    def __init__(self, message: str, *, status: int, error_type: str, error: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.error = error


@dataclass(frozen=True, eq=False)
class Series:
    """One time series: its label set and its samples, in ascending time order.

    ``timestamps`` are unix seconds with millisecond resolution, ``values`` are float64 (NaN and ±Inf as
    Prometheus sent them). Both arrays are read-only and have the same length.
    """

    labels: dict[str, str]
    timestamps: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.timestamps)


@dataclass(frozen=True)
class InstantSample:
    """One value of an instant vector (or a scalar, with empty ``labels``) at ``timestamp`` (unix seconds)."""

    labels: dict[str, str]
    timestamp: float
    value: float


@dataclass(frozen=True)
class WindowAnswer:
    """What a function over one window of samples, (``start``, ``end``] in unix seconds, gave per series."""

    start: float
    end: float
    samples: list[InstantSample]


class PrometheusClient:
    """A client for the Prometheus HTTP API over one ``requests.Session``.

    ``token`` is sent as ``Authorization: Bearer``; ``basic_auth`` is (user, password); at most one of the two.
    ``ca_bundle`` is a PEM file to verify the server with; ``insecure`` turns verification off. Connection
    errors, timeouts and 5xx answers are retried ``retries`` times, waiting ``backoff_seconds`` and then twice
    as long each time; 4xx answers are final. ``timeout`` (seconds) bounds connecting and each read.
    ``headers`` go with every request (Mimir's tenant: ``X-Scope-OrgID``). ``allow_partial`` accepts answers
    with warnings (logged) and lets Thanos answer partially; ``dedup`` asks Thanos to merge HA replicas.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        ca_bundle: str | None = None,
        insecure: bool = False,
        timeout: float = 30.0,
        retries: int = 3,
        backoff_seconds: float = 0.5,
        headers: Mapping[str, str] | None = None,
        allow_partial: bool = False,
        dedup: bool = False,
    ) -> None:
        self.url = _base_url(url)
        if token is not None and basic_auth is not None:
            raise ValueError("pass either a bearer token or basic auth, not both")
        if ca_bundle is not None and insecure:
            raise ValueError("pass either a CA bundle or insecure, not both")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, not {retries!r}")
        if not (backoff_seconds >= 0 and math.isfinite(backoff_seconds)):
            raise ValueError(f"backoff_seconds must be 0 or more, not {backoff_seconds!r}")
        self.timeout = timeout
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.allow_partial = allow_partial
        self._warned: set[str] = set()
        # nocache: VictoriaMetrics evaluates a query within 30 s of now as of 30 s earlier (-search.latencyOffset)
        # unless asked not to cache it, so a summary of a run that just ended would miss it; other stores ignore it.
        self._always = [("partial_response", "true" if allow_partial else "false"), ("nocache", "1")]
        self._always += [("dedup", "true")] if dedup else []
        self._headers = {
            **uncompressed_on_loopback(self.url),
            **(headers or {}),
            **({"Authorization": f"Bearer {token}"} if token is not None else {}),
        }
        self._basic_auth = basic_auth
        self._verify: bool | str = ca_bundle if ca_bundle is not None else not insecure
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()

    @property
    def _session(self) -> requests.Session:
        """This thread's session: the reporter reads batches of runs from two threads, and requests' sessions are
        not made to be shared between threads."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update(self._headers)
            session.auth = self._basic_auth
            session.verify = self._verify
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        """Close the pooled connections."""
        with self._sessions_lock:
            for session in self._sessions:
                session.close()

    def __enter__(self) -> PrometheusClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the three endpoints ---------------------------------------------------------------------------------

    def query(self, expr: str, at: float | None = None) -> list[Series | InstantSample]:
        """Evaluate ``expr`` at one instant (``at``, unix seconds; the server's now when None).

        A vector result gives one ``InstantSample`` per series; a scalar gives a single ``InstantSample`` with
        empty labels. A range selector such as ``metric[1h]`` gives a matrix: one ``Series`` per series with
        its raw samples, which is how the reporter reads data without Prometheus' extrapolation.
        """
        at_ms = None if at is None else _to_ms(at, "at")
        return self._query_ms(expr, at_ms)

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        """Evaluate ``expr`` at every ``start + k*step`` up to ``end``, stitched into one ``Series`` per label set.

        Prometheus allows at most 11,000 points per series in one request, so longer ranges are split into
        chunks of at most 10,000 points (see ``plan_range_chunks``). Each chunk starts on the same step grid as
        the whole range, so the result has exactly the points one unlimited query would have: none duplicated
        or missing at the seams. A series missing from some chunks keeps the points of the others.
        ``step`` must be a whole number of milliseconds, the resolution Prometheus evaluates at.
        """
        step_ms = _step_ms(step)
        start_ms, end_ms = _to_ms(start, "start"), _to_ms(end, "end")
        if end_ms < start_ms:
            raise ValueError(f"end ({end}) is before start ({start})")
        pieces: dict[tuple[tuple[str, str], ...], list[Series]] = {}
        labels_of: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
        for chunk_start_ms, chunk_end_ms in _chunks_ms(start_ms, end_ms, step_ms):
            data = self._api(
                "query_range",
                [
                    ("query", expr),
                    ("start", _format_ms(chunk_start_ms)),
                    ("end", _format_ms(chunk_end_ms)),
                    ("step", _format_ms(step_ms)),
                ],
                context=expr,
            )
            for item in _parse_result(data, context=expr):
                if not isinstance(item, Series):
                    raise PrometheusError(f"query_range of {_short(expr)} did not return a matrix")
                key = _label_key(item.labels)
                labels_of.setdefault(key, item.labels)
                pieces.setdefault(key, []).append(item)
        return [_concatenate(labels_of[key], pieces[key]) for key in sorted(pieces)]

    def series(self, matchers: Sequence[str], start: float, end: float) -> list[dict[str, str]]:
        """The label sets of every series matched by any of ``matchers`` with samples between start and end.

        This is how the reporter finds runs and nodes without loading any samples.
        """
        if isinstance(matchers, str) or not matchers:
            raise ValueError("series() needs a non-empty list of series selectors, e.g. ['up{job=\"impact\"}']")
        start_ms, end_ms = _to_ms(start, "start"), _to_ms(end, "end")
        form = [("match[]", matcher) for matcher in matchers]
        form += [("start", _format_ms(start_ms)), ("end", _format_ms(end_ms))]
        data = self._api("series", form, context=", ".join(matchers))
        if not isinstance(data, list) or not all(isinstance(labels, dict) for labels in data):
            raise BadPrometheusURL(f"{self.url} answered /api/v1/series with something other than label sets")
        return [dict(labels) for labels in data]

    def raw_samples(
        self, selector: str, start: float, end: float, max_window_seconds: float = 3600 * 6
    ) -> list[Series]:
        """Every raw sample with a timestamp in (start, end] of every series ``selector`` matches.

        Reads consecutive windows of at most ``max_window_seconds`` as instant queries of
        ``selector[<window>ms]`` evaluated at each window's end, so memory and the server's per-query sample
        limit stay bounded however long the range. Samples are kept only when they fall inside their own
        window's (start, end], so a sample on a window edge is counted once whether the server's range
        selectors are left-closed (Prometheus 2) or left-open (Prometheus 3). Results are stitched per label set.
        This is what reporting without extrapolation needs: the values exactly as scraped.
        """
        pieces: dict[tuple[tuple[str, str], ...], list[Series]] = {}
        labels_of: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
        for window_start_ms, window_end_ms in _windows_ms(start, end, max_window_seconds):
            expr = f"{selector}[{window_end_ms - window_start_ms}ms]"
            for item in self._query_ms(expr, window_end_ms):
                if not isinstance(item, Series):
                    raise PrometheusError(
                        f"{_short(expr)} did not return a range vector; raw_samples needs a plain series selector"
                    )
                millis = _ms_array(item.timestamps)
                keep = (millis > window_start_ms) & (millis <= window_end_ms)
                if not keep.any():
                    continue
                key = _label_key(item.labels)
                labels_of.setdefault(key, item.labels)
                pieces.setdefault(key, []).append(_series(item.labels, item.timestamps[keep], item.values[keep]))
        return [_concatenate(labels_of[key], pieces[key]) for key in sorted(pieces)]

    def window_rollups(
        self, function: str, selector: str, start: float, end: float, max_window_seconds: float = 3600 * 6
    ) -> list[WindowAnswer]:
        """``function(selector[<window>ms])`` (a ``*_over_time`` function) for consecutive windows of at most
        ``max_window_seconds`` that cover (start, end], in time order: one value per series and window, so the
        server summarises the samples instead of sending them. The windows are raw_samples' windows, so the
        server's per-query sample limit binds however long the range. Labels keep ``__name__`` only where the
        function does (Prometheus drops it from most ``*_over_time`` results)."""
        answers = []
        for window_start_ms, window_end_ms in _windows_ms(start, end, max_window_seconds):
            expr = f"{function}({selector}[{window_end_ms - window_start_ms}ms])"
            answer = self._query_ms(expr, window_end_ms)
            if not all(isinstance(item, InstantSample) for item in answer):
                raise PrometheusError(f"{_short(expr)} did not return an instant vector")
            samples = [item for item in answer if isinstance(item, InstantSample)]
            answers.append(WindowAnswer(window_start_ms / 1000, window_end_ms / 1000, samples))
        return answers

    # -- HTTP ------------------------------------------------------------------------------------------------

    def _query_ms(self, expr: str, at_ms: int | None) -> list[Series | InstantSample]:
        form = [("query", expr)]
        if at_ms is not None:
            form.append(("time", _format_ms(at_ms)))
        with paused_gc():
            return _parse_result(self._api("query", form, context=expr), context=expr)

    def _api(self, endpoint: str, form: list[tuple[str, str]], *, context: str) -> Any:
        """POST ``form`` to ``/api/v1/<endpoint>`` with retries; the ``data`` of a successful answer."""
        url = f"{self.url}/api/v1/{endpoint}"
        attempts = self.retries + 1
        failure = ""
        last_5xx: requests.Response | None = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff_seconds * 2 ** (attempt - 1))
            try:
                response = self._session.post(url, data=form + self._always, timeout=self.timeout)
            except requests.exceptions.SSLError as error:
                raise PrometheusUnreachable(
                    f"cannot reach Prometheus at {self.url}: TLS failed ({_reason(error, self.timeout)}); "
                    "pass a CA bundle for its certificate, or turn verification off"
                ) from None
            except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema) as error:
                raise BadPrometheusURL(f"{self.url} is not a usable URL: {error}") from None
            except requests.RequestException as error:  # refused, DNS, timeout, reset mid-answer
                failure = _reason(error, self.timeout)
                last_5xx = None
                logger.debug("attempt %d/%d at %s failed: %s", attempt + 1, attempts, url, failure)
                continue
            if response.status_code >= 500:
                last_5xx = response
                logger.debug("attempt %d/%d at %s: HTTP %d", attempt + 1, attempts, url, response.status_code)
                continue
            return self._decode(response, endpoint, context)
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        if last_5xx is not None:
            body = _json(last_5xx)
            detail = _envelope_error(body) or _snippet(last_5xx.text)
            raise PrometheusServerError(
                f"Prometheus at {self.url} answered HTTP {last_5xx.status_code} to /api/v1/{endpoint} "
                f"({tries}): {detail}"
            )
        raise PrometheusUnreachable(f"cannot reach Prometheus at {self.url}: {failure} ({tries}); {URL_HINT}")

    def _decode(self, response: requests.Response, endpoint: str, context: str) -> Any:
        body = _json(response)
        is_envelope = isinstance(body, dict) and body.get("status") in ("success", "error")
        status = response.status_code
        if is_envelope and body["status"] == "error":
            error_type = str(body.get("errorType", "unknown"))
            error = _one_line(str(body.get("error", "")))
            raise PrometheusQueryError(
                f"Prometheus rejected {_short(context)}: {error_type}: {error} (HTTP {status})",
                status=status,
                error_type=error_type,
                error=error,
            )
        if status in (401, 403):
            raise PrometheusQueryError(
                f"Prometheus at {self.url} refused access (HTTP {status}): pass a bearer token or basic auth "
                "that it accepts, or the header it needs (Mimir's tenant: --header X-Scope-OrgID=<tenant>)",
                status=status,
                error_type="unauthorized" if status == 401 else "forbidden",
                error=_snippet(response.text),
            )
        if not is_envelope or status != 200 or "data" not in body:
            what = response.headers.get("Content-Type", "no content type").split(";")[0]
            raise BadPrometheusURL(
                f"{self.url} answered /api/v1/{endpoint} with HTTP {status} ({what}), which is not the Prometheus "
                "HTTP API; pass the base URL that serves /api/v1 (e.g. http://prometheus:9090), not a UI page"
            )
        warnings = [_one_line(str(warning)) for warning in body.get("warnings") or []]
        if warnings and not self.allow_partial:
            raise PartialResponse(
                f"Prometheus at {self.url} warned about {_short(context)}: {'; '.join(warnings)}; the answer may "
                "be partial, so no figures were made: fix the store or querier it names, or pass --allow-partial "
                "to accept partial data"
            )
        for warning in warnings:
            if warning not in self._warned:
                self._warned.add(warning)
                logger.warning("Prometheus at %s warns (partial data accepted): %s", self.url, warning)
        return body["data"]


# -- ranges in integer milliseconds ----------------------------------------------------------------------------


def plan_range_chunks(start: float, end: float, step: float) -> list[tuple[float, float]]:
    """The (start, end) of each request ``query_range`` makes for this range, in unix seconds.

    Chunk k covers grid points ``start + i*step`` for i in [k*10000, k*10000 + 9999], so every chunk is
    ``step * 9999`` long (the last one shorter) and starts one step after the previous one ends.
    """
    step_ms = _step_ms(step)
    start_ms, end_ms = _to_ms(start, "start"), _to_ms(end, "end")
    if end_ms < start_ms:
        raise ValueError(f"end ({end}) is before start ({start})")
    return [(a / 1000, b / 1000) for a, b in _chunks_ms(start_ms, end_ms, step_ms)]


def _chunks_ms(start_ms: int, end_ms: int, step_ms: int) -> Iterable[tuple[int, int]]:
    points = (end_ms - start_ms) // step_ms + 1
    for first in range(0, points, MAX_POINTS_PER_CHUNK):
        last = min(first + MAX_POINTS_PER_CHUNK, points) - 1
        yield start_ms + first * step_ms, start_ms + last * step_ms


def _to_ms(seconds: float, what: str) -> int:
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be unix seconds, not {seconds!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number of unix seconds, not {seconds!r}")
    return round(value * 1000)


def _step_ms(step: float) -> int:
    value = float(step)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"step must be a positive number of seconds, not {step!r}")
    step_ms = round(value * 1000)
    if step_ms < 1 or abs(value * 1000 - step_ms) > 1e-6 * step_ms:
        raise ValueError(
            f"step {step!r} is not a whole number of milliseconds; Prometheus evaluates on a millisecond grid"
        )
    return step_ms


def _format_ms(ms: int) -> str:
    """Milliseconds as exact decimal seconds, e.g. 1700000000123 -> '1700000000.123'."""
    sign = "-" if ms < 0 else ""
    whole, frac = divmod(abs(ms), 1000)
    return f"{sign}{whole}.{frac:03d}"


def _windows_ms(start: float, end: float, max_window_seconds: float) -> list[tuple[int, int]]:
    """Consecutive (start, end] windows in milliseconds, each at most ``max_window_seconds`` long, that cover
    (start, end]: raw_samples' and window_rollups' windows are the same."""
    start_ms, end_ms = _to_ms(start, "start"), _to_ms(end, "end")
    window_ms = _to_ms(max_window_seconds, "max_window_seconds")
    if window_ms < 1:
        raise ValueError(f"max_window_seconds must be at least 0.001, not {max_window_seconds!r}")
    edges = [*range(start_ms, end_ms, window_ms), end_ms]
    return list(itertools.pairwise(edges))


def _ms_array(timestamps: np.ndarray) -> np.ndarray:
    return np.round(timestamps * 1000).astype(np.int64)


# -- results -----------------------------------------------------------------------------------------------------


def _parse_result(data: Any, *, context: str) -> list[Series | InstantSample]:
    """The ``data`` of a query answer as samples and series (pure; tested on literal JSON)."""
    if not isinstance(data, dict) or "resultType" not in data:
        raise BadPrometheusURL(f"the answer to {_short(context)} has no resultType; is this a Prometheus API?")
    result_type, result = data["resultType"], data.get("result")
    if result_type == "scalar":
        return [InstantSample({}, float(result[0]), _value(result[1]))]
    if result_type == "vector":
        samples: list[Series | InstantSample] = []
        for item in result:
            if "value" not in item:
                raise PrometheusError(f"{_short(context)} returned a native histogram; query a float series")
            samples.append(InstantSample(dict(item["metric"]), float(item["value"][0]), _value(item["value"][1])))
        return samples
    if result_type == "matrix":
        series: list[Series | InstantSample] = []
        for item in result:
            if "values" not in item and "histograms" in item:
                raise PrometheusError(f"{_short(context)} returned native histograms; query a float series")
            times, values = zip(*item["values"], strict=True) if item.get("values") else ((), ())
            # numpy parses the value strings ('NaN', '+Inf' and '-Inf' too) without a Python call per sample.
            series.append(_series(dict(item["metric"]), np.array(times, np.float64), np.array(values, np.float64)))
        return series
    raise PrometheusError(f"{_short(context)} returned a {result_type} result; expected a vector, matrix or scalar")


def _value(text: str) -> float:
    """A sample value as Prometheus writes it: decimal, 'NaN', '+Inf' or '-Inf'."""
    return float(text)


def _series(labels: dict[str, str], timestamps: np.ndarray, values: np.ndarray) -> Series:
    timestamps = np.array(timestamps, dtype=np.float64)
    values = np.array(values, dtype=np.float64)
    timestamps.flags.writeable = False
    values.flags.writeable = False
    return Series(labels, timestamps, values)


def _label_key(labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def _concatenate(labels: dict[str, str], pieces: list[Series]) -> Series:
    timestamps = np.concatenate([piece.timestamps for piece in pieces])
    values = np.concatenate([piece.values for piece in pieces])
    order = np.argsort(timestamps, kind="stable")
    return _series(labels, timestamps[order], values[order])


# -- messages ----------------------------------------------------------------------------------------------------


def uncompressed_on_loopback(url: str) -> dict[str, str]:
    """``Accept-Encoding: identity`` for a store on this machine: gzip saves nothing on a loopback connection and
    costs both ends CPU (a fifth of what a Prometheus on the same two cores spent serving a report of 10,000 runs);
    {} for any other, whose answers come compressed."""
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return {"Accept-Encoding": "identity"} if loopback else {}


def _base_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        hint = f"; did you mean http://{url.strip()}?" if "://" not in url else ""
        raise BadPrometheusURL(f"Prometheus URL must start with http:// or https://, not {url!r}{hint}")
    if not parts.hostname:
        raise BadPrometheusURL(f"Prometheus URL {url!r} has no host")
    if parts.query or parts.fragment:
        raise BadPrometheusURL(f"Prometheus URL {url!r} must not have a query string or fragment")
    return url.strip().rstrip("/")


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\"\)\]]+)")


def _reason(error: Exception, timeout: float) -> str:
    """A short reason for a failed connection, without urllib3's nesting."""
    if isinstance(error, requests.Timeout):
        return f"no answer within {timeout:g} s"
    text = str(error)
    match = _ERRNO.search(text)
    if match:
        return match.group(1).strip().rstrip(".").lower()
    if "RemoteDisconnected" in text or "Connection aborted" in text:
        return "the connection was closed without an answer"
    return _snippet(f"{type(error).__name__}: {text}")


@contextmanager
def paused_gc() -> Iterator[None]:
    """Python's cycle collector off while an answer is decoded into millions of lists and strings, none of them
    in a cycle: each collection would walk every object the report already holds, which took three quarters of
    the decoding time of a report of 10,000 runs."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _json(response: requests.Response) -> Any:
    """The answer's JSON (None when it is not JSON), decoded by orjson, about twice as fast as the standard
    library's decoder on the millions of samples of a lab's report."""
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None


def _envelope_error(body: Any) -> str | None:
    if isinstance(body, dict) and body.get("status") == "error":
        return f"{body.get('errorType', 'unknown')}: {_one_line(str(body.get('error', '')))}"
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _snippet(text: str, limit: int = 200) -> str:
    text = _one_line(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(expr: str, limit: int = 120) -> str:
    return repr(_snippet(expr, limit))


# -- times for the CLI (durations: experiment_impact_tracker/durations.py) ---------------------------------------

_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")


def parse_time(text: str | float, *, now: float | None = None) -> float:
    """Unix seconds from "now", a number of unix seconds, or an RFC 3339 time such as "2026-11-27T10:00:00Z".

    RFC 3339 times need a zone ("Z" or an offset such as "+01:00"): a reporter run on a laptop in another
    zone must not silently shift a run by hours. ``now`` overrides the clock (for tests).
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        stripped = str(text).strip()
        if stripped.lower() == "now":
            return time.time() if now is None else now
        if _NUMBER.fullmatch(stripped):
            value = float(stripped)
        else:
            return _parse_rfc3339(stripped, text)
    if not math.isfinite(value):
        raise ValueError(f"invalid time {text!r}: not a finite number of unix seconds")
    return value


def _parse_rfc3339(stripped: str, original: object) -> float:
    iso = stripped[:-1] + "+00:00" if stripped[-1:] in ("Z", "z") else stripped
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(
            f"invalid time {original!r}: use 'now', unix seconds, or RFC 3339 such as 2026-11-27T10:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"time {original!r} has no zone: add 'Z' for UTC or an offset such as +01:00")
    return moment.astimezone(timezone.utc).timestamp()
