"""Bounds on the exporter's connections: how many, from whom, for how long, and what they may hold.

Every accepted connection is admitted here first. A listener holds at most ``per_listener`` connections and one
client (a uid on the Unix socket, an address on TCP) at most ``per_client`` of them; all listeners together hold
no more than the descriptors left once a reserve is set aside, so that the sampler, which opens procfs and sysfs
files on every sample, never fails for lack of one. A client over its own cap is answered 503 and closed. A full
listener makes room by shutting down the connection that has waited longest for a request (or for the rest of
one), so idle and slow clients cannot keep a prompt one out; when every connection is busy it is not selected
until one closes, so the accept loop sleeps instead of spinning (and after the kernel refuses an accept for lack
of descriptors, it waits a second).

A connection has a deadline in each phase of a request: waiting for the next request (``idle_timeout``), reading
its line, headers and body (``read_timeout``), and sending the response (``write_timeout``). None runs while the
exporter renders the response. Deadlines are not socket timeouts, with which Python polls before each read and
write (docs/performance.md): the accept thread checks them when it wakes, at least once a second while any
connection is open, and shuts a late connection down, which wakes its thread from the read or write it is
blocked in.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from impact_exporter.sources.procfs_files import kept_open_limit

DESCRIPTOR_RESERVE = 64
"""Descriptors no connection may take, beyond the procfs reader's cache: the sampler's other procfs and sysfs reads,
SQLite's files, the log."""

CHECK_INTERVAL_SECONDS = 1.0
"""How often, at most, the accept thread looks for late connections while any is open."""

ACCEPT_PAUSE_SECONDS = 1.0
"""How long a listener is not selected after the kernel refused to accept for lack of descriptors or memory."""

EXHAUSTION_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True)
class ConnectionLimits:
    """The caps and timeouts of ``--web.max-connections``, ``--web.max-connections-per-client`` and the three
    ``--web.*-timeout`` flags; the defaults are theirs."""

    per_listener: int = 256
    per_client: int = 32
    idle_timeout_seconds: float = 120.0
    read_timeout_seconds: float = 10.0
    write_timeout_seconds: float = 60.0


def descriptor_budget() -> int:
    """How many connections the process can hold with DESCRIPTOR_RESERVE descriptors to spare: the soft
    RLIMIT_NOFILE, raised to the hard limit first as Go programs do, less the half the procfs reader may keep open
    between samples (exporter/sources/procfs_files.py), the descriptors open now and the reserve."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(0, soft - kept_open_limit() - len(os.listdir("/proc/self/fd")) - DESCRIPTOR_RESERVE)


@dataclass
class Tracked:
    """An admitted connection: where it came from, when it is late, and since when it waits for a request."""

    listener: object
    client: Hashable
    deadline: float | None
    waiting_since: float | None
    """When it began to wait for a request or read one; None while its response is made or sent."""
    evicted: bool = False
    """Shut down to make room for a newer connection: it no longer counts, though its thread may not be done."""


class Connections:
    """Admission and deadlines of every listener's connections (one instance shared by all of them)."""

    def __init__(self, limits: ConnectionLimits | None = None, budget: int | None = None) -> None:
        """``budget``: the connections all listeners may hold together (see :func:`descriptor_budget`); None for
        no bound beyond the per-listener caps."""
        self.limits = limits or ConnectionLimits()
        self.budget = budget
        self._lock = threading.Lock()
        self._open: dict[socket.socket, Tracked] = {}
        self._counted = 0
        self._per_listener: dict[object, int] = {}
        self._per_client: dict[tuple[object, Hashable], int] = {}
        self._paused_until: dict[object, float] = {}
        self._on_free: Callable[[], None] = lambda: None

    def __len__(self) -> int:
        """How many connections count against the caps now."""
        return self._counted

    def notify_on_free(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when a listener that was not accepting may accept again (the accept thread's wake)."""
        self._on_free = callback

    def admit(
        self, listener: object, client: Hashable, name: str, connection: socket.socket, capped: bool = True
    ) -> str | None:
        """Track a new connection and return None, or return why it is refused. A client at its cap is refused
        (``capped``: whether the cap applies to it; not to root on the Unix socket). A full listener, or a full
        budget, makes room by shutting down the connection that has waited longest for a request or for the rest
        of one: idle and slow connections cannot keep a prompt client out."""
        with self._lock:
            if capped and self._per_client.get((listener, client), 0) >= self.limits.per_client:
                return (
                    f"too many connections from {name}: at most {self.limits.per_client} per client "
                    "(--web.max-connections-per-client)"
                )
            if not self._has_room(listener) and not self._evict_longest_waiting(listener):
                return (
                    f"every connection is busy: at most {self.limits.per_listener} per listener "
                    "(--web.max-connections) and as many as the open files limit allows"
                )
            now = time.monotonic()
            self._open[connection] = Tracked(listener, client, now + self.limits.idle_timeout_seconds, now)
            self._count(self._open[connection], +1)
        return None

    def release(self, connection: socket.socket) -> None:
        """Forget a connection about to be closed (no-op for one never admitted)."""
        with self._lock:
            tracked = self._open.pop(connection, None)
            if tracked is None or tracked.evicted:
                return
            was_full = not self._has_room(tracked.listener)
            self._count(tracked, -1)
        if was_full:
            self._on_free()

    def _count(self, tracked: Tracked, change: int) -> None:
        self._counted += change
        self._per_listener[tracked.listener] = self._per_listener.get(tracked.listener, 0) + change
        key = (tracked.listener, tracked.client)
        self._per_client[key] = self._per_client.get(key, 0) + change
        if not self._per_client[key]:
            del self._per_client[key]

    def accepting(self, listener: object) -> bool:
        """Whether the listener may accept now: not paused, and below its cap and the budget or able to make room."""
        with self._lock:
            if self._paused_until.get(listener, 0.0) > time.monotonic():
                return False
            return self._has_room(listener) or self._longest_waiting(listener) is not None

    def _has_room(self, listener: object) -> bool:
        return self._per_listener.get(listener, 0) < self.limits.per_listener and (
            self.budget is None or self._counted < self.budget
        )

    def _longest_waiting(self, listener: object) -> socket.socket | None:
        """The connection to shut down for a new one on ``listener``: of that listener when it is full, else (the
        budget is full) of any, the one waiting longest for a request; None when all are busy."""
        own = self._per_listener.get(listener, 0) >= self.limits.per_listener
        candidates = [
            (tracked.waiting_since, connection)
            for connection, tracked in self._open.items()
            if tracked.waiting_since is not None and not tracked.evicted and (tracked.listener is listener or not own)
        ]
        return min(candidates, key=lambda candidate: candidate[0])[1] if candidates else None

    def _evict_longest_waiting(self, listener: object) -> bool:
        connection = self._longest_waiting(listener)
        if connection is None:
            return False
        tracked = self._open[connection]
        tracked.evicted, tracked.deadline = True, None
        self._count(tracked, -1)
        shut_down(connection)
        return True

    def accept_failed(self, listener: object, error: OSError) -> None:
        """After accept failed for lack of descriptors or memory, leave the listener alone for a while: it stays
        readable, and selecting it again at once would spin."""
        if error.errno in EXHAUSTION_ERRNOS:
            with self._lock:
                self._paused_until[listener] = time.monotonic() + ACCEPT_PAUSE_SECONDS

    def waiting(self, connection: socket.socket) -> None:
        """The connection waits for its next request: it may idle for ``idle_timeout``."""
        self._set_phase(connection, self.limits.idle_timeout_seconds, waiting=True)

    def reading(self, connection: socket.socket) -> None:
        """A request has begun: its line, headers and body must arrive within ``read_timeout``."""
        self._set_phase(connection, self.limits.read_timeout_seconds, waiting=True)

    def working(self, connection: socket.socket) -> None:
        """The request is read and its response is being made: no deadline."""
        self._set_phase(connection, None, waiting=False)

    def writing(self, connection: socket.socket) -> None:
        """The response is being sent: the client must take it within ``write_timeout``."""
        self._set_phase(connection, self.limits.write_timeout_seconds, waiting=False)

    def _set_phase(self, connection: socket.socket, seconds: float | None, waiting: bool) -> None:
        now = time.monotonic()
        with self._lock:
            tracked = self._open.get(connection)
            if tracked is None or tracked.evicted:
                return
            tracked.deadline = None if seconds is None else now + seconds
            if not waiting:
                tracked.waiting_since = None
            elif tracked.waiting_since is None:
                tracked.waiting_since = now

    def seconds_to_next_check(self) -> float | None:
        """How long the accept thread may sleep: None (until a connection arrives) while none is open, else until
        the earliest deadline or a paused listener's end, and never more than CHECK_INTERVAL_SECONDS, since a
        handler may set an earlier deadline meanwhile."""
        now = time.monotonic()
        with self._lock:
            wakes = [t.deadline for t in self._open.values() if t.deadline is not None]
            wakes += [until for until in self._paused_until.values() if until > now]
            if not wakes and not self._open:
                return None
        return max(0.0, min([*wakes, now + CHECK_INTERVAL_SECONDS]) - now)

    def shut_late(self) -> int:
        """Shut down every connection past its deadline, which ends the read or write its thread is blocked in;
        return how many. The lock keeps a connection from being closed (and its descriptor reused) meanwhile."""
        now = time.monotonic()
        late = 0
        with self._lock:
            for connection, tracked in self._open.items():
                if tracked.deadline is not None and tracked.deadline <= now:
                    tracked.deadline = None
                    late += 1
                    shut_down(connection)
        return late


def shut_down(connection: socket.socket) -> None:
    """End both directions of a connection, which wakes a thread blocked reading or writing it."""
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # the peer is already gone


def refusal(message: str) -> bytes:
    """A complete HTTP 503 response whose JSON body says why, sent to a connection that is then closed."""
    body = json.dumps({"error": message}).encode()
    head = f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"Connection: close\r\nRetry-After: 1\r\n\r\n" + body


class BoundedListener:
    """A socketserver mixin that admits each accepted connection through ``self.connections`` and tells it when
    the connection closes. A subclass says who the client is (:meth:`client_of`)."""

    connections: Connections

    def client_of(self, request: socket.socket, client_address: Any) -> tuple[Hashable, str, bool]:
        """The client's key, how to name it in a refusal, and whether the per-client cap applies to it."""
        raise NotImplementedError

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()  # type: ignore[misc]
        except OSError as error:
            self.connections.accept_failed(self, error)
            raise

    def verify_request(self, request: socket.socket, client_address: Any) -> bool:  # type: ignore[override]
        client, name, capped = self.client_of(request, client_address)
        refused = self.connections.admit(self, client, name, request, capped)
        if refused is None:
            return True
        if not isinstance(request, ssl.SSLSocket):  # over TLS the handshake has not happened: no words to send
            try:
                request.send(refusal(refused), socket.MSG_DONTWAIT)
            except OSError:
                pass  # the client is gone or not reading; it is closed all the same
        return False

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        self.connections.release(request)
        super().shutdown_request(request)  # type: ignore[misc]
