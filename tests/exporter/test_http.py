"""The TCP listener's sockets, on a real loopback connection."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from experiment_impact_tracker.client import UnixHTTPConnection
from impact_exporter.http import ExporterServer, Listeners, UnixExporterServer
from tests.servers import short_socket_path


@contextmanager
def accepted_connection() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A loopback connection to an ExporterServer: the socket the server accepted and the client's."""
    server = ExporterServer("127.0.0.1", 0, CollectorRegistry(), "test")
    try:
        with socket.create_connection(server.server_address[:2]) as client:
            accepted, _ = server.get_request()
            with accepted:
                yield accepted, client
    finally:
        server.server_close()


def test_an_accepted_connection_has_nagle_off_so_a_kept_alive_scrape_is_not_held_for_a_delayed_ack() -> None:
    with accepted_connection() as (accepted, client):
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0  # the default it changes


def test_an_accepted_connection_has_tcp_keepalive_so_a_peer_that_vanished_frees_its_thread() -> None:
    """A host that dies or is cut off never closes its connections; without keepalive a kept-alive scrape connection
    of it would hold its thread, waiting for the next request, forever."""
    with accepted_connection() as (accepted, client):
        assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert client.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0  # the default it changes
        probes = [
            accepted.getsockopt(socket.IPPROTO_TCP, option)
            for option in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)
        ]
        assert probes == [15, 15, 9]  # found dead 15 + 15 * 9 s after its last packet
        assert accepted.gettimeout() is None  # blocking: one system call per read or write


def context_switches(thread: threading.Thread) -> int:
    """How often the kernel has switched the thread out (it slept or was preempted)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches:" in line)


def settled_context_switches(thread: threading.Thread) -> int:
    """The thread's context switches once it has started and blocked: a count that stays the same for 0.2 s (while
    it starts, it takes turns for the GIL with the suite's other threads)."""
    deadline = time.monotonic() + 10
    count = context_switches(thread)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        count, previous = context_switches(thread), count
        if count == previous:
            return count
    raise AssertionError(f"{thread.name} kept being switched for 10 s: it never blocked")


def test_the_listener_thread_sleeps_while_idle_serves_both_listeners_and_closes_them() -> None:
    tcp = ExporterServer("127.0.0.1", 0, CollectorRegistry(), "test")
    unix = UnixExporterServer(short_socket_path(), CollectorRegistry(), "test", api=None)  # type: ignore[arg-type]
    listeners = Listeners([tcp, unix])
    others = set(threading.enumerate())  # the session's other exporters have listener threads too
    listeners.start()
    (thread,) = [thread for thread in threading.enumerate() if thread.name == "impact-http" and thread not in others]
    try:
        before = settled_context_switches(thread)
        time.sleep(2.0)
        assert context_switches(thread) - before <= 1  # serve_forever would have woken 8 times (4 per listener)
        host, port = tcp.server_address[:2]
        assert requests.get(f"http://{host}:{port}/-/healthy", timeout=5).status_code == 200
        connection = UnixHTTPConnection(str(unix.path), timeout=5)
        connection.request("GET", "/-/healthy")
        assert connection.getresponse().status == 200
        connection.close()
    finally:
        listeners.close()
    assert not thread.is_alive()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=5)
    assert not unix.path.exists()


@pytest.fixture
def serving() -> Iterator[tuple[str, int]]:
    """A TCP listener serving a registry with one metric whose help text makes the body 16 MiB: more than the
    socket buffers hold, so sending it blocks until the client reads."""
    registry = CollectorRegistry()
    registry.register(HugeHelp())
    server = ExporterServer("127.0.0.1", 0, registry, "test")
    listeners = Listeners([server])
    listeners.start()
    yield server.server_address[:2]
    listeners.close()


class HugeHelp(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("huge", "x" * 16 * 1024 * 1024, value=1)


def test_a_scraper_that_leaves_mid_response_is_logged_at_debug_level_not_printed(
    serving: tuple[str, int], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Prometheus closes a scrape's connection at its scrape timeout, while the body is still being sent."""
    caplog.set_level(logging.DEBUG, logger="impact_exporter.http")
    with socket.socket() as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(serving)
        client.sendall(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        client.recv(4096)  # the body is being sent
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    deadline = time.monotonic() + 5
    while not any("went away" in record.getMessage() for record in caplog.records):
        assert time.monotonic() < deadline, "the reset connection was never logged"
        time.sleep(0.05)
    (record,) = [record for record in caplog.records if "went away" in record.getMessage()]
    assert record.levelno == logging.DEBUG
    assert capsys.readouterr().err == ""
