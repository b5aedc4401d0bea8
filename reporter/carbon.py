"""From measured energy to carbon: unit conversions, PUE, and where the grid's carbon intensity comes from.

The formulas (docs/reporting.md, "Carbon and PUE")::

    kWh          = joules / 3.6e6
    kg CO2eq     = kWh * PUE * intensity_g_per_kwh / 1000

The intensity is resolved in a fixed order (``resolve_intensity``): an explicit ``--carbon-intensity``, then
``--region`` looked up in the bundled table ``reporter/data/carbon_intensity.csv``, then a Prometheus series
(``--carbon-intensity-query``) integrated against power with ``integrate_intensity``, and only then the world
average, flagged ``is_default`` so every output can say loudly that no location was given. Nothing here looks
at the network to guess a location. Everything in this module is pure.
"""

from __future__ import annotations

import csv
import difflib
import functools
import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Protocol

import numpy as np

JOULES_PER_KWH = 3.6e6

# Power usage effectiveness: facility energy / IT energy. 1.58 is the global average data-centre PUE of the
# Uptime Institute's 2018 survey, the figure Henderson et al. (2020) use for experiment-impact-tracker.
DEFAULT_PUE = 1.58
OVERRIDE_PUE_ENV = "OVERRIDE_PUE"
"""experiment-impact-tracker 0.1's environment variable for the PUE; ``--pue`` (or ``pue=``) takes precedence."""

# IEA's 2019 world average carbon intensity of electricity generation, the fallback when nothing else is known.
WORLD_AVERAGE_G_PER_KWH = 475.0
WORLD_AVERAGE_SOURCE = "IEA world average carbon intensity of electricity generation, 2019 (475 gCO2eq/kWh)"
WORLD_AVERAGE_NOTE = (
    "NOTE: no --region, --carbon-intensity or --carbon-intensity-query was given, so carbon is estimated with "
    "the world average grid intensity of 475 gCO2eq/kWh (IEA 2019). Real grids range from under 30 to over "
    "700 gCO2eq/kWh: pass --region or --carbon-intensity for a figure worth publishing."
)

TABLE_RESOURCE = "data/carbon_intensity.csv"
TABLE_COLUMNS = ["region", "name", "g_co2eq_per_kwh", "year", "source"]
_REGION_CODE = re.compile(r"[A-Z]{2}(?:-[A-Z]{2})?")


@dataclass(frozen=True)
class CarbonIntensity:
    """The grid carbon intensity a report uses, and where it came from (cited in the report).

    ``g_per_kwh`` is None when the intensity varies in time (``method == "prometheus-series"``); then the
    report integrates the series against power. ``method`` is one of "flag", "region-table",
    "prometheus-series", "world-average"; ``is_default`` is True only for the world-average fallback.
    """

    g_per_kwh: float | None
    source: str
    region: str | None
    year: int | None
    is_default: bool
    method: str


@dataclass(frozen=True)
class RegionIntensity:
    """One row of the bundled table: an annual average grid intensity for a country or US state."""

    region: str  # ISO 3166-1 alpha-2 ("DE") or US state as "US-CA"
    name: str
    g_co2eq_per_kwh: float
    year: int
    source: str


class TimeSeries(Protocol):
    """Anything with parallel ``timestamps`` (unix seconds) and ``values`` arrays, e.g. prometheus.Series."""

    @property
    def timestamps(self) -> np.ndarray: ...

    @property
    def values(self) -> np.ndarray: ...


# -- conversions ---------------------------------------------------------------------------------------------


def kwh_from_joules(joules: float) -> float:
    """Kilowatt-hours in ``joules`` (1 kWh = 3.6e6 J)."""
    return joules / JOULES_PER_KWH


def kg_co2eq(energy_kwh: float, g_per_kwh: float, pue: float = DEFAULT_PUE) -> float:
    """Kilograms of CO2eq for ``energy_kwh`` of IT energy: the facility draws ``pue`` times as much."""
    check_pue(pue)
    check_intensity(g_per_kwh)
    return energy_kwh * pue * g_per_kwh / 1000.0


def kg_co2eq_from_joules(joules: float, g_per_kwh: float, pue: float = DEFAULT_PUE) -> float:
    """``kg_co2eq`` of an energy measured in joules, as the exporter measures it."""
    return kg_co2eq(kwh_from_joules(joules), g_per_kwh, pue)


def check_pue(pue: float) -> float:
    """``pue`` if it is a finite number >= 1 (a facility cannot use less energy than its IT load)."""
    if not (isinstance(pue, (int, float)) and math.isfinite(pue) and pue >= 1.0):
        raise ValueError(f"PUE must be a finite number >= 1.0 (facility energy / IT energy), not {pue!r}")
    return float(pue)


def resolve_pue(flag: float | None, environ: Mapping[str, str]) -> float:
    """The PUE to use: ``flag`` when given, else ``$OVERRIDE_PUE``, else DEFAULT_PUE; ValueError naming the one
    that is not a finite number >= 1."""
    if flag is not None:
        return check_pue(flag)
    text = environ.get(OVERRIDE_PUE_ENV, "").strip()
    if not text:
        return DEFAULT_PUE
    try:
        return check_pue(float(text))
    except ValueError:
        raise ValueError(
            f"{OVERRIDE_PUE_ENV}={text!r}: the PUE must be a finite number >= 1.0 (facility energy / IT energy)"
        ) from None


def check_intensity(g_per_kwh: float) -> float:
    """``g_per_kwh`` if it is a finite number >= 0."""
    if not (isinstance(g_per_kwh, (int, float)) and math.isfinite(g_per_kwh) and g_per_kwh >= 0):
        raise ValueError(f"carbon intensity must be a finite number of gCO2eq/kWh >= 0, not {g_per_kwh!r}")
    return float(g_per_kwh)


# -- time-varying intensity ----------------------------------------------------------------------------------


def integrate_intensity(
    power_timestamps: np.ndarray | list[float], power_watts: np.ndarray | list[float], intensity_series: TimeSeries
) -> float:
    """Grams of CO2eq emitted by a load at ``power_watts`` on a grid whose intensity changes over time.

    Both signals are step functions: power sample i holds from ``power_timestamps[i]`` until the next
    timestamp (the last sample only closes the last interval), and an intensity sample (gCO2eq/kWh) holds
    until the next one. Before the first intensity sample its first value is used. The result is
    ``sum(P * I * dt) / 3.6e6`` over the pieces where neither changes, so the effective intensity is the
    energy-weighted average, not a plain time average. It is IT energy: multiply by the PUE as for
    ``kg_co2eq``. With a constant intensity it reduces to ``kWh * intensity``.
    """
    t = np.asarray(power_timestamps, dtype=np.float64)
    p = np.asarray(power_watts, dtype=np.float64)
    it = np.asarray(intensity_series.timestamps, dtype=np.float64)
    iv = np.asarray(intensity_series.values, dtype=np.float64)
    if t.ndim != 1 or t.shape != p.shape:
        raise ValueError(f"power timestamps and watts must be 1-D and equally long, not {t.shape} and {p.shape}")
    if it.ndim != 1 or it.shape != iv.shape or len(it) == 0:
        raise ValueError("the intensity series needs at least one sample, with as many timestamps as values")
    for name, array in (("power timestamps", t), ("power watts", p), ("intensity timestamps", it)):
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contain NaN or infinite values")
    if not np.all(np.isfinite(iv)) or np.any(iv < 0):
        raise ValueError("intensity values must be finite and >= 0 gCO2eq/kWh")
    if np.any(np.diff(t) <= 0) or np.any(np.diff(it) <= 0):
        raise ValueError("timestamps must be strictly increasing")
    if len(t) < 2:
        return 0.0
    inside = it[(it > t[0]) & (it < t[-1])]
    edges = np.union1d(t, inside)
    left, widths = edges[:-1], np.diff(edges)
    power = p[np.searchsorted(t, left, side="right") - 1]
    intensity = iv[np.clip(np.searchsorted(it, left, side="right") - 1, 0, None)]
    return float(np.sum(power * widths * intensity) / JOULES_PER_KWH)


# -- resolution ----------------------------------------------------------------------------------------------


def resolve_intensity(
    flag_g_per_kwh: float | str | None = None, region: str | None = None, series_query: str | None = None
) -> CarbonIntensity:
    """The intensity to report with, by precedence: the flag, the region table, a Prometheus series, the world average.

    Nothing is guessed from the machine or the network: without any of the three, the result is the world
    average with ``is_default=True``, and the report must print ``WORLD_AVERAGE_NOTE``.
    """
    if flag_g_per_kwh is not None:
        value = _parse_flag(flag_g_per_kwh)
        return CarbonIntensity(
            g_per_kwh=value,
            source=f"given with --carbon-intensity ({value:g} gCO2eq/kWh)",
            region=None,
            year=None,
            is_default=False,
            method="flag",
        )
    if region is not None:
        row = lookup_region(region)
        return CarbonIntensity(
            g_per_kwh=row.g_co2eq_per_kwh,
            source=f"{row.name} ({row.region}), {row.year}: {row.source}",
            region=row.region,
            year=row.year,
            is_default=False,
            method="region-table",
        )
    if series_query is not None:
        if not series_query.strip():
            raise ValueError("--carbon-intensity-query is empty; pass a PromQL expression in gCO2eq/kWh")
        return CarbonIntensity(
            g_per_kwh=None,
            source=f"Prometheus series {series_query.strip()} (gCO2eq/kWh), energy-weighted over each run",
            region=None,
            year=None,
            is_default=False,
            method="prometheus-series",
        )
    return CarbonIntensity(
        g_per_kwh=WORLD_AVERAGE_G_PER_KWH,
        source=WORLD_AVERAGE_SOURCE,
        region=None,
        year=2019,
        is_default=True,
        method="world-average",
    )


def _parse_flag(flag: float | str) -> float:
    try:
        value = float(flag)
    except (TypeError, ValueError):
        raise ValueError(f"--carbon-intensity must be a number of gCO2eq/kWh, not {flag!r}") from None
    if isinstance(flag, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"--carbon-intensity must be a finite number of gCO2eq/kWh >= 0, not {flag!r}")
    return value


def lookup_region(code: str) -> RegionIntensity:
    """The table row for ``code`` ("de", "DE", "us-ca", "US_CA"); a ValueError naming close matches otherwise."""
    table = region_table()
    key = code.strip().upper().replace("_", "-")
    if key in table:
        return table[key]
    raise ValueError(f"unknown region {code!r}: {_suggestions(key, table)}")


def _suggestions(key: str, table: dict[str, RegionIntensity]) -> str:
    by_name = {row.name.upper(): row.region for row in table.values()}
    by_code = difflib.get_close_matches(key, list(table), n=5, cutoff=0.5) if len(key) <= 5 else []
    named = [by_name[name] for name in difflib.get_close_matches(key, list(by_name), n=3, cutoff=0.7)]
    matches = list(dict.fromkeys(named + by_code))[:5]
    how = (
        "codes are ISO 3166-1 alpha-2 (DE, FR) or US-<state> (US-CA); the table is in docs/reporting.md; "
        "or pass --carbon-intensity G_PER_KWH with your grid's figure"
    )
    if not matches:
        return f"no close match; {how}"
    close = ", ".join(f"{region} ({table[region].name})" for region in matches)
    return f"did you mean {close}? {how}"


@functools.cache
def region_table() -> dict[str, RegionIntensity]:
    """The bundled table, keyed by upper-case region code; validated on first use."""
    text = resources.files("impact_reporter").joinpath(TABLE_RESOURCE).read_text(encoding="utf-8")
    return parse_region_table(text)


def parse_region_table(text: str) -> dict[str, RegionIntensity]:
    """Rows of a ``region,name,g_co2eq_per_kwh,year,source`` CSV, checked: unique codes, sane numbers, a source."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames != TABLE_COLUMNS:
        raise ValueError(f"carbon intensity table must have columns {TABLE_COLUMNS}, not {reader.fieldnames}")
    table: dict[str, RegionIntensity] = {}
    for line, row in enumerate(reader, start=2):
        region = row["region"].strip()
        if not _REGION_CODE.fullmatch(region):
            raise ValueError(f"line {line}: region {region!r} is not an upper-case code such as DE or US-CA")
        if region in table:
            raise ValueError(f"line {line}: region {region} appears twice")
        try:
            value = float(row["g_co2eq_per_kwh"])
            year = int(row["year"])
        except ValueError:
            raise ValueError(f"line {line}: g_co2eq_per_kwh and year must be numbers") from None
        if not (math.isfinite(value) and 0 <= value < 2000):
            raise ValueError(f"line {line}: implausible intensity {value} gCO2eq/kWh")
        if not row["name"].strip() or not row["source"].strip():
            raise ValueError(f"line {line}: every row needs a name and a source")
        table[region] = RegionIntensity(region, row["name"].strip(), value, year, row["source"].strip())
    return table
