"""The TCP listener's sockets, on a real loopback connection."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.registry import CollectorRegistry

from experiment_impact_tracker.client import UnixHTTPConnection
from exporter.http import ExporterServer, Listeners, UnixExporterServer
from tests.servers import short_socket_path


def test_an_accepted_connection_has_nagle_off_so_a_kept_alive_scrape_is_not_held_for_a_delayed_ack() -> None:
    server = ExporterServer("127.0.0.1", 0, CollectorRegistry(), "test")
    try:
        with socket.create_connection(server.server_address[:2]) as client:
            accepted, _ = server.get_request()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
                assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0  # the default it changes
    finally:
        server.server_close()


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
