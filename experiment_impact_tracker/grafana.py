"""Optional: a Grafana annotation for each run, pushed by the experiment through Grafana's HTTP API.

The dashboards in ``grafana/dashboards`` already mark every run's start and end from Prometheus, so no
experiment needs Grafana credentials for that. This push is for teams that also want a run's span on their
other dashboards (any dashboard with a Grafana annotation query for the tag ``impact`` shows it). Set both::

    IMPACT_GRAFANA_URL=https://grafana.example.org    # Grafana's root URL, sub-path included if it has one
    IMPACT_GRAFANA_TOKEN=glsa_...                     # a service account token allowed to write annotations

and the process that created a run posts one region annotation when it stops the run: from the run's start to
its end, tagged ``impact``, the experiment, the set and the run id, with the run's energy as text. Nothing is
sent unless both are set. A failure (Grafana away, a refused token) is one warning line: it never stops or
fails the experiment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from experiment_impact_tracker.errors import ImpactTrackerError

if TYPE_CHECKING:
    import requests

URL_ENV = "IMPACT_GRAFANA_URL"
TOKEN_ENV = "IMPACT_GRAFANA_TOKEN"
TAG = "impact"
TIMEOUT_SECONDS = 5.0


class GrafanaError(ImpactTrackerError):
    """The annotation could not be configured or posted; the message says what to change."""


@dataclass(frozen=True)
class GrafanaAnnotator:
    """Posts annotations to the Grafana at ``url`` with a bearer ``token``."""

    url: str
    token: str = field(repr=False)
    timeout: float = TIMEOUT_SECONDS

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> GrafanaAnnotator | None:
        """The annotator that ``IMPACT_GRAFANA_URL`` and ``IMPACT_GRAFANA_TOKEN`` configure; None when neither
        is set (the default: off). Raises GrafanaError when only one is set or the URL is not http(s)."""
        url = environ.get(URL_ENV, "").strip()
        token = environ.get(TOKEN_ENV, "").strip()
        if not url and not token:
            return None
        if not url or not token:
            missing = TOKEN_ENV if url else URL_ENV
            raise GrafanaError(
                f"{missing} is not set, so runs are not annotated in Grafana; set both {URL_ENV} and {TOKEN_ENV}, "
                "or neither"
            )
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise GrafanaError(
                f"{URL_ENV}={url!r} is not an http:// or https:// URL, so runs are not annotated in Grafana; set it "
                "to Grafana's root URL, e.g. https://grafana.example.org"
            )
        return cls(url.rstrip("/"), token)

    def annotate(self, annotation: Mapping[str, Any]) -> int:
        """POST ``annotation`` (Grafana's /api/annotations body) and return the id Grafana gave it."""
        import requests  # here, not at the top: only configured runs pay for importing it

        endpoint = f"{self.url}/api/annotations"
        try:
            response = requests.post(
                endpoint,
                json=dict(annotation),
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=self.timeout,
            )
        except requests.RequestException as error:
            raise GrafanaError(f"cannot reach Grafana at {self.url} ({_reason(error)}); check {URL_ENV}") from error
        if not response.ok:
            hint = (
                f"; check {TOKEN_ENV}: it must be a service account token of that Grafana with permission to "
                "write annotations"
                if response.status_code in (401, 403)
                else ""
            )
            raise GrafanaError(f"Grafana at {self.url} answered {response.status_code}: {_message(response)}{hint}")
        try:
            return int(response.json()["id"])
        except (ValueError, KeyError, TypeError) as error:
            raise GrafanaError(f"{endpoint} did not answer like Grafana's annotation API; check {URL_ENV}") from error


def run_annotation(record: Mapping[str, Any]) -> dict[str, Any]:
    """The annotation of one finished run, from its ``run.json`` record (``Run.record()``): a region from
    ``start_time`` to ``end_time`` in epoch milliseconds, the tags ``impact``, experiment, set (when it has one)
    and run id, and a text naming the run and its energy per component."""
    experiment, run_set, run_id = record["experiment"], record.get("set") or "", record["run_id"]
    energy = (record.get("final") or {}).get("energy_joules") or {}
    text = f"run {run_id} of {experiment!r}" + (f", set {run_set!r}" if run_set else "")
    if energy:
        parts = ", ".join(f"{component} {joules:.1f} J" for component, joules in sorted(energy.items()))
        text += f": {sum(energy.values()):.1f} J ({parts})"
    return {
        "time": round(record["start_time"] * 1000),
        "timeEnd": round(record["end_time"] * 1000),
        "tags": [tag for tag in (TAG, experiment, run_set, run_id) if tag],
        "text": text,
    }


def _message(response: requests.Response) -> str:
    """Grafana's own error message (its JSON ``message``), else the start of the body."""
    try:
        return str(response.json()["message"])
    except (ValueError, KeyError, TypeError):
        return " ".join(response.text.split())[:200] or response.reason


def _reason(error: requests.RequestException) -> str:
    """A short cause: the innermost exception's text, without the library's wrapping."""
    cause: BaseException = error
    while cause.__context__ is not None and str(cause.__context__):
        cause = cause.__context__
    return " ".join(str(cause).split())[:200]
