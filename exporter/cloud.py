"""The grid region a host is in, for ``impact_host_info{region}``: given with ``--carbon.region``, or read once at
start-up from the cloud provider's instance metadata service (``--carbon.region-from``).

The reporter looks the region up in its table of grid carbon intensities (docs/reporting.md); codes are ISO 3166
(``FR``, ``US-CA``) or ``PROVIDER:REGION`` (``aws:us-east-1``, ``gcp:europe-west1``, ``azure:westeurope``). The
metadata services answer on a link-local address from inside a VM only, so every request has a short timeout,
and a failure is one log line and no region: never a crash, never a guess.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import requests

log = logging.getLogger(__name__)

METADATA_URL = "http://169.254.169.254"
"""Where AWS, Google Cloud and Azure all serve instance metadata (link-local, reachable from the VM only)."""
METADATA_TIMEOUT_SECONDS = 1.0
PROVIDERS = ("aws", "gcp", "azure")
REGION_CODE = re.compile(r"[A-Z]{2}(?:-[A-Z0-9]{1,3})?|(?:aws|azure|gcp):[a-z0-9-]+")
_CLOUD_REGION = re.compile(r"[a-z0-9-]+")
_GCP_ZONE = re.compile(r"projects/[^/]+/zones/([a-z0-9-]+)-[a-z]")


def region_code(text: str) -> str:
    """``text`` as the table spells region codes ("fr" -> "FR", "GCP:Europe-West1" -> "gcp:europe-west1");
    ValueError naming the accepted forms otherwise."""
    text = text.strip()
    provider, colon, region = text.partition(":")
    code = f"{provider.lower()}:{region.lower()}" if colon else text.upper().replace("_", "-")
    if not REGION_CODE.fullmatch(code):
        raise ValueError(
            f"--carbon.region={text!r}: expected a country (FR), a subdivision (US-CA, CA-QC) or PROVIDER:REGION "
            "(aws:us-east-1, gcp:europe-west1, azure:westeurope); 'impact-report regions' lists the codes"
        )
    return code


def parse_gcp_zone(text: str) -> str:
    """The region of a Google Cloud zone as the metadata gives it ("projects/1/zones/europe-west1-b": europe-west1)."""
    match = _GCP_ZONE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not a zone path: {text.strip()[:80]!r}")
    return match.group(1)


def _aws(base: str, timeout: float) -> str:
    """The region of an EC2 instance, through IMDSv2 (a session token first), else IMDSv1."""
    token = requests.put(
        f"{base}/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}, timeout=timeout
    )
    headers = {"X-aws-ec2-metadata-token": token.text.strip()} if token.ok else {}
    return _get(f"{base}/latest/meta-data/placement/region", headers, timeout)


def _gcp(base: str, timeout: float) -> str:
    zone = _get(f"{base}/computeMetadata/v1/instance/zone", {"Metadata-Flavor": "Google"}, timeout)
    return parse_gcp_zone(zone)


def _azure(base: str, timeout: float) -> str:
    url = f"{base}/metadata/instance/compute/location?api-version=2021-02-01&format=text"
    return _get(url, {"Metadata": "true"}, timeout)


READERS: dict[str, Callable[[str, float], str]] = {"aws": _aws, "gcp": _gcp, "azure": _azure}


def _get(url: str, headers: dict[str, str], timeout: float) -> str:
    response = requests.get(url, headers=headers, timeout=timeout)
    response.raise_for_status()
    return response.text.strip()


def region_from_metadata(provider: str, base_url: str = METADATA_URL, timeout: float = METADATA_TIMEOUT_SECONDS) -> str:
    """``provider:region`` as the instance metadata of ``provider`` (aws, gcp, azure) tells it; "" after a warning
    naming the fix when the service cannot be reached or answers something else."""
    base = base_url.rstrip("/")
    try:
        region = READERS[provider](base, timeout).lower()
        if not _CLOUD_REGION.fullmatch(region):
            raise ValueError(f"not a region name: {region[:80]!r}")
    except (requests.RequestException, ValueError) as error:
        log.warning(
            "--carbon.region-from=%s: cannot read the region from the instance metadata at %s (%s); "
            "impact_host_info has no region, so reports use another intensity: pass --carbon.region=CODE",
            provider,
            base,
            error,
        )
        return ""
    log.info("carbon region %s:%s, from the %s instance metadata", provider, region, provider)
    return f"{provider}:{region}"
