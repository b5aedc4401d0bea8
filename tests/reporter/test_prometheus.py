"""impact_reporter.prometheus against a real Prometheus, real exporters and real local HTTP/TCP servers that fail."""

from __future__ import annotations

import base64
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import pytest
import requests

from experiment_impact_tracker.durations import parse_duration
from impact_reporter.prometheus import (
    BadPrometheusURL,
    InstantSample,
    PrometheusClient,
    PrometheusError,
    PrometheusQueryError,
    PrometheusServerError,
    PrometheusUnreachable,
    Series,
    _parse_result,
    parse_time,
    plan_range_chunks,
    uncompressed_on_loopback,
)
from tests.fakes.powercap import FakePowercap
from tests.servers import ExporterProcess, PrometheusServer, free_port, wait_for

SUCCESS_SCALAR = json.dumps({"status": "success", "data": {"resultType": "scalar", "result": [1700000000, "1"]}})


def ms_str(ms: int) -> str:
    """Milliseconds as exact decimal seconds, written independently of the module under test."""
    return f"{ms // 1000}.{ms % 1000:03d}"


def ms_of(timestamps: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(timestamps) * 1000).astype(np.int64)


# -- real local servers that misbehave on purpose ---------------------------------------------------------------


class ScriptedServer:
    """An HTTP server on 127.0.0.1 that answers each request with the next (status, content type, body)
    of its script (the last one repeats) and records what it was sent."""

    def __init__(self, script: list[tuple[int, str, str]]) -> None:
        self.script = script
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                server.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
                )
                status, content_type, text = server.script[min(len(server.requests), len(server.script)) - 1]
                payload = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class TcpServer:
    """A TCP listener on 127.0.0.1 that counts connections and either closes them at once or never answers."""

    def __init__(self, *, answer: bool) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        self.held: list[socket.socket] = []
        self.close_at_once = answer
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            if self.close_at_once:
                conn.close()
            else:
                self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def scripted() -> Iterator[Callable[[list[tuple[int, str, str]]], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(script: list[tuple[int, str, str]]) -> ScriptedServer:
        servers.append(ScriptedServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def tcp_server() -> Iterator[Callable[..., TcpServer]]:
    servers: list[TcpServer] = []

    def start(*, answer: bool) -> TcpServer:
        servers.append(TcpServer(answer=answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


# -- chunk planning (pure) -------------------------------------------------------------------------------------


def test_plan_range_chunks_keeps_every_chunk_on_the_grid_under_ten_thousand_points() -> None:
    chunks = plan_range_chunks(100.0, 125.5, 0.001)
    assert chunks == [(100.0, 109.999), (110.0, 119.999), (120.0, 125.5)]

    month = plan_range_chunks(0.0, 30 * 86400.0, 15.0)
    assert len(month) == 18  # 172,801 points
    for (start, end), (next_start, _) in zip(month[:-1], month[1:], strict=True):
        assert end - start == 15.0 * 9999
        assert next_start - end == 15.0
    assert month[0][0] == 0.0 and month[-1][1] == 30 * 86400.0
    assert all(start % 15.0 == 0 and end % 15.0 == 0 for start, end in month)


def test_plan_range_chunks_ends_on_the_last_grid_point_and_rejects_bad_steps() -> None:
    assert plan_range_chunks(10.0, 10.0, 1.0) == [(10.0, 10.0)]
    assert plan_range_chunks(10.0, 12.5, 1.0) == [(10.0, 12.0)]
    with pytest.raises(ValueError, match="whole number of milliseconds"):
        plan_range_chunks(0.0, 1.0, 0.0005)
    with pytest.raises(ValueError, match="positive"):
        plan_range_chunks(0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="before start"):
        plan_range_chunks(2.0, 1.0, 1.0)


# -- results parsed from literal JSON --------------------------------------------------------------------------


def test_parse_result_reads_nan_and_infinities_in_every_result_type() -> None:
    vector = _parse_result(
        {
            "resultType": "vector",
            "result": [
                {"metric": {"k": "nan"}, "value": [1700000000.5, "NaN"]},
                {"metric": {"k": "inf"}, "value": [1700000000.5, "+Inf"]},
                {"metric": {"k": "ninf"}, "value": [1700000000.5, "-Inf"]},
                {"metric": {"k": "x"}, "value": [1700000000.5, "1.25e-3"]},
            ],
        },
        context="q",
    )
    assert [s.labels["k"] for s in vector] == ["nan", "inf", "ninf", "x"]
    assert math.isnan(vector[0].value)
    assert vector[1].value == math.inf and vector[2].value == -math.inf and vector[3].value == 0.00125
    assert vector[0].timestamp == 1700000000.5

    (scalar,) = _parse_result({"resultType": "scalar", "result": [12.25, "+Inf"]}, context="q")
    assert scalar == InstantSample({}, 12.25, math.inf)

    (series,) = _parse_result(
        {"resultType": "matrix", "result": [{"metric": {"a": "b"}, "values": [[1, "1"], [2.001, "NaN"], [3, "-Inf"]]}]},
        context="q",
    )
    assert isinstance(series, Series) and series.labels == {"a": "b"}
    assert series.timestamps.dtype == np.float64 and series.values.dtype == np.float64
    assert series.timestamps.tolist() == [1.0, 2.001, 3.0]
    assert series.values[0] == 1.0 and math.isnan(series.values[1]) and series.values[2] == -math.inf
    with pytest.raises(ValueError):
        series.values[0] = 2.0  # read-only


def test_parse_result_refuses_strings_histograms_and_non_api_data() -> None:
    with pytest.raises(PrometheusError, match="string result"):
        _parse_result({"resultType": "string", "result": [1, "x"]}, context="q")
    with pytest.raises(PrometheusError, match="native histogram"):
        _parse_result({"resultType": "vector", "result": [{"metric": {}, "histogram": [1, {}]}]}, context="q")
    with pytest.raises(BadPrometheusURL, match="no resultType"):
        _parse_result(["not", "a", "result"], context="q")


# -- durations and times ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30d", 2592000.0),
        ("1h30m", 5400.0),
        ("90s", 90.0),
        ("250ms", 0.25),
        ("1w2d", 777600.0),
        ("1y", 31536000.0),
        ("1m30s", 90.0),
        ("90", 90.0),
        ("1.5", 1.5),
        (" 2h ", 7200.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1.5h", "30m1h", "-5s", "1x", "1h 30m", "5 s"])
def test_parse_duration_rejects_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid duration .*e\.g\. 30d, 1h30m, 90s"):
        parse_duration(text)


def test_parse_time() -> None:
    assert parse_time("2026-11-27T10:00:00Z") == 1795773600.0
    assert parse_time("2026-11-27T11:30:00.250+01:30") == 1795773600.25
    assert parse_time("1795773600") == 1795773600.0
    assert parse_time("1795773600.5") == 1795773600.5
    assert parse_time(1795773600) == 1795773600.0
    assert parse_time("now", now=123.0) == 123.0
    assert abs(parse_time("now") - time.time()) < 5
    with pytest.raises(ValueError, match="has no zone: add 'Z'"):
        parse_time("2026-11-27T10:00:00")
    with pytest.raises(ValueError, match="use 'now', unix seconds, or RFC 3339"):
        parse_time("yesterday")
    with pytest.raises(ValueError, match="finite"):
        parse_time(float("nan"))


# -- the real Prometheus ----------------------------------------------------------------------------------------


@pytest.mark.integration
def test_query_range_stitches_chunks_exactly_onto_the_grid(prometheus: PrometheusServer) -> None:
    start_ms = (int(time.time()) - 3600) * 1000 + 7  # off the whole second on purpose
    end_ms = start_ms + 25_500  # 25,501 points at 1 ms: 3 chunks
    step_ms = 1
    # One request for the whole range is refused: chunking is needed.
    whole = requests.get(
        f"{prometheus.url}/api/v1/query_range",
        params={"query": "time()", "start": ms_str(start_ms), "end": ms_str(end_ms), "step": "0.001"},
        timeout=10,
    )
    assert whole.status_code == 400 and "11,000" in whole.json()["error"]

    client = PrometheusClient(prometheus.url)
    assert len(plan_range_chunks(start_ms / 1000, end_ms / 1000, 0.001)) == 3
    (series,) = client.query_range("time()", start_ms / 1000, end_ms / 1000, 0.001)
    expected_ms = start_ms + step_ms * np.arange(25_501, dtype=np.int64)
    assert series.labels == {}
    assert np.array_equal(ms_of(series.timestamps), expected_ms)  # no duplicate, none missing
    assert np.array_equal(series.timestamps, expected_ms / 1000)  # bit-exact floats
    assert np.array_equal(series.values, series.timestamps)  # time() is the evaluation time

    # The same grid, fetched by hand as three unchunked requests, gives the same points.
    by_hand_t: list[float] = []
    by_hand_v: list[float] = []
    for first in range(0, 25_501, 10_000):
        last = min(first + 9_999, 25_500)
        data = prometheus.api(
            "query_range", query="time()", start=ms_str(start_ms + first), end=ms_str(start_ms + last), step="0.001"
        )
        by_hand_t += [float(t) for t, _ in data["result"][0]["values"]]
        by_hand_v += [float(v) for _, v in data["result"][0]["values"]]
    assert np.array_equal(series.timestamps, by_hand_t) and np.array_equal(series.values, by_hand_v)

    # And one coarse unchunked query on every 10th grid point agrees with Prometheus' own grid.
    coarse = prometheus.api("query_range", query="time()", start=ms_str(start_ms), end=ms_str(end_ms), step="0.01")
    coarse_t = [float(t) for t, _ in coarse["result"][0]["values"]]
    assert len(coarse_t) == 2_551
    assert np.array_equal(series.timestamps[::10], coarse_t)


@pytest.mark.integration
def test_query_range_stitches_series_that_are_absent_from_some_chunks(prometheus: PrometheusServer) -> None:
    start_ms = (int(time.time()) - 7200) * 1000 + 3
    end_ms = start_ms + 25_500
    early_until, edges_before, edges_after = start_ms + 15_000, start_ms + 5_000, start_ms + 21_000
    expr = (
        f'label_replace(vector(time()) < {ms_str(early_until)}, "part", "early", "", "")'
        f' or label_replace(vector(time()) >= {ms_str(early_until)}, "part", "late", "", "")'
        f" or label_replace(vector(time()) < {ms_str(edges_before)} or vector(time()) > {ms_str(edges_after)},"
        ' "part", "edges", "", "")'
    )
    result = PrometheusClient(prometheus.url).query_range(expr, start_ms / 1000, end_ms / 1000, 0.001)
    grid = start_ms + np.arange(25_501, dtype=np.int64)
    expected = {
        "early": grid[grid < early_until],  # chunks 1 and 2
        "late": grid[grid >= early_until],  # chunks 2 and 3
        "edges": grid[(grid < edges_before) | (grid > edges_after)],  # chunks 1 and 3, not 2
    }
    assert sorted(s.labels["part"] for s in result) == ["early", "edges", "late"]
    for series in result:
        want = expected[series.labels["part"]]
        assert np.array_equal(ms_of(series.timestamps), want), series.labels
        assert np.array_equal(series.values, want / 1000)
    assert len(expected["edges"]) == 5_000 + 4_500


@pytest.mark.integration
def test_query_returns_samples_scalars_and_matrices(prometheus: PrometheusServer) -> None:
    client = PrometheusClient(prometheus.url)
    at = 1700000000.123
    assert client.query("time()", at=at) == [InstantSample({}, at, at)]

    samples = client.query(
        'label_replace(vector(NaN), "k", "nan", "", "") or label_replace(vector(Inf), "k", "inf", "", "")'
        ' or label_replace(vector(-Inf), "k", "ninf", "", "")',
        at=at,
    )
    values = {s.labels["k"]: s.value for s in samples}
    assert all(isinstance(s, InstantSample) and s.timestamp == at for s in samples)
    assert math.isnan(values["nan"]) and values["inf"] == math.inf and values["ninf"] == -math.inf

    (matrix,) = client.query("vector(time())[10s:1s]", at=1700000000.0)
    assert isinstance(matrix, Series)
    assert len(matrix) >= 10 and matrix.timestamps[-1] == 1700000000.0
    assert np.array_equal(np.diff(matrix.timestamps), np.ones(len(matrix) - 1))
    assert np.array_equal(matrix.values, matrix.timestamps)

    with pytest.raises(PrometheusError, match="string result"):
        client.query('"hello"')


@pytest.mark.integration
def test_a_bad_matcher_is_a_query_error_with_prometheus_own_words(prometheus: PrometheusServer) -> None:
    client = PrometheusClient(prometheus.url, retries=0)
    expr = 'up{job="impact"'
    own = requests.get(f"{prometheus.url}/api/v1/query", params={"query": expr}, timeout=10).json()
    with pytest.raises(PrometheusQueryError) as caught:
        client.query(expr)
    assert caught.value.status == 400
    assert caught.value.error_type == own["errorType"] == "bad_data"
    assert caught.value.error == own["error"]
    assert "parse error" in str(caught.value) and own["error"] in str(caught.value)
    assert "\n" not in str(caught.value)

    with pytest.raises(PrometheusQueryError, match="error parsing regexp"):
        client.series(['{__name__=~"("}'], time.time() - 60, time.time())
    with pytest.raises(PrometheusQueryError, match="bad_data"):
        client.raw_samples("rate(up[1m])", time.time() - 60, time.time())


@pytest.fixture
def scraped_exporter(
    tmp_path: Path, prometheus: PrometheusServer, start_exporter: Callable[..., ExporterProcess]
) -> Iterator[ExporterProcess]:
    """A real exporter (fake powercap tree) that the session's Prometheus scrapes every second."""
    FakePowercap.intel_two_socket(tmp_path / "sys")
    exporter = start_exporter(f"--path.sysfs={tmp_path / 'sys'}")
    prometheus.add_target(exporter.address, {"test": "reporter-prometheus"})
    yield exporter
    prometheus.remove_target(exporter.address)


@pytest.mark.integration
def test_raw_samples_across_windows_equal_one_big_range_query(
    prometheus: PrometheusServer, scraped_exporter: ExporterProcess
) -> None:
    instance = scraped_exporter.address
    selector = f'{{instance="{instance}",__name__=~"scrape_duration_seconds|up"}}'
    wait_for(
        lambda: len(prometheus.samples(f'scrape_duration_seconds{{instance="{instance}"}}', "5m")) >= 9,
        60,
        "nine scrapes of the exporter",
    )
    durations = prometheus.samples(f'scrape_duration_seconds{{instance="{instance}"}}', "5m")
    first, end = durations[0][0], durations[-1][0]
    big = {
        item["metric"]["__name__"]: [(float(t), float(v)) for t, v in item["values"]]
        for item in prometheus.query(f"{selector}[5m]", at=end)
    }
    assert sorted(big) == ["scrape_duration_seconds", "up"]

    client = PrometheusClient(prometheus.url)
    # The first window ends exactly on a scrape (the 4th): a left-closed range selector would return it twice.
    window = durations[3][0] - first
    for max_window in (window, 0.25, 3600.0):
        stitched = client.raw_samples(selector, first, end, max_window_seconds=max_window)
        assert sorted(s.labels["__name__"] for s in stitched) == ["scrape_duration_seconds", "up"]
        for series in stitched:
            name = series.labels["__name__"]
            assert series.labels["instance"] == instance and series.labels["test"] == "reporter-prometheus"
            want = [(t, v) for t, v in big[name] if first < t <= end]  # (start, end]: the first scrape is out
            assert len(want) >= 8
            assert series.timestamps.tolist() == [t for t, _ in want], (name, max_window)
            assert series.values.tolist() == [v for _, v in want], (name, max_window)
            assert np.all(np.diff(series.timestamps) > 0)


@pytest.mark.integration
def test_series_lists_label_sets_without_samples(
    prometheus: PrometheusServer, scraped_exporter: ExporterProcess
) -> None:
    instance = scraped_exporter.address
    client = PrometheusClient(prometheus.url)
    now = time.time()
    labels = client.series(
        [f'up{{instance="{instance}"}}', f'scrape_samples_scraped{{instance="{instance}"}}'], now - 300, now + 1
    )
    common = {"instance": instance, "job": "impact", "test": "reporter-prometheus"}
    assert sorted(labels, key=lambda d: d["__name__"]) == [
        {"__name__": "scrape_samples_scraped", **common},
        {"__name__": "up", **common},
    ]
    assert client.series([f'up{{instance="{instance}"}}'], now - 7200, now - 3600) == []
    with pytest.raises(ValueError, match="non-empty list"):
        client.series([], now - 60, now)


# -- failures from real local servers ---------------------------------------------------------------------------


def test_unreachable_names_the_url_and_how_to_fix_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = PrometheusClient(url, retries=2, backoff_seconds=0.01)
    with pytest.raises(PrometheusUnreachable) as caught:
        client.query("up")
    message = str(caught.value)
    assert message.startswith(f"cannot reach Prometheus at {url}: connection refused (3 attempts);")
    assert message.endswith("start it or pass --prometheus / PROMETHEUS_URL")


def test_a_dropped_connection_is_retried_the_configured_number_of_times(
    tcp_server: Callable[..., TcpServer],
) -> None:
    server = tcp_server(answer=True)
    with pytest.raises(PrometheusUnreachable, match=r"\(3 attempts\)") as caught:
        PrometheusClient(server.url, retries=2, backoff_seconds=0.01).query("up")
    assert server.url in str(caught.value)
    assert server.accepted == 3


def test_a_silent_server_times_out_after_the_retries(tcp_server: Callable[..., TcpServer]) -> None:
    server = tcp_server(answer=False)
    began = time.monotonic()
    with pytest.raises(PrometheusUnreachable, match=r"no answer within 0\.2 s \(2 attempts\)"):
        PrometheusClient(server.url, timeout=0.2, retries=1, backoff_seconds=0.01).query("up")
    assert time.monotonic() - began >= 0.4
    assert server.accepted == 2


def test_5xx_is_retried_with_backoff_until_it_succeeds(scripted: Callable[..., ScriptedServer]) -> None:
    unavailable = json.dumps({"status": "error", "errorType": "unavailable", "error": "TSDB not ready"})
    server = scripted([(503, "application/json", unavailable)] * 2 + [(200, "application/json", SUCCESS_SCALAR)])
    began = time.monotonic()
    result = PrometheusClient(server.url, retries=3, backoff_seconds=0.05).query("1")
    assert result == [InstantSample({}, 1700000000.0, 1.0)]
    assert len(server.requests) == 3
    assert time.monotonic() - began >= 0.05 + 0.1  # 0.05 s, then twice that


def test_5xx_until_the_retries_run_out_says_what_the_server_said(scripted: Callable[..., ScriptedServer]) -> None:
    unavailable = json.dumps({"status": "error", "errorType": "unavailable", "error": "TSDB not ready"})
    server = scripted([(503, "application/json", unavailable)])
    with pytest.raises(PrometheusServerError) as caught:
        PrometheusClient(server.url, retries=1, backoff_seconds=0.01).query("1")
    assert str(caught.value) == (
        f"Prometheus at {server.url} answered HTTP 503 to /api/v1/query (2 attempts): unavailable: TSDB not ready"
    )
    assert len(server.requests) == 2


def test_4xx_is_not_retried(scripted: Callable[..., ScriptedServer]) -> None:
    bad = json.dumps({"status": "error", "errorType": "bad_data", "error": "1:4: parse error: oops"})
    server = scripted([(400, "application/json", bad)])
    with pytest.raises(PrometheusQueryError, match="bad_data: 1:4: parse error: oops"):
        PrometheusClient(server.url, retries=3, backoff_seconds=0.01).query("up{")
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("status", "content_type", "body"),
    [
        (200, "text/html; charset=utf-8", "<html><body>Grafana</body></html>"),
        (404, "text/html", "<html>Not Found</html>"),
        (404, "text/plain", "404 page not found"),
        (200, "application/json", json.dumps({"hello": "world"})),
    ],
)
def test_a_server_that_is_not_a_prometheus_api_is_a_bad_url(
    scripted: Callable[..., ScriptedServer], status: int, content_type: str, body: str
) -> None:
    server = scripted([(status, content_type, body)])
    with pytest.raises(BadPrometheusURL) as caught:
        PrometheusClient(server.url, retries=3, backoff_seconds=0.01).query("up")
    assert str(caught.value).startswith(f"{server.url} answered /api/v1/query with HTTP {status} ")
    assert content_type.split(";")[0] in str(caught.value)
    assert "not the Prometheus HTTP API" in str(caught.value)
    assert len(server.requests) == 1


def test_refused_credentials_are_a_query_error(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted([(401, "text/plain", "Unauthorized")])
    with pytest.raises(PrometheusQueryError, match=r"refused access \(HTTP 401\): pass a bearer token") as caught:
        PrometheusClient(server.url, retries=3).query("up")
    assert caught.value.status == 401
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://prometheus:9090", "must start with http:// or https://"),
        ("localhost:9090", "did you mean http://localhost:9090?"),
        ("http://", "has no host"),
        ("http://prometheus:9090/?x=1", "query string"),
    ],
)
def test_urls_that_are_not_http_are_refused_before_any_request(url: str, message: str) -> None:
    with pytest.raises(BadPrometheusURL, match=message.replace("?", r"\?").replace("/", "/")):
        PrometheusClient(url)


def test_requests_are_form_posts_with_credentials_under_a_path_prefix(
    scripted: Callable[..., ScriptedServer],
) -> None:
    series_answer = json.dumps({"status": "success", "data": [{"__name__": "up", "job": "a"}]})
    server = scripted([(200, "application/json", SUCCESS_SCALAR), (200, "application/json", series_answer)])
    client = PrometheusClient(f"{server.url}/prometheus/", token="s3cret")
    long_expr = "sum(" + " + ".join(["up"] * 2000) + ")"  # ~10 kB: too long for many URL limits
    client.query(long_expr, at=1700000000.123)
    assert client.series(['up{job="a"}', "node_load1"], 1700000000, 1700000060.5) == [{"__name__": "up", "job": "a"}]

    query, series = server.requests
    assert (query["method"], query["path"]) == ("POST", "/prometheus/api/v1/query")
    assert query["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert query["headers"]["Authorization"] == "Bearer s3cret"
    assert query["headers"]["Accept-Encoding"] == "identity", "a store on this machine is asked for no gzip"
    assert parse_qs(query["body"]) == {
        "query": [long_expr],
        "time": ["1700000000.123"],
        "partial_response": ["false"],
        "nocache": ["1"],
    }
    assert (series["method"], series["path"]) == ("POST", "/prometheus/api/v1/series")
    assert parse_qs(series["body"]) == {
        "match[]": ['up{job="a"}', "node_load1"],
        "start": ["1700000000.000"],
        "end": ["1700000060.500"],
        "partial_response": ["false"],
        "nocache": ["1"],
    }


def test_basic_auth_is_sent_and_cannot_be_combined_with_a_token(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted([(200, "application/json", SUCCESS_SCALAR)])
    PrometheusClient(server.url, basic_auth=("ana", "pw")).query("1")
    assert server.requests[0]["headers"]["Authorization"] == "Basic " + base64.b64encode(b"ana:pw").decode()
    with pytest.raises(ValueError, match="not both"):
        PrometheusClient(server.url, token="t", basic_auth=("ana", "pw"))
    with pytest.raises(ValueError, match="not both"):
        PrometheusClient(server.url, ca_bundle="/etc/ssl/ca.pem", insecure=True)


@pytest.mark.parametrize(
    ("url", "compressed"),
    [
        ("http://localhost:9090", False),
        ("http://127.0.0.1:8428", False),
        ("http://127.5.5.5:9090/prometheus", False),
        ("http://[::1]:9090", False),
        ("https://prometheus.example.org", True),
        ("http://10.0.0.5:9090", True),
        ("http://[2001:db8::1]:9090", True),
    ],
)
def test_answers_come_compressed_except_from_a_store_on_this_machine(url: str, compressed: bool) -> None:
    assert uncompressed_on_loopback(url) == ({} if compressed else {"Accept-Encoding": "identity"})
