"""Real servers for integration tests: a Prometheus on a loopback port and impact-exporter processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI") == "true"
RULES_GLOB = REPO_ROOT / "deploy" / "prometheus" / "rules" / "*.yml"


def require_binary(name: str, install_hint: str) -> str:
    """The path of an external program; under CI=true its absence fails the test instead of skipping it."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found on PATH; install it with: {install_hint}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def short_socket_path() -> Path:
    """A Unix socket path in a fresh directory that everyone may traverse, short enough for sun_path (108 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="iet-"))
    directory.chmod(0o755)
    return directory / "api.sock"


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll until ``condition()`` returns something truthy, and return it; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class LoopbackServer:
    """A server program on a loopback port, its output in a log file; subclasses say how it starts and is probed."""

    name: str
    ready_path: str
    url: str
    log_file: Path
    process: subprocess.Popen[bytes]

    def launch(self, argv: Sequence[str]) -> None:
        """Start ``argv`` with its output appended to the log, and wait until ``ready_path`` answers 200."""
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._ready, 30, f"{self.name} to become ready (log: {self.log_file})")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"{self.name} exited with {self.process.returncode}: {self.log_file.read_text()[-2000:]}")
        try:
            return requests.get(f"{self.url}{self.ready_path}", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class PrometheusServer(LoopbackServer):
    """A private Prometheus that scrapes every second the targets tests add through file-based discovery, and
    evaluates the project's recording and alerting rules (deploy/prometheus/rules) every second."""

    name = "prometheus"
    ready_path = "/-/ready"

    def __init__(
        self,
        workdir: Path,
        data_dir: Path | None = None,
        extra_args: Sequence[str] = (),
        remote_write_url: str | None = None,
        external_labels: Mapping[str, str] | None = None,
        config: str | None = None,
    ) -> None:
        """``data_dir`` holds the TSDB (default: ``workdir/data``), e.g. blocks backfilled with promtool;
        ``extra_args`` are further Prometheus flags; ``remote_write_url`` is a store every sample is also written
        to, within about a second; ``external_labels`` are added to what it writes there (``replica`` of an HA
        pair, ``cluster``), not to what its own API answers; ``config`` replaces the whole prometheus.yml (a
        recipe's, such as a federating Prometheus's), so ``add_target`` does nothing with it."""
        self.binary = require_binary("prometheus", "apt-get install prometheus")
        self.workdir = workdir
        self.data_dir = data_dir or workdir / "data"
        self.extra_args = tuple(extra_args)
        self.targets_file = workdir / "targets.json"
        self.targets: list[dict[str, Any]] = []
        self._write_targets()
        self.config_file = workdir / "prometheus.yml"
        self.config_file.write_text(
            config
            or "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            + external_labels_config(external_labels or {})
            + f"rule_files: ['{RULES_GLOB}']\n"
            "scrape_configs:\n"
            "  - job_name: impact\n"
            "    file_sd_configs:\n"
            f"      - files: ['{self.targets_file}']\n"
            "        refresh_interval: 1s\n"
            + remote_write_config(remote_write_url)
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = workdir / "prometheus.log"
        self.start()

    def start(self) -> None:
        """Start Prometheus on its port and data directory, and wait until it is ready; after ``stop()`` this
        restarts it with the samples it had stored (a test of an outage must never stop the session one)."""
        self.launch(
            [
                self.binary,
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={self.data_dir}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
                *self.extra_args,
            ]
        )

    def _write_targets(self) -> None:
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.targets))
        os.replace(tmp, self.targets_file)

    def add_target(self, address: str, labels: dict[str, str] | None = None, wait: bool = True) -> None:
        """Scrape ``address`` from now on, and wait until the first scrape succeeded (``wait=False``: the caller
        waits with ``scraping``, say for several servers at once). A new exporter on the port of an earlier one
        replaces its target: with other labels, both would be scraped and every series doubled."""
        self.remove_target(address)
        self.targets.append({"targets": [address], "labels": labels or {}})
        self._write_targets()
        if wait:
            wait_for(lambda: self.scraping(address), 30, f"prometheus to scrape {address}")

    def scraping(self, address: str) -> bool:
        """Whether the last scrape of ``address`` succeeded."""
        return bool(self.query(f'up{{instance="{address}"}} == 1'))

    def remove_target(self, address: str) -> None:
        self.targets = [t for t in self.targets if address not in t["targets"]]
        self._write_targets()

    def api(self, endpoint: str, **params: Any) -> Any:
        """The ``data`` of a Prometheus HTTP API response; fails the test on an API error."""
        response = requests.get(f"{self.url}/api/v1/{endpoint}", params=params, timeout=10)
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query result vector (or matrix for range selectors)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self.api("query", **params)["result"]

    def samples(self, selector: str, window: str = "10m") -> list[tuple[float, float]]:
        """Raw (timestamp, value) samples of one series over the last ``window``."""
        result = self.query(f"{selector}[{window}]")
        assert len(result) == 1, f"expected one series for {selector}, got {result}"
        return [(float(t), float(v)) for t, v in result[0]["values"]]


def external_labels_config(labels: Mapping[str, str]) -> str:
    """The ``external_labels`` lines of Prometheus' ``global`` section ("" for none)."""
    if not labels:
        return ""
    return "  external_labels:\n" + "".join(f"    {name}: {json.dumps(value)}\n" for name, value in labels.items())


def remote_write_config(url: str | None) -> str:
    """Prometheus' ``remote_write`` section sending to ``url`` in batches at most 200 ms old ("" for None)."""
    if url is None:
        return ""
    return f"remote_write:\n  - url: {url}\n    queue_config:\n      batch_send_deadline: 200ms\n"


class VictoriaMetricsServer(LoopbackServer):
    """A private single-node VictoriaMetrics (Debian's ``victoria-metrics``) on a loopback port, with its own
    data directory; Prometheus remote-writes into it at ``write_url``, the reporter reads it at ``url``."""

    name = "victoria-metrics"
    ready_path = "/health"
    RECIPE_FLAGS = ("-maxLabelsPerTimeseries=48",)
    """docs/deployment.md's flags (tests/deploy/test_store_recipes.py checks they are the doc's): without them a
    run's labels past the 30th are dropped."""

    def __init__(self, workdir: Path) -> None:
        self.binary = require_binary("victoria-metrics", "apt-get install victoria-metrics")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.write_url = f"{self.url}/api/v1/write"
        self.log_file = workdir / "victoria-metrics.log"
        self.launch(
            [
                self.binary,
                f"-httpListenAddr=127.0.0.1:{self.port}",
                f"-storageDataPath={workdir / 'data'}",
                "-retentionPeriod=1d",
                "-loggerLevel=WARN",
                *self.RECIPE_FLAGS,
            ]
        )

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query result at the server's now, bypassing its response cache."""
        response = requests.get(f"{self.url}/api/v1/query", params={"query": expr, "nocache": "1"}, timeout=10)
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]["result"]


class VMAgent(LoopbackServer):
    """Debian's ``vmagent`` on a loopback port: it scrapes as ``scrape_config`` (a prometheus.yml) says and writes
    every sample to ``flags``' ``-remoteWrite.url``, keeping its on-disk buffer in ``workdir``."""

    name = "vmagent"
    ready_path = "/health"

    def __init__(self, workdir: Path, scrape_config: str, flags: Sequence[str]) -> None:
        binary = require_binary("vmagent", "apt-get install victoria-metrics")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_file = workdir / "vmagent.log"
        config_file = workdir / "vmagent.yml"
        config_file.write_text(scrape_config)
        self.launch(
            [
                binary,
                *flags,
                f"-promscrape.config={config_file}",
                f"-remoteWrite.tmpDataPath={workdir / 'buffer'}",
                f"-httpListenAddr=127.0.0.1:{self.port}",
                "-loggerLevel=WARN",
            ]
        )

    def scraping(self, address: str) -> bool:
        """Whether vmagent's last scrape of ``address`` succeeded (its Prometheus-style targets API)."""
        targets = requests.get(f"{self.url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        return any(t["labels"].get("instance") == address and t["health"] == "up" for t in targets)


class ExporterProcess:
    """``python -m impact_exporter`` on a loopback port chosen by the kernel, with its log kept in a file."""

    LISTENING = re.compile(r"listening on (\S+),")

    def __init__(self, workdir: Path, args: Sequence[str], wrapper: Sequence[str] = ()) -> None:
        """Start it; without ``--api.socket``/``--state-dir`` in ``args`` both get private paths. ``wrapper``: a
        command that runs it, e.g. ``prlimit --nofile=1024:1024``."""
        name = f"exporter-{time.monotonic_ns()}"
        self.log_file = workdir / f"{name}.log"
        defaults = []
        if not any(arg.startswith(("--api.socket=", "--no-api.socket")) for arg in args):
            self.socket_path = short_socket_path()
            defaults.append(f"--api.socket={self.socket_path}")
        if not any(arg.startswith("--state-dir=") for arg in args):
            defaults.append(f"--state-dir={workdir / name}-state")
        self.args = ["--web.listen-address=127.0.0.1:0", *defaults, *args]
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                [*wrapper, sys.executable, "-m", "impact_exporter", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
            )
        self.address = wait_for(self._listening_address, 30, "the exporter to listen")
        self.url = f"http://{self.address}"

    def _listening_address(self) -> str | None:
        if self.process.poll() is not None:
            pytest.fail(f"exporter exited with {self.process.returncode}: {self.log()}")
        match = self.LISTENING.search(self.log())
        return match.group(1) if match else None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def metrics_text(self) -> str:
        response = requests.get(f"{self.url}/metrics", timeout=5)
        response.raise_for_status()
        return response.text

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def refused_start(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m impact_exporter`` with ``args``, run to its exit: a start that is expected to be refused (one that
    is not runs until ``timeout`` and fails the test)."""
    return subprocess.run(
        [sys.executable, "-m", "impact_exporter", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT
    )


def reported_run(prometheus: PrometheusServer, run_id: str) -> dict[str, Any]:
    """The run's figures as ``impact-report runs --format=json`` prints them from ``prometheus`` (last 10 minutes,
    100 gCO2eq/kWh)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "impact_reporter",
            "runs",
            "--format=json",
            f"--prometheus={prometheus.url}",
            "--since=10m",
            f'--match={{run_id="{run_id}"}}',
            "--carbon-intensity=100",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    [figures] = json.loads(result.stdout)["runs"]
    return figures
