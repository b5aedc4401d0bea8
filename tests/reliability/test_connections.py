"""Connection floods against an exporter limited to 1,024 descriptors (systemd's default), as other users and
unauthenticated TCP clients could send them: the caps hold, and meanwhile ``/metrics`` answers, another user's API
call answers, every sample succeeds, and the accept loop does not spin.

Each flood is a forked child (of another uid where it matters) that opens its connections, sends the start of a
request it never finishes, reports what the exporter answered, and holds the rest open until released.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from experiment_impact_tracker.client import ExporterClient, UnixHTTPConnection
from impact_exporter.connections import DESCRIPTOR_RESERVE, ConnectionLimits
from tests.fakes.powercap import FakePowercap
from tests.servers import ExporterProcess, require_binary, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.serial]  # serial: CPU shares and timings need the cores

NOFILE = 1024
NOGROUP = NOBODY = 65534
SOCKET_USER, TCP_USER = 40061, 40062  # uids without accounts
PER_CLIENT = ConnectionLimits().per_client
TREE_SIZE = 300  # processes of a tracked run: the procfs reader keeps two files of each open, up to its half
UNFINISHED_API_CALL = b"POST /api/v1/runs HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"  # the body never comes
UNFINISHED_HEADERS = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"  # the blank line never comes
SCRAPER_ADDRESS = "127.0.2.1"  # Prometheus, on an address no flood uses
Target = tuple[socket.AddressFamily, Any, str | None]  # family, address, source address to bind


@dataclass
class Flood:
    """A child holding connections open; ``held``: how many the exporter neither answered nor closed, ``answers``:
    the distinct error messages of the refused ones."""

    pid: int
    release_pipe: int
    held: int
    answers: list[str]

    def release(self) -> None:
        os.close(self.release_pipe)
        os.waitpid(self.pid, 0)


def flood(uid: int, gid: int, targets: Sequence[Target], request: bytes) -> Flood:
    """Open a connection to each target as ``uid``/``gid`` and send ``request``; return once the exporter's answers
    have stopped coming for a second."""
    report_read, report_write = os.pipe()
    release_read, release_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(report_read)
            os.close(release_write)
            if uid:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            connections = [connected(target, request) for target in targets]
            held, answers = settled_answers(connections)
            os.write(report_write, json.dumps({"held": held, "answers": sorted(set(answers))}).encode())
            os.close(report_write)
            os.read(release_read, 1)  # hold every connection until the parent closes its end
        except BaseException as error:
            os.write(report_write, json.dumps({"error": repr(error)}).encode())
        finally:
            os._exit(0)
    os.close(report_write)
    os.close(release_read)
    with os.fdopen(report_read) as pipe:
        report = json.loads(pipe.read())
    assert "error" not in report, report
    return Flood(pid, release_write, report["held"], report["answers"])


def connected(target: Target, request: bytes) -> socket.socket:
    family, address, source = target
    connection = socket.socket(family, socket.SOCK_STREAM)
    if source is not None:
        connection.bind((source, 0))
    connection.connect(address)
    try:
        connection.send(request)
    except OSError:
        pass  # refused and closed already
    return connection


def settled_answers(connections: list[socket.socket]) -> tuple[int, list[str]]:
    """How many connections got no answer, and the error message of each that did, once none has come for 1 s."""
    waiting = {connection.fileno(): connection for connection in connections}
    received: dict[int, bytes] = {}
    poller = select.poll()
    for descriptor in waiting:
        poller.register(descriptor, select.POLLIN)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready = poller.poll(1000)
        if not ready:
            break
        for descriptor, _ in ready:
            try:
                chunk = waiting[descriptor].recv(65536)
            except OSError:
                chunk = b""
            received[descriptor] = received.get(descriptor, b"") + chunk
            if not chunk:
                poller.unregister(descriptor)
    answers = [
        json.loads(data.partition(b"\r\n\r\n")[2] or b'{"error": "closed"}')["error"] for data in received.values()
    ]
    return len(waiting) - len(received), answers


def scrape(address: tuple[str, int]) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``/metrics`` from SCRAPER_ADDRESS, as {name: {labels: value}}."""
    connection = http.client.HTTPConnection(*address, timeout=15, source_address=(SCRAPER_ADDRESS, 0))
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200
        text = response.read().decode()
    finally:
        connection.close()
    values: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return values


def runs_listed_as(uid: int, gid: int, socket_path: Path) -> int:
    """The status of ``GET /api/v1/runs`` on the socket, called by a child as ``uid``/``gid``."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            connection = UnixHTTPConnection(str(socket_path), timeout=15)
            connection.request("GET", "/api/v1/runs")
            status = connection.getresponse().status
        finally:
            os._exit(status % 256)
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status)


@pytest.fixture
def limited_exporter(tmp_path: Path) -> Iterator[ExporterProcess]:
    """An exporter run under ``prlimit --nofile=1024:1024`` that samples every 0.25 s."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as other users")
    prlimit = require_binary("prlimit", "apt-get install util-linux")
    powercap = FakePowercap(tmp_path / "sys")
    powercap.add_zone("intel-rapl:0", "package-0", energy_uj=1_000_000)
    flags = [f"--path.sysfs={powercap.sysfs}", "--api.socket-group=nogroup", "--sample-interval=0.25"]
    exporter = ExporterProcess(tmp_path, flags, wrapper=[prlimit, f"--nofile={NOFILE}:{NOFILE}"])
    yield exporter
    exporter.stop()


@pytest.fixture
def process_tree() -> Iterator[subprocess.Popen[bytes]]:
    """A shell with TREE_SIZE sleeping children, in a session of its own."""
    tree = subprocess.Popen(
        ["sh", "-c", f"for i in $(seq {TREE_SIZE}); do sleep 600 & done; wait"], start_new_session=True
    )
    wait_for(lambda: len(psutil.Process(tree.pid).children()) == TREE_SIZE, 30, "the tree's children")
    yield tree
    os.killpg(tree.pid, signal.SIGKILL)
    tree.wait()


def test_floods_under_1024_descriptors_leave_metrics_samples_and_another_users_calls_answering(
    limited_exporter: ExporterProcess, process_tree: subprocess.Popen[bytes]
) -> None:
    exporter = limited_exporter
    process = psutil.Process(exporter.process.pid)
    assert process.rlimit(psutil.RLIMIT_NOFILE) == (NOFILE, NOFILE)
    assert "descriptors are left for connections" in exporter.log()  # 2 x 256 connections do not fit: the budget binds
    ExporterClient(f"unix://{exporter.socket_path}").start_run("flood", pid=process_tree.pid)
    host, port = exporter.address.rsplit(":", 1)
    tcp_address = (host, int(port))
    unix: Target = (socket.AF_UNIX, str(exporter.socket_path), None)
    floods: list[Flood] = []
    try:
        samples_before = scrape(tcp_address)["impact_exporter_samples_total"][()]

        floods.append(flood(SOCKET_USER, NOGROUP, [unix] * 1100, UNFINISHED_API_CALL))
        assert floods[-1].held == PER_CLIENT
        assert floods[-1].answers == [
            f"too many connections from uid {SOCKET_USER}: at most {PER_CLIENT} per client "
            "(--web.max-connections-per-client)"
        ]

        floods.append(
            flood(TCP_USER, TCP_USER, [(socket.AF_INET, tcp_address, "127.0.0.1")] * 1015, UNFINISHED_HEADERS)
        )
        assert floods[-1].held == PER_CLIENT
        assert floods[-1].answers == [
            f"too many connections from 127.0.0.1: at most {PER_CLIENT} per client (--web.max-connections-per-client)"
        ]

        # More than the descriptors allow: 1,200 from 40 addresses, and root (not capped per client) on the socket,
        # while the procfs reader keeps its half of the descriptors open for the tracked tree.
        many_addresses = [(socket.AF_INET, tcp_address, f"127.0.1.{i}") for i in range(1, 41) for _ in range(30)]
        floods.append(flood(TCP_USER, TCP_USER, many_addresses, UNFINISHED_HEADERS))
        floods.append(flood(0, 0, [unix] * 700, UNFINISHED_API_CALL))
        open_descriptors = process.num_fds()
        assert open_descriptors <= NOFILE - DESCRIPTOR_RESERVE // 2

        cpu_before = sum(process.cpu_times()[:2])
        time.sleep(3.0)  # the floods hold their connections: the exporter should sleep but for its samples
        cpu_seconds = sum(process.cpu_times()[:2]) - cpu_before
        metrics = scrape(tcp_address)
        victim_status = runs_listed_as(NOBODY, NOGROUP, exporter.socket_path)
    finally:
        for held in reversed(floods):  # a later child holds copies of the earlier ones' release pipes
            held.release()
    assert victim_status == 200
    assert metrics["impact_exporter_samples_total"][()] >= samples_before + 8  # a sample every 0.25 s
    assert set(metrics["impact_source_up"].values()) == {1.0}
    assert set(metrics["impact_source_errors_total"].values()) == {0.0}
    assert cpu_seconds < 0.6, f"{cpu_seconds:.2f} s of CPU in 3 s while the floods were held"
    assert "Too many open files" not in exporter.log()
    assert open_descriptors > NOFILE - 3 * DESCRIPTOR_RESERVE  # near the limit: the reserve is what the sampler had
