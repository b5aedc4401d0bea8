"""The TCP listener's sockets, on a real loopback connection."""

from __future__ import annotations

import socket

from prometheus_client.registry import CollectorRegistry

from exporter.http import ExporterServer


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
