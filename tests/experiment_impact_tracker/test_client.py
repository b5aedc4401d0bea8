"""The client without an exporter: addresses, and every way of not reaching one.

What the client does with a real exporter is in test_with_exporter.py.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from experiment_impact_tracker.client import DEFAULT_ADDRESS, ExporterAddress, ExporterClient, parse_address
from experiment_impact_tracker.errors import BadExporterAddress, ExporterError, ExporterUnavailable
from tests.servers import free_port


@pytest.mark.parametrize(
    "text, expected, shown",
    [
        ("unix:///run/impact-exporter/api.sock", ExporterAddress("unix", path="/run/impact-exporter/api.sock"), None),
        ("unix://relative/api.sock", ExporterAddress("unix", path="relative/api.sock"), None),
        ("http://node1:9100", ExporterAddress("http", host="node1", port=9100), None),
        ("http://node1", ExporterAddress("http", host="node1", port=9877), "http://node1:9877"),
        ("http://node1:9100/", ExporterAddress("http", host="node1", port=9100), "http://node1:9100"),
        ("http://[::1]:9877", ExporterAddress("http", host="::1", port=9877), None),
    ],
)
def test_address_forms(text: str, expected: ExporterAddress, shown: str | None) -> None:
    assert parse_address(text) == expected
    assert str(parse_address(text)) == (shown or text)


@pytest.mark.parametrize(
    "text, why",
    [
        ("/run/impact-exporter/api.sock", "the scheme must be unix:// or http://"),
        ("https://node1:9877", "the scheme must be unix:// or http://"),
        ("unix://", "the socket path is empty"),
        ("http://:9877", "the host is missing"),
        ("http://node1:99999", "the port is not a number"),
        ("http://node1:9877/api", "leave out the path"),
    ],
)
def test_bad_addresses_say_what_is_wrong_and_what_is_expected(text: str, why: str) -> None:
    with pytest.raises(BadExporterAddress) as raised:
        parse_address(text)
    assert why in str(raised.value)
    assert f"bad impact-exporter address {text!r}" in str(raised.value)
    assert "expected unix:///path/to/api.sock or http://HOST:9877" in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_address_and_token_come_from_the_environment() -> None:
    assert str(ExporterClient(environ={}).address) == DEFAULT_ADDRESS == "unix:///run/impact-exporter/api.sock"
    client = ExporterClient(environ={"IMPACT_EXPORTER": "http://node7:9877", "IMPACT_EXPORTER_TOKEN": "s3cret"})
    assert client.address == ExporterAddress("http", host="node7", port=9877)
    assert client.token == "s3cret"
    explicit = ExporterClient("unix:///tmp/x.sock", token="t", environ={"IMPACT_EXPORTER": "http://node7:9877"})
    assert str(explicit.address) == "unix:///tmp/x.sock" and explicit.token == "t"
    assert ExporterClient(environ={"IMPACT_EXPORTER": ""}).address == parse_address(DEFAULT_ADDRESS)


def assert_one_line_with_the_fix(error: ExporterUnavailable, address: str, reason: str) -> None:
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"cannot reach impact-exporter at {address} ({reason}); ")
    assert "start impact-exporter on this machine, or set IMPACT_EXPORTER to its address" in message


def test_missing_socket(tmp_path: Path) -> None:
    address = f"unix://{tmp_path}/nowhere/api.sock"
    with pytest.raises(ExporterUnavailable) as raised:
        ExporterClient(address).list_runs()
    assert_one_line_with_the_fix(raised.value, address, "No such file or directory")


def test_stale_socket_file_of_a_dead_exporter(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # the file stays, nobody listens
    with pytest.raises(ExporterUnavailable) as raised:
        ExporterClient(f"unix://{path}").start_run("mobilenet")
    assert_one_line_with_the_fix(raised.value, f"unix://{path}", "Connection refused")


def test_closed_tcp_port() -> None:
    port = free_port()
    with pytest.raises(ExporterUnavailable) as raised:
        ExporterClient(f"http://127.0.0.1:{port}", token="t").get_run("abc")
    assert_one_line_with_the_fix(raised.value, f"http://127.0.0.1:{port}", "Connection refused")


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: a hung exporter."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_an_exporter_that_never_answers_times_out(silent_listener: int) -> None:
    client = ExporterClient(f"http://127.0.0.1:{silent_listener}", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ExporterUnavailable) as raised:
        client.stop_run("abc")
    assert time.monotonic() - started < 3
    assert_one_line_with_the_fix(raised.value, f"http://127.0.0.1:{silent_listener}", "no answer within 0.5 s")


def test_api_errors_keep_the_api_text_and_401_says_how_to_fix_it() -> None:
    error = ExporterError(401, "missing or wrong bearer token", "http://node1:9877")
    assert error.status == 401 and error.message == "missing or wrong bearer token"
    assert str(error) == (
        "impact-exporter at http://node1:9877 answered 401: missing or wrong bearer token; set "
        "IMPACT_EXPORTER_TOKEN to the exporter's API token (the content of its --api.token-file)"
    )
    assert str(ExporterError(400, "experiment is required")) == "impact-exporter answered 400: experiment is required"
