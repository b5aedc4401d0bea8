"""The host's grid region: ``--carbon.region`` as given, or read from a cloud's instance metadata, here a fake
metadata server over real HTTP that answers as AWS (IMDSv2), Google Cloud and Azure do, headers required."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client.registry import CollectorRegistry

from impact_exporter.cli import host_region, parse_settings
from impact_exporter.cloud import parse_gcp_zone, region_code, region_from_metadata
from impact_exporter.collector import ImpactCollector
from impact_exporter.host import HostInfo
from impact_exporter.sampler import Snapshot

TOKEN = "AQAEAFake-token=="


class FakeMetadata(BaseHTTPRequestHandler):
    """Answers like the three metadata services, each only with the header its real one requires."""

    answers: dict[str, str] = {}
    release = threading.Event()

    def do_PUT(self) -> None:
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            self.reply(200, TOKEN)
        else:
            self.reply(403, "")

    def do_GET(self) -> None:
        if self.path.startswith("/slow"):
            self.release.wait(5)
        if self.path == "/latest/meta-data/placement/region":
            ok = self.headers.get("X-aws-ec2-metadata-token") == TOKEN
        elif self.path == "/computeMetadata/v1/instance/zone":
            ok = self.headers.get("Metadata-Flavor") == "Google"
        elif self.path == "/metadata/instance/compute/location?api-version=2021-02-01&format=text":
            ok = self.headers.get("Metadata") == "true"
        else:
            ok = False
        key = self.path.split("?")[0]
        self.reply(200, self.answers[key]) if ok and key in self.answers else self.reply(401 if not ok else 404, "")

    def reply(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def metadata() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeMetadata)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    FakeMetadata.release.set()
    server.shutdown()
    server.server_close()


ANSWERS = {
    "/latest/meta-data/placement/region": "eu-west-3",
    "/computeMetadata/v1/instance/zone": "projects/123456789/zones/europe-west1-b",
    "/metadata/instance/compute/location": "westeurope",
}


@pytest.mark.parametrize(
    ("provider", "region"), [("aws", "aws:eu-west-3"), ("gcp", "gcp:europe-west1"), ("azure", "azure:westeurope")]
)
def test_each_providers_metadata_gives_the_region_code(
    metadata: str, provider: str, region: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeMetadata, "answers", ANSWERS)
    assert region_from_metadata(provider, metadata) == region
    # through the flags, as the exporter does at start-up
    settings = parse_settings([f"--carbon.region-from={provider}", f"--carbon.metadata-url={metadata}/"])
    assert host_region(settings) == region


@pytest.mark.parametrize(
    ("provider", "answers", "why"),
    [
        ("azure", {}, "404"),  # a metadata service without the path: another provider's VM
        ("aws", {**ANSWERS, "/latest/meta-data/placement/region": "<html>portal</html>"}, "not a region name"),
        ("gcp", {**ANSWERS, "/computeMetadata/v1/instance/zone": "europe-west1"}, "not a zone path"),
    ],
)
def test_a_wrong_answer_is_one_warning_and_no_region(
    metadata: str,
    provider: str,
    answers: dict,
    why: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(FakeMetadata, "answers", answers)
    with caplog.at_level(logging.WARNING, logger="impact_exporter.cloud"):
        assert region_from_metadata(provider, metadata) == ""
    assert why in caplog.text and f"--carbon.region-from={provider}: cannot read" in caplog.text
    assert "pass --carbon.region=CODE" in caplog.text


def test_no_metadata_service_or_a_hanging_one_is_no_region_not_a_crash(
    metadata: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="impact_exporter.cloud"):
        assert region_from_metadata("azure", "http://127.0.0.1:9", timeout=0.5) == ""  # nothing listens there
        assert region_from_metadata("gcp", f"{metadata}/slow", timeout=0.1) == ""  # answers after the timeout
    assert caplog.text.count("--carbon.region-from=") == 2 and "Traceback" not in caplog.text


@pytest.mark.parametrize(
    ("given", "code"),
    [("fr", "FR"), ("us_ca", "US-CA"), (" CA-QC ", "CA-QC"), ("GCP:Europe-West1", "gcp:europe-west1")],
)
def test_carbon_region_is_written_as_the_table_writes_codes(given: str, code: str) -> None:
    assert region_code(given) == code
    assert host_region(parse_settings([f"--carbon.region={given}"])) == code


@pytest.mark.parametrize("given", ["France!", "aws:", "digitalocean:ams3", "F"])
def test_a_malformed_carbon_region_is_a_usage_error(given: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse_settings([f"--carbon.region={given}"])
    assert caught.value.code == 2
    assert "expected a country (FR), a subdivision (US-CA, CA-QC) or PROVIDER:REGION" in capsys.readouterr().err


def test_a_region_and_a_provider_to_read_it_from_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse_settings(["--carbon.region=FR", "--carbon.region-from=aws"])
    assert caught.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert host_region(parse_settings([])) == ""


def test_gcp_zone_paths_give_their_region() -> None:
    assert parse_gcp_zone("projects/1/zones/us-central1-a\n") == "us-central1"
    with pytest.raises(ValueError):
        parse_gcp_zone("zones/us-central1-a")


def test_impact_host_info_carries_the_region_only_when_known() -> None:
    for region, labels in (("gcp:europe-west1", {"region": "gcp:europe-west1"}), ("", {})):
        registry = CollectorRegistry()
        registry.register(ImpactCollector(Snapshot, HostInfo("node", "cpu", "vendor", 2, "6.1", region), "0"))
        expected = {"hostname": "node", "cpu_model": "cpu", "cpu_vendor": "vendor", "cpu_count": "2"}
        assert registry.get_sample_value("impact_host_info", {**expected, "kernel": "6.1", **labels}) == 1.0
