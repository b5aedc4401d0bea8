"""The optional Grafana annotation: a run tracked by a real exporter is posted, when it stops, to a loopback HTTP
server standing in for Grafana's annotation API; every way it can go wrong is one warning, never a failure."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from experiment_impact_tracker import track_run
from experiment_impact_tracker.grafana import TOKEN_ENV, URL_ENV, GrafanaAnnotator, GrafanaError, run_annotation
from tests.fakes.node import BUSY_TICKS_PER_STEP, PID, RUN_TICKS_PER_STEP, Node
from tests.servers import ExporterProcess, free_port

pytestmark = pytest.mark.integration

TOKEN = "glsa_test_token"
JOINING_PID = 4343


class FakeGrafana:
    """Grafana's POST /api/annotations on a loopback port: records each request, answers ``status`` and ``body``."""

    def __init__(self, status: int = 200, body: dict[str, Any] | None = None) -> None:
        self.status = status
        self.body = body if body is not None else {"id": 17, "message": "Annotation added"}
        self.requests: list[dict[str, Any]] = []
        grafana = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", 0))
                grafana.requests.append(
                    {
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": json.loads(self.rfile.read(length)),
                    }
                )
                answer = json.dumps(grafana.body).encode()
                self.send_response(grafana.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A fake machine with a second process (JOINING_PID) and a real exporter reading it."""
    node = Node(tmp_path_factory.mktemp("grafana-node"))
    node.proc.spawn(JOINING_PID, 1, start=7000, uid=0)
    exporter = ExporterProcess(node.root, node.flags())
    yield node
    exporter.stop()


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    server = FakeGrafana()
    yield server
    server.close()


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]


def test_a_stopped_run_is_posted_as_a_region_from_its_start_to_its_end(
    node: Node, grafana: FakeGrafana, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(URL_ENV, f"{grafana.url}/grafana/")  # Grafana under a sub-path, given with a trailing slash
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with track_run("mobilenet", set="conv32", pid=PID, client=node.client()) as run:
        node.drive(0.5)
        assert grafana.requests == [], "nothing is posted while the run goes on"

    assert warnings(caplog) == []
    [request] = grafana.requests
    assert request["path"] == "/grafana/api/annotations"
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert request["headers"]["Content-Type"] == "application/json"
    final = run.final
    assert final is not None and final["status"] == "finished"
    energy = final["energy_joules"]
    assert energy["cpu"] == pytest.approx(node.package_joules * RUN_TICKS_PER_STEP / BUSY_TICKS_PER_STEP, rel=0.05)
    assert request["body"] == {
        "time": round(final["start_time"] * 1000),
        "timeEnd": round(final["end_time"] * 1000),
        "tags": ["impact", "mobilenet", "conv32", run.run_id],
        "text": f"run {run.run_id} of 'mobilenet', set 'conv32': {energy['cpu'] + energy['dram']:.1f} J "
        f"(cpu {energy['cpu']:.1f} J, dram {energy['dram']:.1f} J)",
    }
    assert request["body"]["timeEnd"] - request["body"]["time"] >= 500, "the region spans the block"


def test_only_the_process_that_created_a_run_posts_it(
    node: Node, grafana: FakeGrafana, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(URL_ENV, grafana.url)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with track_run("ddp", pid=PID, run_id="ddp-job-1", client=node.client()) as creator:
        with track_run("ddp", pid=JOINING_PID, run_id="ddp-job-1", client=node.client()) as rank:
            assert rank.tracked and not rank.created
        assert grafana.requests == [], "a rank that joined leaves the annotation to the run's creator"
    assert creator.created
    assert [request["body"]["tags"] for request in grafana.requests] == [["impact", "ddp", "ddp-job-1"]]


@pytest.mark.parametrize("problem", ["token refused", "grafana away"])
def test_a_failed_post_is_one_warning_and_the_experiment_goes_on(
    node: Node, problem: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    refusing = FakeGrafana(401, {"message": "invalid API key"})
    url = refusing.url if problem == "token refused" else f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv(URL_ENV, url)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    try:
        with track_run("mobilenet", pid=PID, client=node.client(), strict=True) as run:
            pass
    finally:
        refusing.close()
    assert run.final is not None and run.final["status"] == "finished", "the run was stopped all the same"
    why = (
        f"Grafana at {url} answered 401: invalid API key; check {TOKEN_ENV}: it must be a service account token "
        "of that Grafana with permission to write annotations"
        if problem == "token refused"
        else f"cannot reach Grafana at {url} ([Errno 111] Connection refused); check {URL_ENV}"
    )
    assert warnings(caplog) == [f"cannot annotate run {run.run_id} of 'mobilenet' in Grafana: {why}"]


def test_half_a_configuration_is_one_warning_at_start_and_nothing_is_posted(
    node: Node, grafana: FakeGrafana, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(URL_ENV, grafana.url)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with track_run("mobilenet", pid=PID, client=node.client()) as run:
        assert warnings(caplog) == [
            f"{TOKEN_ENV} is not set, so runs are not annotated in Grafana; set both {URL_ENV} and {TOKEN_ENV}, "
            "or neither"
        ]
    assert run.tracked and grafana.requests == []


def test_an_untracked_run_is_not_posted(
    tmp_path: Path, grafana: FakeGrafana, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("IMPACT_EXPORTER", f"unix://{tmp_path}/missing.sock")
    monkeypatch.setenv("IMPACT_STANDALONE", "0")
    monkeypatch.setenv(URL_ENV, grafana.url)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with track_run("mobilenet") as run:
        pass
    assert not run.tracked
    assert grafana.requests == []
    assert [message.split(":")[0] for message in warnings(caplog)] == ["not tracking 'mobilenet'"]


def test_the_configuration_is_off_by_default_and_rejects_a_url_without_scheme() -> None:
    assert GrafanaAnnotator.from_environ({}) is None
    assert GrafanaAnnotator.from_environ({URL_ENV: " ", TOKEN_ENV: ""}) is None
    with pytest.raises(GrafanaError, match=f"^{URL_ENV}='grafana:3000' is not an http:// or https:// URL"):
        GrafanaAnnotator.from_environ({URL_ENV: "grafana:3000", TOKEN_ENV: TOKEN})


def test_a_run_without_set_or_energy_is_tagged_and_described_without_them() -> None:
    record = {
        "experiment": "probe",
        "set": "",
        "run_id": "r1",
        "start_time": 1700000000.1234,
        "end_time": 1700000060.9876,
        "final": None,
    }
    assert run_annotation(record) == {
        "time": 1700000000123,
        "timeEnd": 1700000060988,
        "tags": ["impact", "probe", "r1"],
        "text": "run r1 of 'probe'",
    }
