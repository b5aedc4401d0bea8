"""A real exporter behind --web.config.file: /metrics over TLS with basic auth, plain HTTP refused, client
certificates, the TCP run API refused on a non-loopback address without TLS, and a real Prometheus scraping it
all over TLS with basic auth."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.servers import ExporterProcess, PrometheusServer, refused_start, wait_for
from tests.tls import PASSWORD, basic, bcrypt_hash, make_certificate, tls_web_config

TOKEN = "api-token-of-the-launcher"


@pytest.fixture
def tls_exporter(
    tmp_path: Path, start_exporter: Callable[..., ExporterProcess], node_exporter_powercap: Path
) -> tuple[ExporterProcess, Path]:
    """An exporter serving TLS with one basic-auth user (``prometheus``/PASSWORD), and its certificate."""
    config, cert = tls_web_config(tmp_path, rest=f"basic_auth_users:\n  prometheus: {bcrypt_hash(PASSWORD)}\n")
    exporter = start_exporter(f"--path.sysfs={node_exporter_powercap}", f"--web.config.file={config}")
    return exporter, cert


def test_metrics_over_tls_need_the_right_user_and_password(tls_exporter: tuple[ExporterProcess, Path]) -> None:
    exporter, cert = tls_exporter
    url = f"https://{exporter.address}"

    def get(path: str, authorization: str | None) -> requests.Response:
        headers = {"Authorization": authorization} if authorization else {}
        return requests.get(f"{url}{path}", headers=headers, verify=str(cert), timeout=10)

    right = get("/metrics", basic("prometheus", PASSWORD))
    assert right.status_code == 200
    assert "impact_exporter_last_sample_timestamp_seconds" in right.text
    for authorization in (None, basic("prometheus", "wrong"), basic("grafana", PASSWORD)):
        refused = get("/metrics", authorization)
        assert refused.status_code == 401, authorization
        assert refused.headers["WWW-Authenticate"].startswith("Basic ")
        assert "impact_" not in refused.text
    assert get("/", None).status_code == 401
    assert get("/-/healthy", None).status_code == 200, "liveness probes need no credentials"


def test_plain_http_to_the_tls_listener_gets_no_answer(tls_exporter: tuple[ExporterProcess, Path]) -> None:
    exporter, _ = tls_exporter
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{exporter.address}/metrics", headers={"Authorization": basic("prometheus", PASSWORD)})
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://{exporter.address}/metrics", timeout=10)  # the certificate is not trusted
    assert "Traceback" not in exporter.log()


def test_a_required_client_certificate_is_verified(
    tmp_path: Path, start_exporter: Callable[..., ExporterProcess], node_exporter_powercap: Path
) -> None:
    cert, key = make_certificate(tmp_path)
    client_cert, client_key = make_certificate(tmp_path, "client")
    stranger = make_certificate(tmp_path, "stranger")
    config = tmp_path / "web.yml"
    config.write_text(
        f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
        f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {client_cert}\n"
    )
    exporter = start_exporter(f"--path.sysfs={node_exporter_powercap}", f"--web.config.file={config}")
    url = f"https://{exporter.address}/metrics"

    assert requests.get(url, cert=(str(client_cert), str(client_key)), verify=str(cert), timeout=10).ok
    for client in (None, tuple(map(str, stranger))):
        with pytest.raises((requests.exceptions.SSLError, requests.ConnectionError)):
            requests.get(url, cert=client, verify=str(cert), timeout=10)


def start_with_token(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    return refused_start(f"--api.token-file={token_file}", "--no-api.socket", *flags)


@pytest.mark.parametrize("address", [":9877", "0.0.0.0:9877", "[::]:9877", "node1.example:9877"])
def test_the_tcp_run_api_is_refused_on_a_non_loopback_address_without_tls(tmp_path: Path, address: str) -> None:
    result = start_with_token(tmp_path, f"--web.listen-address={address}")
    assert result.returncode == 2
    assert "--api.token-file" in result.stderr and "--web.config.file" in result.stderr
    assert "--web.listen-address=127.0.0.1:9877" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_tcp_run_api_is_served_on_every_interface_with_tls(
    tmp_path: Path, start_exporter: Callable[..., ExporterProcess], node_exporter_powercap: Path
) -> None:
    config, cert = tls_web_config(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    exporter = start_exporter(
        "--web.listen-address=0.0.0.0:0",
        f"--path.sysfs={node_exporter_powercap}",
        f"--web.config.file={config}",
        f"--api.token-file={token_file}",
    )
    port = exporter.address.rsplit(":", 1)[1]
    runs = f"https://127.0.0.1:{port}/api/v1/runs"
    for token, status in ((TOKEN, 200), ("wrong", 401)):
        headers = {"Authorization": f"Bearer {token}"}
        assert requests.get(runs, headers=headers, verify=str(cert), timeout=10).status_code == status


def test_prometheus_scrapes_over_tls_with_basic_auth(
    tmp_path: Path, tls_exporter: tuple[ExporterProcess, Path]
) -> None:
    """A private Prometheus (the session one scrapes plain HTTP) with one job that has the right password and one
    that has a wrong one: only the first gets the exporter's metrics."""
    exporter, cert = tls_exporter
    workdir = tmp_path / "prometheus-tls"
    workdir.mkdir()
    prometheus = PrometheusServer(workdir)
    try:
        jobs = {"right": PASSWORD, "wrong": "not-" + PASSWORD}
        prometheus.config_file.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n"
            + "".join(
                f"  - job_name: {job}\n    scheme: https\n    tls_config:\n      ca_file: {cert}\n"
                f"    basic_auth:\n      username: prometheus\n      password: '{password}'\n"
                f"    static_configs:\n      - targets: ['{exporter.address}']\n"
                for job, password in jobs.items()
            )
        )
        prometheus.process.send_signal(signal.SIGHUP)  # reload the configuration
        wait_for(lambda: prometheus.query('up{job="right"} == 1'), 30, "a scrape over TLS with basic auth")
        wait_for(lambda: prometheus.query('up{job="wrong"} == 0'), 30, "a scrape with the wrong password")
        assert prometheus.query('impact_exporter_last_sample_timestamp_seconds{job="right"}')
        assert not prometheus.query('impact_exporter_last_sample_timestamp_seconds{job="wrong"}')
    finally:
        prometheus.stop()


def test_min_version_refuses_older_clients(
    tmp_path: Path, start_exporter: Callable[..., ExporterProcess], node_exporter_powercap: Path
) -> None:
    config, cert = tls_web_config(tmp_path, tls_extra="  min_version: TLS13\n")
    exporter = start_exporter(f"--path.sysfs={node_exporter_powercap}", f"--web.config.file={config}")
    host, port = exporter.address.rsplit(":", 1)

    def handshake(version: ssl.TLSVersion) -> str:
        context = ssl.create_default_context(cafile=str(cert))
        context.minimum_version = context.maximum_version = version
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                return tls.version()

    assert handshake(ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        handshake(ssl.TLSVersion.TLSv1_2)
