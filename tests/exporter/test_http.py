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

import psutil
import pytest
import requests
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from experiment_impact_tracker.client import UnixHTTPConnection
from impact_exporter.bodies import SharedBodies
from impact_exporter.connections import ConnectionLimits, Connections
from impact_exporter.http import ExporterServer, Listeners, UnixExporterServer
from tests.servers import short_socket_path, wait_for


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


HUGE_BODY_BYTES = 16 * 1024 * 1024


class HugeHelp(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("huge", "x" * HUGE_BODY_BYTES, value=1)


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


# --- bounded connections (exporter/connections.py, exporter/bodies.py) -----------------------------------------

SHORT = ConnectionLimits(idle_timeout_seconds=0.5, read_timeout_seconds=0.5, write_timeout_seconds=0.5)


class SlowToRender(Collector):
    """A collector that takes longer than every deadline of SHORT to collect."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        time.sleep(1.5)
        yield GaugeMetricFamily("slow", "made slowly", value=1)


@contextmanager
def listening(registry: CollectorRegistry, **options: object) -> Iterator[tuple[str, int]]:
    server = ExporterServer("127.0.0.1", 0, registry, "test", **options)  # type: ignore[arg-type]
    listeners = Listeners([server])
    listeners.start()
    try:
        yield server.server_address[:2]
    finally:
        listeners.close()


def received_until_closed(client: socket.socket) -> bytes:
    """Everything the server sent before it closed the connection (a reset counts as closed)."""
    client.settimeout(20)
    data = b""
    try:
        while chunk := client.recv(1 << 20):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_idle_and_slow_clients_are_closed_at_their_deadlines_but_a_slow_render_is_not_cut() -> None:
    registry = CollectorRegistry()
    registry.register(SlowToRender())
    with listening(registry, connections=Connections(SHORT)) as address:
        idle = socket.create_connection(address)
        slow = socket.create_connection(address)
        slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: test\r\n")  # the headers never end
        patient = socket.create_connection(address)
        patient.sendall(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        with idle, slow, patient:
            assert received_until_closed(idle) == b""
            assert received_until_closed(slow) == b""
            response = received_until_closed(patient)  # made in 1.5 s, three times each deadline
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.endswith(b"slow 1.0\n")


def test_clients_that_never_read_share_one_body_and_are_dropped_at_the_write_timeout() -> None:
    """Twelve scrapes of a 16 MiB body by clients that never read hold one body, not twelve. Rendering it takes
    about four bodies' worth for a moment (the help text, the joined text, its encoding), hence the bound."""
    registry = CollectorRegistry()
    registry.register(HugeHelp())
    state = (object(),)  # what the body is made from does not change during the test
    connections = Connections(ConnectionLimits(write_timeout_seconds=1))
    with listening(registry, connections=connections, bodies=SharedBodies(lambda: state)) as address:
        requests.get(f"http://{address[0]}:{address[1]}/metrics", timeout=20).raise_for_status()
        before = psutil.Process().memory_info().rss
        clients = []
        for _ in range(12):
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.connect(address)
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
            client.settimeout(20)
            assert client.recv(16) == b"HTTP/1.1 200 OK\r"  # its body is being sent, and blocks
            clients.append(client)
        grown = psutil.Process().memory_info().rss - before
        wait_for(lambda: len(connections) == 0, 30, "the server to drop the clients at the write timeout")
        received = [len(received_until_closed(client)) for client in clients]
        for client in clients:
            client.close()
    assert grown < 6 * HUGE_BODY_BYTES, f"{grown / 2**20:.0f} MiB for 12 clients of a 16 MiB body"
    assert max(received) < HUGE_BODY_BYTES / 2  # each was dropped long before its body was sent
