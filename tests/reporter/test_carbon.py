"""impact_reporter.carbon: the formulas, the bundled region table, the resolution order and time-varying intensity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from impact_reporter.carbon import (
    DEFAULT_PUE,
    WORLD_AVERAGE_G_PER_KWH,
    WORLD_AVERAGE_NOTE,
    CarbonIntensity,
    integrate_intensity,
    kg_co2eq,
    kg_co2eq_from_joules,
    kwh_from_joules,
    lookup_region,
    parse_region_table,
    region_table,
    resolve_intensity,
)
from impact_reporter.prometheus import Series

G20_COUNTRIES = "AR AU BR CA CN DE FR GB ID IN IT JP KR MX RU SA TR US ZA".split()
EU_MEMBERS = "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE".split()
US_STATES = (
    "AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND OH OK "
    "OR PA RI SC SD TN TX UT VT VA WA WV WI WY DC"
).split()


def series(timestamps: list[float], values: list[float]) -> Series:
    return Series({}, np.array(timestamps, dtype=np.float64), np.array(values, dtype=np.float64))


# -- formulas --------------------------------------------------------------------------------------------------


def test_one_kwh_at_pue_1_5_and_400_g_is_600_g() -> None:
    assert kwh_from_joules(3.6e6) == 1.0
    assert kwh_from_joules(900.0) == 0.00025
    assert kg_co2eq(1.0, 400.0, pue=1.5) == 0.6
    assert kg_co2eq_from_joules(3.6e6, 400.0, pue=1.5) == 0.6
    assert kg_co2eq_from_joules(7.2e6, 0.0, pue=1.5) == 0.0


def test_default_pue_is_henderson_et_al_1_58() -> None:
    assert DEFAULT_PUE == 1.58
    assert kg_co2eq(10.0, 475.0) == pytest.approx(10.0 * 1.58 * 475.0 / 1000.0, rel=1e-15)
    assert kg_co2eq(10.0, 475.0) == pytest.approx(7.505, rel=1e-12)


@pytest.mark.parametrize("pue", [0.99, 0.0, -1.0, math.nan, math.inf])
def test_pue_below_one_or_not_finite_is_refused(pue: float) -> None:
    with pytest.raises(ValueError, match="PUE must be a finite number >= 1.0"):
        kg_co2eq(1.0, 400.0, pue=pue)


@pytest.mark.parametrize("intensity", [-1.0, math.nan, math.inf])
def test_negative_or_non_finite_intensity_is_refused(intensity: float) -> None:
    with pytest.raises(ValueError, match="carbon intensity must be a finite number"):
        kg_co2eq(1.0, intensity)


# -- the bundled table -----------------------------------------------------------------------------------------


def test_table_covers_the_g20_the_eu_the_nordics_and_us_states() -> None:
    table = region_table()
    countries = [code for code in table if "-" not in code]
    states = [code for code in table if code.startswith("US-")]
    assert len(countries) >= 40
    assert set(G20_COUNTRIES) <= set(countries)
    assert set(EU_MEMBERS) <= set(countries)
    assert {"NO", "IS", "CH"} <= set(countries)
    assert sorted(states) == sorted(f"US-{state}" for state in US_STATES)
    assert len(table) == len(countries) + len(states)


def test_table_rows_are_whole_grams_with_a_dated_source() -> None:
    for row in region_table().values():
        assert row.g_co2eq_per_kwh == int(row.g_co2eq_per_kwh), row
        assert 0 < row.g_co2eq_per_kwh < 1200, row
        assert str(row.year) in row.source, row
        source = "Our World in Data" if "-" not in row.region else "eGRID2016"
        assert source in row.source, row
        assert row.year == (2021 if "-" not in row.region else 2016)


def test_table_values_match_their_sources() -> None:
    # Spot checks against the datasets: OWID 2021 (DE 365.477, FR 67.39, SE 45.817, PL 660.122, IN 637.182)
    # and eGRID2016 lb/MWh x 0.45359237 (CA 452.541, WA 186.844, WV 1975.757, VT 56.89).
    expected = {"DE": 365, "FR": 67, "SE": 46, "PL": 660, "IN": 637, "US": 379,
                "US-CA": 205, "US-WA": 85, "US-WV": 896, "US-VT": 26}  # fmt: skip
    assert {code: region_table()[code].g_co2eq_per_kwh for code in expected} == expected


@pytest.mark.parametrize("code", ["de", "DE", " De ", "dE"])
def test_country_lookup_is_case_insensitive(code: str) -> None:
    row = lookup_region(code)
    assert (row.region, row.name, row.g_co2eq_per_kwh, row.year) == ("DE", "Germany", 365.0, 2021)


@pytest.mark.parametrize("code", ["us-ca", "US-CA", "Us-Ca", "us_ca"])
def test_us_state_lookup_is_case_insensitive(code: str) -> None:
    row = lookup_region(code)
    assert (row.region, row.name, row.g_co2eq_per_kwh, row.year) == ("US-CA", "California", 205.0, 2016)


def test_unknown_region_suggests_close_matches_and_the_flag() -> None:
    with pytest.raises(ValueError) as caught:
        lookup_region("DX")
    message = str(caught.value)
    assert message.startswith("unknown region 'DX': did you mean ")
    assert "DE (Germany)" in message and "DK (Denmark)" in message
    assert "pass --carbon-intensity G_PER_KWH" in message

    with pytest.raises(ValueError, match=r"did you mean DE \(Germany\)"):
        lookup_region("germny")
    with pytest.raises(ValueError, match=r"did you mean US-CA \(California\)"):
        lookup_region("California")
    with pytest.raises(ValueError, match=r"US-TX \(Texas\)"):
        lookup_region("US-TZ")
    with pytest.raises(ValueError, match="no close match; codes are ISO 3166-1 alpha-2"):
        lookup_region("Atlantis-Under-The-Sea")


def test_table_parser_refuses_duplicates_bad_codes_and_missing_sources() -> None:
    header = "region,name,g_co2eq_per_kwh,year,source\n"
    good = parse_region_table(header + "DE,Germany,365,2021,OWID 2021\nUS-CA,California,205,2016,eGRID2016\n")
    assert list(good) == ["DE", "US-CA"] and good["US-CA"].g_co2eq_per_kwh == 205.0
    with pytest.raises(ValueError, match="line 3: region DE appears twice"):
        parse_region_table(header + "DE,Germany,365,2021,x\nDE,Germany,300,2021,x\n")
    with pytest.raises(ValueError, match="line 2: region 'de' is not an upper-case code"):
        parse_region_table(header + "de,Germany,365,2021,x\n")
    with pytest.raises(ValueError, match="needs a name and a source"):
        parse_region_table(header + "DE,Germany,365,2021,\n")
    with pytest.raises(ValueError, match="implausible intensity"):
        parse_region_table(header + "DE,Germany,-5,2021,x\n")
    with pytest.raises(ValueError, match="must have columns"):
        parse_region_table("code,g\nDE,365\n")


# -- resolution order ------------------------------------------------------------------------------------------


def test_the_flag_wins_over_everything() -> None:
    resolved = resolve_intensity(flag_g_per_kwh="250.5", region="FR", series_query="grid_intensity")
    assert resolved == CarbonIntensity(
        g_per_kwh=250.5,
        source="given with --carbon-intensity (250.5 gCO2eq/kWh)",
        region=None,
        year=None,
        is_default=False,
        method="flag",
    )
    assert resolve_intensity(flag_g_per_kwh=0).g_per_kwh == 0.0


@pytest.mark.parametrize("flag", [-1, "-0.5", math.nan, "inf", math.inf, "abc", True])
def test_the_flag_must_be_a_finite_non_negative_number(flag: object) -> None:
    with pytest.raises(ValueError, match="--carbon-intensity must be a"):
        resolve_intensity(flag_g_per_kwh=flag)  # type: ignore[arg-type]


def test_a_region_comes_from_the_table_and_wins_over_a_series() -> None:
    resolved = resolve_intensity(region="se", series_query="grid_intensity")
    assert (resolved.g_per_kwh, resolved.region, resolved.year, resolved.method) == (46.0, "SE", 2021, "region-table")
    assert not resolved.is_default
    assert resolved.source.startswith("Sweden (SE), 2021: Our World in Data")
    with pytest.raises(ValueError, match="unknown region 'XQ'"):
        resolve_intensity(region="XQ")


def test_a_series_query_is_time_varying() -> None:
    resolved = resolve_intensity(series_query=' carbon_intensity_g_per_kwh{zone="DE"} ')
    assert resolved.g_per_kwh is None
    assert resolved.method == "prometheus-series" and not resolved.is_default
    assert resolved.source.startswith('Prometheus series carbon_intensity_g_per_kwh{zone="DE"} (gCO2eq/kWh)')
    with pytest.raises(ValueError, match="empty"):
        resolve_intensity(series_query="  ")


def test_without_anything_the_world_average_is_flagged_as_the_default() -> None:
    resolved = resolve_intensity()
    assert resolved.g_per_kwh == WORLD_AVERAGE_G_PER_KWH == 475.0
    assert resolved.is_default and resolved.method == "world-average" and resolved.year == 2019
    assert "IEA" in resolved.source and "2019" in resolved.source
    assert WORLD_AVERAGE_NOTE.startswith("NOTE: ") and "475 gCO2eq/kWh (IEA 2019)" in WORLD_AVERAGE_NOTE
    assert "--region" in WORLD_AVERAGE_NOTE and "--carbon-intensity" in WORLD_AVERAGE_NOTE
    assert all(not resolve_intensity(**kwargs).is_default for kwargs in (
        {"flag_g_per_kwh": 475}, {"region": "DE"}, {"series_query": "x"}))  # fmt: skip


# -- time-varying intensity ------------------------------------------------------------------------------------


def test_integrate_intensity_by_hand() -> None:
    # Power 100 W on [0,10), 200 W on [10,20), 300 W on [20,30); the last sample (999 W) only closes the range.
    # Intensity 400 g/kWh from t=5 (and before: its first value), 100 g/kWh from t=25.
    # 100*5*400 + 100*5*400 + 200*10*400 + 300*5*400 + 300*5*100 = 1,950,000 W*s*g/kWh.
    grams = integrate_intensity([0, 10, 20, 30], [100, 200, 300, 999], series([5, 25], [400, 100]))
    assert grams == pytest.approx(1_950_000 / 3.6e6, rel=1e-12)
    # 6000 J = 1/600 kWh, so the energy-weighted intensity is 325 g/kWh (the time average would be 350).
    assert grams / (6000 / 3.6e6) == pytest.approx(325.0, rel=1e-12)

    # An intensity sample before the run holds into it; one exactly on a power timestamp splits nothing extra.
    grams = integrate_intensity([0, 10, 20, 30], [100, 200, 300, 0], series([-100, 15, 20], [50, 500, 500]))
    assert grams == pytest.approx((100 * 10 * 50 + 200 * 5 * 50 + 200 * 5 * 500 + 300 * 10 * 500) / 3.6e6, rel=1e-12)


def test_integrate_intensity_edge_cases_and_refusals() -> None:
    assert integrate_intensity([5.0], [100.0], series([0], [400])) == 0.0
    assert integrate_intensity([], [], series([0], [400])) == 0.0
    with pytest.raises(ValueError, match="equally long"):
        integrate_intensity([0, 1], [1.0], series([0], [400]))
    with pytest.raises(ValueError, match="strictly increasing"):
        integrate_intensity([0, 1, 1], [1, 1, 1], series([0], [400]))
    with pytest.raises(ValueError, match="at least one sample"):
        integrate_intensity([0, 1], [1, 1], series([], []))
    with pytest.raises(ValueError, match="finite and >= 0"):
        integrate_intensity([0, 1], [1, 1], series([0], [math.nan]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        integrate_intensity([0, 1], [1, math.inf], series([0], [400]))


@st.composite
def power_and_intensity(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    gaps = draw(st.lists(st.floats(0.001, 3600, allow_nan=False), min_size=1, max_size=40))
    start = draw(st.floats(1.6e9, 1.8e9))
    timestamps = start + np.cumsum([0.0, *gaps])
    watts = np.array(draw(st.lists(st.floats(0, 5000), min_size=len(timestamps), max_size=len(timestamps))))
    offsets = draw(st.lists(st.floats(-7200, 7200 * 40), min_size=1, max_size=30, unique=True))
    intensity_timestamps = np.sort(start + np.array(offsets))
    return timestamps, watts, intensity_timestamps, draw(st.floats(0, 1500))


@settings(max_examples=300, deadline=None)
@given(power_and_intensity())
def test_a_constant_intensity_reduces_to_the_simple_formula(
    case: tuple[np.ndarray, np.ndarray, np.ndarray, float],
) -> None:
    timestamps, watts, intensity_timestamps, grams_per_kwh = case
    if np.any(np.diff(intensity_timestamps) <= 0):
        return  # distinct offsets can still collide once added to a large start
    constant = series(intensity_timestamps.tolist(), [grams_per_kwh] * len(intensity_timestamps))
    joules = float(np.sum(watts[:-1] * np.diff(timestamps)))
    simple_grams = kg_co2eq_from_joules(joules, grams_per_kwh, pue=1.0) * 1000
    assert integrate_intensity(timestamps, watts, constant) == pytest.approx(simple_grams, rel=1e-9, abs=1e-9)
