"""The exporter's run API, as seen from an experiment: start, stop and read runs.

One small client for both transports. On the Unix socket (the default) the exporter learns who is calling from
the kernel (SO_PEERCRED), so no credentials are needed and ``pid`` defaults to the caller. Over TCP the exporter
needs a bearer token and an explicit pid, which this client fills in with its own. Both transports go through
``http.client``; the Unix one only swaps the socket, so requests, errors and timeouts are handled once.

The address comes from ``IMPACT_EXPORTER`` (``unix:///path/to/api.sock`` or ``http://host:port``), the token
from ``IMPACT_EXPORTER_TOKEN``.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from experiment_impact_tracker.errors import BadExporterAddress, ExporterError, ExporterUnavailable

ADDRESS_ENV = "IMPACT_EXPORTER"
TOKEN_ENV = "IMPACT_EXPORTER_TOKEN"
DEFAULT_ADDRESS = "unix:///run/impact-exporter/api.sock"
DEFAULT_PORT = 9877
DEFAULT_TIMEOUT_SECONDS = 5.0
RUNS = "/api/v1/runs"


@dataclass(frozen=True)
class ExporterAddress:
    """Where the exporter's run API is: a Unix socket path, or a TCP host and port."""

    scheme: Literal["unix", "http"]
    path: str = ""
    host: str = ""
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_address(text: str) -> ExporterAddress:
    """Parse ``unix:///abs/path.sock`` (a relative ``unix://path`` is taken from the working directory) or
    ``http://HOST[:PORT]`` (port 9877 when left out)."""
    if text.startswith("unix://"):
        path = text[len("unix://") :]
        if not path:
            raise BadExporterAddress(text, "the socket path is empty")
        return ExporterAddress("unix", path=path)
    if text.startswith("http://"):
        parts = urlsplit(text)
        try:
            port = parts.port
        except ValueError:
            raise BadExporterAddress(text, "the port is not a number from 0 to 65535") from None
        if not parts.hostname:
            raise BadExporterAddress(text, "the host is missing")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise BadExporterAddress(text, "the exporter serves its API at the root; leave out the path")
        return ExporterAddress("http", host=parts.hostname, port=port or DEFAULT_PORT)
    raise BadExporterAddress(text, "the scheme must be unix:// or http://")


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection over a Unix stream socket; everything above the socket is ``http.client``'s."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        """Open the Unix socket, with the connection's timeout for connecting and every read."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class Registration:
    """The answer to a start request: the run, and whether it is new (201) or was joined (200)."""

    run: dict[str, Any]
    created: bool


class ExporterClient:
    """A client of one exporter's run API; every call is one short-lived connection with a timeout."""

    def __init__(
        self,
        address: str | ExporterAddress | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """Use ``address`` (else ``$IMPACT_EXPORTER``, else the default socket) and ``token`` (else
        ``$IMPACT_EXPORTER_TOKEN``); raises BadExporterAddress for an address of an unknown form."""
        env = os.environ if environ is None else environ
        if address is None:
            address = env.get(ADDRESS_ENV) or DEFAULT_ADDRESS
        self.address = address if isinstance(address, ExporterAddress) else parse_address(address)
        self.token = token if token is not None else env.get(TOKEN_ENV) or None
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"ExporterClient({str(self.address)!r})"

    def register(
        self,
        experiment: str,
        set: str | None = None,  # noqa: A002 (the API's field name)
        labels: Mapping[str, str] | None = None,
        pid: int | None = None,
        run_id: str | None = None,
    ) -> Registration:
        """Start a run (or join the active run ``run_id``) for ``pid`` and its descendants.

        Without ``pid`` the run is the calling process's: on the Unix socket the exporter asks the kernel who
        called (right even across PID namespaces), over TCP this client sends its own pid.
        """
        body: dict[str, Any] = {"experiment": experiment}
        if set is not None:
            body["set"] = set
        if labels:
            body["labels"] = dict(labels)
        if pid is None and self.address.scheme == "http":
            pid = os.getpid()
        if pid is not None:
            body["pid"] = pid
        if run_id is not None:
            body["run_id"] = run_id
        status, run = self._request("POST", RUNS, body)
        return Registration(run=run, created=status == 201)

    def start_run(
        self,
        experiment: str,
        set: str | None = None,  # noqa: A002
        labels: Mapping[str, str] | None = None,
        pid: int | None = None,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        """The run object of a new run, or of the active run ``run_id`` that ``pid`` joined (see ``register``)."""
        return self.register(experiment, set=set, labels=labels, pid=pid, run_id=run_id).run

    def stop_run(self, run_id: str) -> dict[str, Any]:
        """End the run now and return its final figures; stopping a finished run returns it unchanged."""
        return self._request("POST", f"{RUNS}/{quote(run_id, safe='')}/stop")[1]

    def add_work(self, run_id: str, units: Mapping[str, int]) -> dict[str, Any]:
        """Count units of work done by the active run since the last report (``{"samples": 64, "steps": 1}``; the
        units are samples, steps and tokens) and return the run with its totals."""
        return self._request("POST", f"{RUNS}/{quote(run_id, safe='')}/work", dict(units))[1]

    def get_run(self, run_id: str) -> dict[str, Any]:
        """The run's latest figures (updated every sample interval while it is active)."""
        return self._request("GET", f"{RUNS}/{quote(run_id, safe='')}")[1]

    def list_runs(self) -> list[dict[str, Any]]:
        """Active and recently finished runs the caller may see (all of them for root or a token holder)."""
        body = self._request("GET", RUNS)[1]
        runs = body.get("runs")
        if not isinstance(runs, list):
            raise ExporterError(200, f"the answer has no list of runs: {_snippet(body)}", str(self.address))
        return runs

    def _connection(self) -> http.client.HTTPConnection:
        if self.address.scheme == "unix":
            return UnixHTTPConnection(self.address.path, self.timeout)
        return http.client.HTTPConnection(self.address.host, self.address.port, timeout=self.timeout)

    def _request(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        """(status, decoded JSON object) of a 2xx answer; ExporterError for an error answer, ExporterUnavailable
        when there is no answer at all."""
        headers = {"Accept": "application/json", "User-Agent": "experiment-impact-tracker"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.address.scheme == "http" and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        connection = self._connection()
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            status, reason, data = response.status, response.reason, response.read()
        except OSError as error:
            raise ExporterUnavailable(str(self.address), self._reason(error)) from error
        except http.client.HTTPException as error:
            raise ExporterUnavailable(str(self.address), f"the answer is not HTTP: {error!r}") from error
        finally:
            connection.close()
        try:
            decoded = json.loads(data)
        except ValueError:
            decoded = None
        if not 200 <= status < 300:
            message = decoded.get("error") if isinstance(decoded, dict) else None
            raise ExporterError(
                status,
                str(message) if message else _snippet(data) or reason,
                str(self.address),
                body=decoded if isinstance(decoded, dict) else None,
            )
        if not isinstance(decoded, dict):
            raise ExporterError(status, f"the answer is not a JSON object: {_snippet(data)}", str(self.address))
        return status, decoded

    def _reason(self, error: OSError) -> str:
        if isinstance(error, TimeoutError):
            return f"no answer within {self.timeout:g} s"
        if isinstance(error, socket.gaierror):
            return f"unknown host {self.address.host!r}"
        return error.strerror or str(error) or type(error).__name__


def _snippet(data: object, limit: int = 200) -> str:
    """A short single-line excerpt of an unexpected answer, for error messages."""
    text = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
