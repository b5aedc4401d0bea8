"""HTTP endpoints of the exporter: ``/metrics``, ``/-/healthy`` and a landing page at ``/``."""

from __future__ import annotations

import gzip
import html
import logging
import socket
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

log = logging.getLogger(__name__)

LANDING_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>impact-exporter</title></head>
<body>
<h1>impact-exporter {version}</h1>
<p>Energy of CPUs, DRAM and GPUs, attributed to processes and experiment runs.</p>
<ul>
<li><a href="/metrics">/metrics</a>: the Prometheus metrics</li>
<li><a href="/-/healthy">/-/healthy</a>: liveness</li>
</ul>
</body></html>
"""


class ExporterServer(ThreadingHTTPServer):
    """A threaded HTTP server that knows the registry it exposes."""

    daemon_threads = True

    def __init__(self, host: str, port: int, registry: CollectorRegistry, version: str) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.registry = registry
        self.version = version
        super().__init__((host, port), ExporterHandler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    @property
    def listen_address(self) -> str:
        """``host:port`` actually bound (the port is real even when 0 was asked for)."""
        host, port = self.server_address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ExporterHandler(BaseHTTPRequestHandler):
    """Routes GET requests; everything else is 405."""

    server: ExporterServer
    server_version = "impact-exporter"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = urlsplit(self.path).path
        if path == "/metrics":
            self._send_metrics()
        elif path == "/-/healthy":
            self._send(HTTPStatus.OK, b"Healthy\n", "text/plain; charset=utf-8")
        elif path == "/":
            page = LANDING_PAGE.format(version=html.escape(self.server.version))
            self._send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")
        else:
            self._send(HTTPStatus.NOT_FOUND, b"Not Found\n", "text/plain; charset=utf-8")

    def _send_metrics(self) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        body = encoder(self.server.registry)
        headers = {}
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        self._send(HTTPStatus.OK, body, content_type, headers)

    def _send(
        self, status: HTTPStatus, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        log.debug("%s %s", self.address_string(), format % args)
