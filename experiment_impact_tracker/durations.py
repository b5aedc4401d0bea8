"""The one duration grammar of every command: Prometheus's, as PromQL and its flags write durations.

``--runs.retain-finished`` (impact-exporter) and ``--since`` (impact-report) both read durations here, so a
duration that works in one works in the other and in Prometheus itself.
"""

from __future__ import annotations

import re

_DURATION_UNITS = (
    ("y", 365 * 86400.0),
    ("w", 7 * 86400.0),
    ("d", 86400.0),
    ("h", 3600.0),
    ("m", 60.0),
    ("s", 1.0),
    ("ms", 0.001),
)
_DURATION = re.compile(r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?")
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus-style duration: "30d", "1h30m", "90s", "250ms", or a bare number of seconds.

    Units are y (365 d), w, d, h, m, s, ms, each at most once and in that order, as PromQL writes them.
    """
    stripped = text.strip()
    if _NUMBER.fullmatch(stripped):
        return float(stripped)
    match = _DURATION.fullmatch(stripped)
    if not stripped or match is None:
        raise ValueError(
            f"invalid duration {text!r}: use a number of seconds or units y, w, d, h, m, s, ms in that order, "
            "e.g. 30d, 1h30m, 90s"
        )
    return sum(
        int(count) * seconds for count, (_, seconds) in zip(match.groups(), _DURATION_UNITS, strict=True) if count
    )
