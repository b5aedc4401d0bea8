"""From measured energy to carbon: unit conversions, PUE, and where the grid's carbon intensity comes from.

The formulas (docs/reporting.md, "Carbon and PUE")::

    kWh          = joules / 3.6e6
    kg CO2eq     = kWh * PUE * intensity_g_per_kwh / 1000

The intensity is resolved in a fixed order (``resolve_intensity``, ``intensity_for_host``): an explicit
``--carbon-intensity``, then ``--region`` looked up in the bundled table ``reporter/data/carbon_intensity.csv``
(rebuilt by scripts/build-carbon-table), then the region each host's exporter exports, then a Prometheus series
(``--carbon-intensity-query``) integrated against power with ``integrate_intensity``, and only then the world
average, flagged ``is_default`` so every output can say loudly that no location was given. A run on hosts of
different intensities gets their energy-weighted mean (``energy_weighted``). Every figure says what it is:
CO2e or CO2 only, its basis (location-based annual average) and its year. Nothing here looks at the network to
guess a location. Everything in this module is pure.
"""

from __future__ import annotations

import csv
import difflib
import functools
import io
import math
import re
from collections.abc import Mapping, Sequence
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

TABLE_RESOURCE = "data/carbon_intensity.csv"
TABLE_COLUMNS = ["region", "name", "g_per_kwh", "gas", "basis", "year", "source"]
WORLD = "WORLD"
"""The table's row for the world average, the fallback when nothing else is known."""
GASES = ("CO2e", "CO2")
PRECEDENCE = (
    "--carbon-intensity or --region, else each host's region (impact-exporter --carbon.region), else "
    "--carbon-intensity-query, else the world average"
)
_REGION_CODE = re.compile(r"[A-Z]{2}(?:-[A-Z0-9]{1,3})?|WORLD|(?:aws|azure|gcp):[a-z0-9-]+")
CODES_HELP = (
    "codes are ISO 3166-1 alpha-2 (FR), ISO 3166-2 subdivisions (US-CA, CA-QC, CN-BJ) or PROVIDER:REGION "
    "(gcp:europe-west1, aws:us-east-1, azure:westeurope); 'impact-report regions' lists them all"
)


@dataclass(frozen=True)
class CarbonIntensity:
    """The grid carbon intensity a report uses, and where it came from (cited in the report).

    ``g_per_kwh`` is None when the intensity varies in time (``method == "prometheus-series"``); then the
    report integrates the series against power. ``method`` is one of "flag", "region-table", "host-region",
    "per-host" (hosts of one run with different intensities, energy-weighted), "prometheus-series",
    "world-average"; ``is_default`` is True when the world-average fallback counts in it. ``gas`` is "CO2e" or
    "CO2" (CO2 only) for a figure from the table, "" for one given from outside (the flag, a series), taken as
    CO2e; ``basis`` says what the figure averages (all table rows are location-based annual averages).
    """

    g_per_kwh: float | None
    source: str
    region: str | None
    year: int | None
    is_default: bool
    method: str
    gas: str = ""
    basis: str = ""

    @property
    def unit(self) -> str:
        """The intensity's unit: gCO2/kWh for a CO2-only figure, gCO2eq/kWh otherwise."""
        return "gCO2/kWh" if self.gas == "CO2" else "gCO2eq/kWh"

    def describe(self) -> str:
        """What the figure is, in one sentence for a report: value, unit, CO2e or CO2 only, basis, region, year and
        source (a given figure or a series: where it came from)."""
        if self.method == "per-host" or not self.region:
            return self.source
        gas = "CO2 only, not CO2e" if self.gas == "CO2" else self.gas
        return f"{self.g_per_kwh:g} {self.unit} ({gas}; {self.basis}): {self.source}"

    @property
    def chosen_by(self) -> str:
        """Which step of ``PRECEDENCE`` gave the figure, in a few words."""
        return CHOSEN_BY[self.method]


CHOSEN_BY = {
    "flag": "given with --carbon-intensity",
    "region-table": "from --region",
    "host-region": "from the host's region",
    "per-host": "from each host's region, energy-weighted",
    "prometheus-series": "from --carbon-intensity-query",
    "world-average": "the world average, as no location was given",
}


@dataclass(frozen=True)
class RegionIntensity:
    """One row of the bundled table: an annual average grid intensity for a country, a subdivision (US state,
    Canadian or Chinese province) or a cloud region, with its gas, basis, year and source."""

    region: str  # "FR", "US-CA", "CA-QC", "CN-BJ", "WORLD", "gcp:europe-west1", "aws:us-east-1"
    name: str
    g_per_kwh: float
    gas: str  # "CO2e" or "CO2"
    basis: str
    year: int
    source: str

    def intensity(self, method: str) -> CarbonIntensity:
        """The row as the intensity a report uses, found by ``method``."""
        return CarbonIntensity(
            g_per_kwh=self.g_per_kwh,
            source=f"{self.name} ({self.region}), {self.year}: {self.source}",
            region=self.region,
            year=self.year,
            is_default=method == "world-average",
            method=method,
            gas=self.gas,
            basis=self.basis,
        )


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
    """The intensity the command line asks for, by precedence: the flag, the region table, a Prometheus series,
    the world average.

    Nothing is guessed from the machine or the network: without any of the three, the result is the world
    average with ``is_default=True``, which a host's own region (``intensity_for_host``) still overrides; a
    report that uses it must print ``world_average_note()``.
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
        return lookup_region(region).intensity("region-table")
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
    return world_average()


def intensity_for_host(chosen: CarbonIntensity, host_region: str) -> CarbonIntensity:
    """The intensity for one host's energy: the command line's flag or region, else the region the host's exporter
    exports (``impact_host_info{region}``), else the series or the world average ``chosen`` holds.

    ValueError names a host region the table does not know.
    """
    if chosen.method in ("flag", "region-table") or not host_region:
        return chosen
    try:
        return lookup_region(host_region).intensity("host-region")
    except ValueError as error:
        raise ValueError(f"{error} (the region its exporter exports with --carbon.region)") from None


def energy_weighted(parts: Sequence[tuple[float, float]]) -> float:
    """The intensity of energy drawn in parts, each (joules, g/kWh): sum(E_i * I_i) / sum(E_i).

    So a run's grams equal the sum of its hosts' grams. Without energy, the plain mean.
    """
    joules = sum(e for e, _ in parts)
    if joules <= 0:
        return float(np.mean([g for _, g in parts]))
    return sum(e * g for e, g in parts) / joules


def combined_intensity(parts: Sequence[tuple[str, float, CarbonIntensity]], g_per_kwh: float) -> CarbonIntensity:
    """One intensity for a run's hosts, each (instance, joules, intensity): theirs when all hosts share one,
    else a "per-host" intensity of ``g_per_kwh`` (their energy-weighted mean) whose source lists every host."""
    distinct = list(dict.fromkeys(intensity for _, _, intensity in parts))
    if len(distinct) == 1:
        return distinct[0]
    gases = sorted({intensity.gas or "CO2e" for intensity in distinct})
    years = {intensity.year for intensity in distinct}
    hosts = "; ".join(f"{instance}: {intensity.describe()}" for instance, _, intensity in parts)
    return CarbonIntensity(
        g_per_kwh=g_per_kwh,
        source=f"energy-weighted over the run's hosts ({g_per_kwh:.4g} gCO2eq/kWh): {hosts}",
        region=None,
        year=years.pop() if len(years) == 1 else None,
        is_default=any(intensity.is_default for intensity in distinct),
        method="per-host",
        gas=gases[0] if len(gases) == 1 else "mixed: " + " and ".join(gases),
        basis="location-based annual averages" if all(i.region for i in distinct) else "",
    )


def world_average() -> CarbonIntensity:
    """The fallback: the table's world row (the latest world figure of the countries' dataset), flagged default."""
    return region_table()[WORLD].intensity("world-average")


def world_average_note() -> str:
    """The note every output prints when the world average counts in its carbon."""
    world = region_table()[WORLD]
    return (
        "NOTE: no --region, --carbon-intensity, host region (impact-exporter --carbon.region) or "
        f"--carbon-intensity-query was given, so carbon is estimated with the world average grid intensity of "
        f"{world.g_per_kwh:g} gCO2eq/kWh ({world.year}, {world.name} row of the bundled table). Real grids range "
        "from under 30 to over 700 gCO2eq/kWh: pass --region or --carbon-intensity for a figure worth publishing."
    )


def _parse_flag(flag: float | str) -> float:
    try:
        value = float(flag)
    except (TypeError, ValueError):
        raise ValueError(f"--carbon-intensity must be a number of gCO2eq/kWh, not {flag!r}") from None
    if isinstance(flag, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"--carbon-intensity must be a finite number of gCO2eq/kWh >= 0, not {flag!r}")
    return value


def region_key(code: str) -> str:
    """``code`` as the table spells it: "fr" -> "FR", "us_ca" -> "US-CA", "GCP:Europe-West1" -> "gcp:europe-west1"."""
    code = code.strip()
    if ":" in code:
        provider, _, region = code.partition(":")
        return f"{provider.strip().lower()}:{region.strip().lower()}"
    return code.upper().replace("_", "-")


def lookup_region(code: str) -> RegionIntensity:
    """The table row for ``code`` (any case); a ValueError naming close matches otherwise."""
    table = region_table()
    key = region_key(code)
    if key in table:
        return table[key]
    raise ValueError(f"unknown region {code!r}: {_suggestions(key, table)}")


def _suggestions(key: str, table: dict[str, RegionIntensity]) -> str:
    """The close matches of ``key`` among the codes, the names and the cloud regions without their provider."""
    by_name = {row.name.upper(): row.region for row in table.values()}
    provider, colon, bare = key.rpartition(":")
    by_cloud_region: dict[str, list[str]] = {}
    for code in table:
        if ":" in code and code.startswith(f"{provider}{colon}"):
            by_cloud_region.setdefault(code.partition(":")[2], []).append(code)
    found = difflib.get_close_matches(bare.lower(), list(by_cloud_region), n=3, cutoff=0.8)
    cloud = [code for region in found for code in by_cloud_region[region]]
    by_code = _close_codes(key, list(table))
    named = [by_name[name] for name in difflib.get_close_matches(key.upper(), list(by_name), n=3, cutoff=0.7)]
    matches = list(dict.fromkeys(named + by_code + cloud))[:5]
    how = f"{CODES_HELP}; or pass --carbon-intensity G_PER_KWH with your grid's figure"
    if not matches:
        return f"no close match; {how}"
    close = ", ".join(f"{region} ({table[region].name})" for region in matches)
    return f"did you mean {close}? {how}"


def _close_codes(key: str, codes: list[str]) -> list[str]:
    """The five codes most like ``key``; among equally close ones, those with its first letter first (DX: DE, DK)."""
    cutoff = 0.5 if len(key) <= 5 else 0.8
    scored = [(difflib.SequenceMatcher(None, key, code).ratio(), code[:1] != key[:1], code) for code in codes]
    return [code for ratio, _, code in sorted((-r, other, c) for r, other, c in scored if r >= cutoff)][:5]


@functools.cache
def region_table() -> dict[str, RegionIntensity]:
    """The bundled table, keyed by region code; validated on first use."""
    text = resources.files("impact_reporter").joinpath(TABLE_RESOURCE).read_text(encoding="utf-8")
    return parse_region_table(text)


def parse_region_table(text: str) -> dict[str, RegionIntensity]:
    """Rows of a CSV with ``TABLE_COLUMNS``, checked: unique codes, sane numbers, a known gas, a basis, a year
    and a source on every row."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames != TABLE_COLUMNS:
        raise ValueError(f"carbon intensity table must have columns {TABLE_COLUMNS}, not {reader.fieldnames}")
    table: dict[str, RegionIntensity] = {}
    for line, row in enumerate(reader, start=2):
        region = row["region"].strip()
        if not _REGION_CODE.fullmatch(region):
            raise ValueError(f"line {line}: region {region!r} is not a code such as FR, US-CA or gcp:europe-west1")
        if region in table:
            raise ValueError(f"line {line}: region {region} appears twice")
        try:
            value = float(row["g_per_kwh"])
            year = int(row["year"])
        except ValueError:
            raise ValueError(f"line {line}: g_per_kwh and year must be numbers") from None
        if not (math.isfinite(value) and 0 <= value < 2000):
            raise ValueError(f"line {line}: implausible intensity {value} g/kWh")
        if not 1990 <= year <= 2100:
            raise ValueError(f"line {line}: implausible year {year}")
        if row["gas"] not in GASES:
            raise ValueError(f"line {line}: gas must be one of {', '.join(GASES)}, not {row['gas']!r}")
        if not all(row[column].strip() for column in ("name", "basis", "source")):
            raise ValueError(f"line {line}: every row needs a name, a basis and a source")
        table[region] = RegionIntensity(
            region, row["name"].strip(), value, row["gas"], row["basis"].strip(), year, row["source"].strip()
        )
    return table
