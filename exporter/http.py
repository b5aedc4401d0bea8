"""HTTP endpoints of the exporter: ``/metrics``, ``/-/healthy``, a landing page at ``/`` and the run API.

The same handler serves two listeners. On TCP the run API needs a bearer token (and is off without one); on
the Unix socket the kernel tells who the caller is (SO_PEERCRED), which is what lets a user register only
their own processes.
"""

from __future__ import annotations

import errno
import gzip
import hmac
import html
import json
import logging
import selectors
import socket
import socketserver
import ssl
import struct
import sys
import threading
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client.registry import CollectorRegistry

from impact_exporter.api import MAX_BODY_BYTES, Caller, Reply, RunAPI, error
from impact_exporter.bodies import SharedBodies
from impact_exporter.cgroups import Operators
from impact_exporter.connections import BoundedListener, Connections
from impact_exporter.exposition import negotiate
from impact_exporter.paths import bind_socket
from impact_exporter.scheduling import ScrapesFirst
from impact_exporter.webconfig import BasicAuth, WebConfig

log = logging.getLogger(__name__)

MAX_DISCARDED_BYTES = 16 * 1024 * 1024
"""The largest refused body read to its end so that its sender gets the 413 (see ExporterHandler._discard)."""

TCP_KEEPALIVE = {socket.TCP_KEEPIDLE: 15, socket.TCP_KEEPINTVL: 15, socket.TCP_KEEPCNT: 9}
"""TCP keepalive of accepted connections, as Go's servers set it: a peer that vanished without closing (a host that
died, a network cut off) is found after 2.5 minutes, and the thread waiting on it ends."""

LANDING_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>impact-exporter</title></head>
<body>
<h1>impact-exporter {version}</h1>
<p>Energy of CPUs, DRAM and GPUs, attributed to processes and experiment runs.</p>
<ul>
<li><a href="/metrics">/metrics</a>: the Prometheus metrics</li>
<li><a href="/-/healthy">/-/healthy</a>: liveness</li>
<li>/api/v1/runs: the run API (on the Unix socket; over TCP only with a token)</li>
</ul>
</body></html>
"""


class RequestErrorsLogged:
    """Both listeners' request errors go to the log, where socketserver would print a traceback to stderr: a client
    that leaves mid-response (Prometheus at its scrape timeout), vanishes or fails the TLS handshake (plain HTTP to
    a TLS listener) at debug level, anything else as an error."""

    def handle_error(self, request: object, client_address: object) -> None:
        caller, failure = client_address or "unix", sys.exc_info()[1]
        if isinstance(failure, (ConnectionError, TimeoutError, ssl.SSLError)):
            log.debug("client %s went away: %s", caller, failure)
        else:
            log.exception("error while serving a request of %s", caller)


class ExporterServer(RequestErrorsLogged, BoundedListener, ThreadingHTTPServer):
    """The TCP listener: metrics for Prometheus, and the run API when a token is configured."""

    daemon_threads = True
    request_queue_size = socket.SOMAXCONN  # socketserver's 5 refuses a burst of clients

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        version: str,
        api: RunAPI | None = None,
        token: str | None = None,
        scrapes: ScrapesFirst | None = None,
        web_config: WebConfig | None = None,
        connections: Connections | None = None,
        bodies: SharedBodies | None = None,
    ) -> None:
        """``web_config`` (--web.config.file) adds TLS and basic auth."""
        self.connections = connections if connections is not None else Connections()
        self.bodies = bodies if bodies is not None else SharedBodies()
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.registry = registry
        self.scrapes = scrapes if scrapes is not None else ScrapesFirst()
        self.version = version
        self.api = api
        self.token = token
        self.basic_auth = web_config.basic_auth if web_config is not None else None
        super().__init__((host, port), ExporterHandler)
        if web_config is not None and web_config.tls is not None:
            # No handshake in accept(): the one listener thread must never wait on a client. It happens at the
            # handler's first read, in the connection's own thread.
            self.socket = web_config.tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def get_request(self) -> tuple[socket.socket, object]:
        """Accept a connection with Nagle's algorithm off and TCP keepalive on, as Go's servers do.

        Without Nagle: a response goes out as a small write of headers and then the body, and on a kept-alive
        connection (Prometheus keeps them) Nagle holds the body's last segment back until the client's delayed ACK,
        about 40 ms later. Keepalive rather than a socket timeout: with a timeout, Python polls before each read and
        write, and a handler then takes the interpreter back twice per call, each time waiting for the sampler's
        turn to end (up to 5 ms) while a sample runs."""
        connection, address = super().get_request()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in TCP_KEEPALIVE.items():
            connection.setsockopt(socket.IPPROTO_TCP, option, value)
        return connection, address

    def client_of(self, request: socket.socket, client_address: tuple[str, int]) -> tuple[str, str, bool]:
        """A TCP client is its address."""
        return client_address[0], client_address[0], True

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    @property
    def listen_address(self) -> str:
        """``host:port`` actually bound (the port is real even when 0 was asked for)."""
        host, port = self.server_address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def api_caller(self, handler: ExporterHandler) -> Caller | Reply:
        """A token holder may act for anyone (uid 0) but must name the pid; without a token the API is off."""
        if self.api is None or self.token is None:
            return error(
                HTTPStatus.NOT_FOUND,
                "the run API is not served over TCP: use the Unix socket (--api.socket) "
                "or start the exporter with --api.token-file",
            )
        scheme, _, presented = handler.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), self.token.encode()):
            return error(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token")
        return Caller(uid=0, pid=None, operator=True)


def socket_in_use(path: Path) -> bool:
    """Whether a live server accepts connections on ``path`` (a stale file from a crash does not)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def peer_credentials(connection: socket.socket) -> tuple[int, int, int]:
    """The pid, uid and gid of the process at the other end of a Unix socket connection, as the kernel tells them."""
    pid, uid, gid = struct.unpack(
        "3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    )
    return pid, uid, gid


class UnixExporterServer(
    RequestErrorsLogged, BoundedListener, socketserver.ThreadingMixIn, socketserver.UnixStreamServer
):
    """The Unix socket listener of the run API; callers are identified by the kernel."""

    daemon_threads = True
    request_queue_size = socket.SOMAXCONN  # with socketserver's 5, the 6th of a burst of connects fails (EAGAIN)
    listen_address: str
    basic_auth: BasicAuth | None = None  # the kernel tells who calls

    def __init__(
        self,
        path: Path,
        registry: CollectorRegistry,
        version: str,
        api: RunAPI,
        group: int | None = None,
        scrapes: ScrapesFirst | None = None,
        connections: Connections | None = None,
        bodies: SharedBodies | None = None,
        operators: Operators | None = None,
    ) -> None:
        """``operators``: who may register cgroup runs (exporter/cgroups.py); root only by default."""
        self.connections = connections if connections is not None else Connections()
        self.bodies = bodies if bodies is not None else SharedBodies()
        self.operators = operators if operators is not None else Operators()
        self.registry = registry
        self.scrapes = scrapes if scrapes is not None else ScrapesFirst()
        self.version = version
        self.api = api
        self.path = path
        self.group = group
        path.parent.mkdir(parents=True, exist_ok=True)
        if socket_in_use(path):
            raise OSError(errno.EADDRINUSE, "another process is serving on this socket")
        super().__init__(str(path), ExporterHandler)
        self.listen_address = f"unix://{path}"

    def server_bind(self) -> None:
        """Bind so that the socket appears at its path with its final mode (0660) and group (see bind_socket)."""
        bind_socket(self.socket, self.path, self.group)
        self.server_address = str(self.path)

    def api_caller(self, handler: ExporterHandler) -> Caller | Reply:
        pid, uid, gid = peer_credentials(handler.connection)
        return Caller(uid=uid, pid=pid, operator=self.operators.includes(uid, gid))

    def client_of(self, request: socket.socket, client_address: object) -> tuple[int, str, bool]:
        """A Unix socket client is its uid; root's connections are not capped per client."""
        _, uid, _ = peer_credentials(request)
        return uid, f"uid {uid}", uid != 0

    def server_close(self) -> None:
        super().server_close()
        self.path.unlink(missing_ok=True)


class ExporterHandler(BaseHTTPRequestHandler):
    """Routes requests of both listeners."""

    server: ExporterServer | UnixExporterServer
    server_version = "impact-exporter"
    protocol_version = "HTTP/1.1"

    def handle_one_request(self) -> None:
        """Serve one request under the deadlines of its phases (exporter/connections.py): idle until its first
        byte, then reading, then none while the response is made (see _serve_api, _send_metrics and _send)."""
        connections = self.server.connections
        connections.waiting(self.connection)
        if not self.rfile.peek(1):  # the client closed, or was shut down after idling too long
            self.close_connection = True
            return
        connections.reading(self.connection)
        super().handle_one_request()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = urlsplit(self.path).path
        if self._refused_without_credentials(path):
            return
        if path.startswith("/api/"):
            self._serve_api("GET", self.path)  # with its query (?user=)
        elif path == "/metrics":
            self._send_metrics()
        elif path == "/-/healthy":
            self._send(HTTPStatus.OK, b"Healthy\n", "text/plain; charset=utf-8")
        elif path == "/":
            page = LANDING_PAGE.format(version=html.escape(self.server.version))
            self._send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")
        else:
            self._send(HTTPStatus.NOT_FOUND, b"Not Found\n", "text/plain; charset=utf-8")

    def do_POST(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        if self._refused_without_credentials(path):
            return
        if path.startswith("/api/"):
            self._serve_api("POST", self.path)  # with its query (?user=)
        else:
            self._read_body()  # so that a client still sending it reads the answer (an oversize one closes)
            self._send_json(error(HTTPStatus.METHOD_NOT_ALLOWED, f"POST is not allowed on {path}"))

    def _refused_without_credentials(self, path: str) -> bool:
        """Whether basic auth (--web.config.file) refuses this request; it has then been answered 401. The run API
        has its own bearer token in the same header, and /-/healthy, which tells only that the process answers, is
        left open for liveness probes."""
        auth = self.server.basic_auth
        if auth is None or path == "/-/healthy" or path.startswith("/api/"):
            return False
        if auth.allows(self.headers.get("Authorization")):
            return False
        self.close_connection = True  # a body, if any, was not read
        challenge = {"WWW-Authenticate": 'Basic realm="impact-exporter", charset="UTF-8"'}
        self._send(HTTPStatus.UNAUTHORIZED, b"Unauthorized\n", "text/plain; charset=utf-8", challenge)
        return True

    def _refuse_method(self) -> None:
        self._read_body()  # so that a client still sending it reads the answer (an oversize one closes)
        self._send_json(error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not allowed; use GET or POST"))

    do_PUT = do_DELETE = do_PATCH = _refuse_method  # noqa: N815

    def _serve_api(self, method: str, path: str) -> None:
        body = self._read_body()
        if isinstance(body, Reply):
            self._send_json(body)
            return
        self.server.connections.working(self.connection)
        caller = self.server.api_caller(self)
        if isinstance(caller, Reply):
            self._send_json(caller)
            return
        self._send_json(self.server.api.handle(method, path, body, caller))

    def _read_body(self) -> bytes | Reply:
        """The request body, or the error reply for one that is chunked, malformed or over the limit."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return error(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length, not chunked")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            return error(HTTPStatus.BAD_REQUEST, "Content-Length is not a non-negative integer")
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._discard(length)
            return error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is over {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length)

    def _discard(self, length: int) -> None:
        """Read and drop a refused body of up to MAX_DISCARDED_BYTES: a client still sending it then reads its
        413 instead of failing with a broken pipe. A larger body is left unread; the connection closes."""
        while 0 < length <= MAX_DISCARDED_BYTES and (chunk := self.rfile.read(min(length, 64 * 1024))):
            length -= len(chunk)

    def _send_json(self, reply: Reply) -> None:
        body = json.dumps(reply.body).encode()
        headers = {"WWW-Authenticate": "Bearer"} if reply.status == HTTPStatus.UNAUTHORIZED else None
        self._send(HTTPStatus(reply.status), body, "application/json", headers)

    def _send_metrics(self) -> None:
        self.server.connections.working(self.connection)
        encoder, content_type = negotiate(self.headers.get("Accept", ""))
        compressed = "gzip" in self.headers.get("Accept-Encoding", "")
        headers = {"Content-Encoding": "gzip"} if compressed else {}

        def render() -> bytes:
            body = encoder(self.server.registry)
            return gzip.compress(body, compresslevel=1) if compressed else body

        # The sampler waits while the body is made and compressed, not while it is sent: a client that reads slowly
        # would otherwise hold every pause point of a sample for its longest wait.
        with self.server.scrapes.scrape():
            body = self.server.bodies.get((content_type, compressed), render)
        self._send(HTTPStatus.OK, body.data, content_type, headers)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.server.connections.writing(self.connection)
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return self.client_address[0] if self.client_address else "unix"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        log.debug("%s %s", self.address_string(), format % args)


class Listeners:
    """The exporter's listeners, served by one thread that sleeps until a connection arrives or ``close`` is called.

    ``socketserver``'s ``serve_forever`` wakes every half second per listener to look for a shutdown request: on an
    idle exporter those wake-ups cost more CPU than a sample (docs/performance.md). Here ``close`` wakes the thread
    through a socket pair instead. Each connection is still handled in a thread of its own (``ThreadingMixIn``).
    The same thread enforces the connections' deadlines and does not select a listener that may not accept now
    (exporter/connections.py); a connection that closes on a full listener wakes it through the same pair.
    """

    def __init__(self, servers: Sequence[ExporterServer | UnixExporterServer]) -> None:
        self._servers = tuple(servers)
        for server in self._servers:
            server.timeout = 0  # handle_request returns at once should a ready connection be gone by then
        self._connections = list({id(server.connections): server.connections for server in self._servers}.values())
        self._wake, self._waker = socket.socketpair()
        self._waker.setblocking(False)
        for connections in self._connections:
            connections.notify_on_free(self._wake_up)
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name="impact-http", daemon=True)

    def start(self) -> None:
        """Accept connections on every listener from now on."""
        self._thread.start()

    def close(self) -> None:
        """Stop accepting connections, and close every listener and the wake-up pair."""
        self._closing = True
        self._wake_up()
        self._thread.join()
        for server in self._servers:
            server.server_close()
        self._wake.close()
        self._waker.close()

    def _wake_up(self) -> None:
        try:
            self._waker.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is pending already, or the pair is closed

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake, selectors.EVENT_READ)
            while True:
                self._select_accepting(selector)
                for key, _ in selector.select(self._seconds_to_next_check()):
                    if key.fileobj is self._wake:
                        self._wake.recv(4096)
                        if self._closing:
                            return
                    else:
                        key.fileobj.handle_request()  # ready: it accepts at once and hands the connection to a thread
                for connections in self._connections:
                    connections.shut_late()

    def _select_accepting(self, selector: selectors.BaseSelector) -> None:
        """Select exactly the listeners that may accept now."""
        selected = selector.get_map()
        for server in self._servers:
            if server.connections.accepting(server):
                if server not in selected:
                    selector.register(server, selectors.EVENT_READ)
            elif server in selected:
                selector.unregister(server)

    def _seconds_to_next_check(self) -> float | None:
        waits = [wait for c in self._connections if (wait := c.seconds_to_next_check()) is not None]
        return min(waits, default=None)
