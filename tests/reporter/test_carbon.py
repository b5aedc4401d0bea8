"""impact_reporter.carbon: the formulas, the bundled region table, the resolution order and time-varying intensity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from impact_reporter.carbon import (
    DEFAULT_PUE,
    TABLE_COLUMNS,
    CarbonIntensity,
    integrate_intensity,
    kg_co2eq,
    kg_co2eq_from_joules,
    kwh_from_joules,
    lookup_region,
    parse_region_table,
    region_table,
    resolve_intensity,
    world_average_note,
)
from impact_reporter.prometheus import Series

G20_COUNTRIES = "AR AU BR CA CN DE FR GB ID IN IT JP KR MX RU SA TR US ZA".split()
EU_MEMBERS = "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE".split()
US_STATES = (
    "AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND OH OK "
    "OR PA RI SC SD TN TX UT VT VA WA WV WI WY DC"
).split()
CANADA = "AB BC MB NB NL NS NT NU ON PE QC SK YT".split()


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


def test_table_covers_every_country_us_state_canadian_and_chinese_province_and_cloud_region() -> None:
    table = region_table()
    countries = [code for code in table if len(code) == 2]
    assert len(countries) == 213
    assert set(G20_COUNTRIES) <= set(countries) and set(EU_MEMBERS) <= set(countries)
    assert sorted(c for c in table if c.startswith("US-")) == sorted(f"US-{state}" for state in US_STATES)
    assert sorted(c for c in table if c.startswith("CA-")) == sorted(f"CA-{p}" for p in CANADA)
    assert len([c for c in table if c.startswith("CN-")]) == 30
    providers = {
        provider: len([c for c in table if c.startswith(f"{provider}:")]) for provider in ("gcp", "aws", "azure")
    }
    assert providers == {"gcp": 40, "aws": 35, "azure": 52}


def test_every_row_has_a_year_a_source_a_gas_and_a_basis() -> None:
    for row in region_table().values():
        assert 2009 <= row.year <= 2023, row
        assert row.gas in ("CO2e", "CO2"), row
        assert row.source and row.basis and row.name, row
        assert "location-based annual average" in row.basis, row
        assert row.g_per_kwh == int(row.g_per_kwh) and 0 <= row.g_per_kwh < 2000, row


def test_rows_say_their_gas_and_basis_as_their_sources_do() -> None:
    table = region_table()
    # Ember/OWID: life-cycle CO2e; eGRID2023 STC2ERTA: combustion CO2e; China MEE: CO2 only; Google: its own figure.
    assert (table["FR"].gas, table["FR"].year) == ("CO2e", 2023) and "life-cycle" in table["FR"].basis
    assert "Our World in Data" in table["FR"].source
    assert (table["US-CA"].gas, table["US-CA"].year) == ("CO2e", 2023) and "combustion" in table["US-CA"].basis
    assert "eGRID2023" in table["US-CA"].source and "STC2ERTA" in table["US-CA"].source
    assert (table["CN-BJ"].gas, table["CN-BJ"].year) == ("CO2", 2023) and "MEE" in table["CN-BJ"].source
    assert (table["CA-QC"].gas, table["CA-QC"].year) == ("CO2e", 2023) and "Canada Energy Regulator" in table[
        "CA-QC"
    ].source
    assert "Google's figure" in table["gcp:europe-west1"].basis and table["gcp:europe-west1"].year == 2023
    assert table["aws:us-east-1"].basis == "grid of its location, US-VA: " + table["US-VA"].basis
    located = [row for code, row in table.items() if code.startswith(("aws:", "azure:"))]
    assert all(row.basis.startswith("grid of its location, ") for row in located)


def test_table_values_match_their_sources() -> None:
    # Spot checks against codecarbon 3.3.2's data: OWID (FR 56.039, PL 661.926, DE 380.95, 2023), eGRID2023 lb/MWh
    # x 0.45359237 (CA 394.769 -> 179.06, VA 540.? -> 245), China MEE 2023 (Beijing 555.4), Google 2023
    # (europe-west1 122, europe-west9 34), and Quebec's mix x per-source factors by hand: hydro 94.7% and the rest.
    expected = {"FR": 56, "PL": 662, "DE": 381, "US-CA": 179, "CN-BJ": 555, "gcp:europe-west1": 122,
                "gcp:europe-west9": 34, "aws:eu-west-3": 56, "aws:us-east-1": 245, "azure:westeurope": 268,
                "azure:polandcentral": 662, "aws:ca-central-1": 31, "CA-QC": 31}  # fmt: skip
    assert {code: region_table()[code].g_per_kwh for code in expected} == expected
    assert region_table()["US-CA"].g_per_kwh == round(394.769 * 0.45359237)
    # The world row: the countries' mean weighted by their generation (Ember's own world figure for 2023 is 480).
    assert (
        region_table()["WORLD"].g_per_kwh == 481
        and "213 countries' rows weighted by their generation" in region_table()["WORLD"].basis
    )


@pytest.mark.parametrize("code", ["de", "DE", " De ", "dE"])
def test_country_lookup_is_case_insensitive(code: str) -> None:
    row = lookup_region(code)
    assert (row.region, row.name, row.g_per_kwh, row.year) == ("DE", "Germany", 381.0, 2023)


@pytest.mark.parametrize("code", ["us-ca", "US-CA", "Us-Ca", "us_ca"])
def test_us_state_lookup_is_case_insensitive(code: str) -> None:
    row = lookup_region(code)
    assert (row.region, row.name, row.g_per_kwh, row.year) == ("US-CA", "California", 179.0, 2023)


@pytest.mark.parametrize(
    ("code", "region", "g_per_kwh"),
    [
        ("FR", "FR", 56.0),
        ("US-CA", "US-CA", 179.0),
        ("CA-QC", "CA-QC", 31.0),
        ("cn-bj", "CN-BJ", 555.0),
        ("gcp:europe-west1", "gcp:europe-west1", 122.0),
        ("GCP:Europe-West1", "gcp:europe-west1", 122.0),
        ("aws:us-east-1", "aws:us-east-1", 245.0),
        ("azure:westeurope", "azure:westeurope", 268.0),
        ("gcp:me-central1", "gcp:me-central1", 575.0),  # misspelt me-cenrtal1 in codecarbon's file
    ],
)
def test_countries_subdivisions_and_every_providers_codes_resolve(code: str, region: str, g_per_kwh: float) -> None:
    resolved = resolve_intensity(region=code)
    assert (resolved.region, resolved.g_per_kwh, resolved.method) == (region, g_per_kwh, "region-table")


def test_unknown_region_suggests_close_matches_and_the_flag() -> None:
    with pytest.raises(ValueError) as caught:
        lookup_region("DX")
    message = str(caught.value)
    assert message.startswith("unknown region 'DX': did you mean ")
    assert "DE (Germany)" in message and "DK (Denmark)" in message
    assert "pass --carbon-intensity G_PER_KWH" in message and "impact-report regions" in message

    with pytest.raises(ValueError, match=r"did you mean DE \(Germany\)"):
        lookup_region("germny")
    with pytest.raises(ValueError, match=r"did you mean US-CA \(California\)"):
        lookup_region("California")
    with pytest.raises(ValueError, match=r"US-TX \(Texas\)"):
        lookup_region("US-TZ")
    with pytest.raises(
        ValueError, match=r"did you mean aws:us-east-1 \(AWS Northern Virginia\), aws:us-east-2 \(AWS Ohio\)"
    ):
        lookup_region("aws:us-east-3")
    with pytest.raises(ValueError, match=r"did you mean gcp:europe-west1 "):
        lookup_region("europe-west1")  # a cloud region without its provider
    with pytest.raises(ValueError, match=r"did you mean azure:westeurope "):
        lookup_region("azure:west-europe")
    with pytest.raises(ValueError, match="no close match; codes are ISO 3166-1 alpha-2"):
        lookup_region("Atlantis-Under-The-Sea")


def test_table_parser_refuses_duplicates_bad_codes_and_rows_without_gas_basis_or_source() -> None:
    header = ",".join(TABLE_COLUMNS) + "\n"
    fr = "FR,France,56,CO2e,location-based annual average,2023,OWID\n"
    good = parse_region_table(header + fr + "gcp:europe-west1,GCP Belgium,122,CO2e,Google's,2023,Google\n")
    assert list(good) == ["FR", "gcp:europe-west1"] and good["gcp:europe-west1"].g_per_kwh == 122.0
    with pytest.raises(ValueError, match="line 3: region FR appears twice"):
        parse_region_table(header + fr + fr)
    with pytest.raises(ValueError, match="line 2: region 'fr' is not a code"):
        parse_region_table(header + fr.lower())
    with pytest.raises(ValueError, match="needs a name, a basis and a source"):
        parse_region_table(header + "FR,France,56,CO2e,,2023,OWID\n")
    with pytest.raises(ValueError, match="gas must be one of CO2e, CO2"):
        parse_region_table(header + "FR,France,56,GHG,basis,2023,OWID\n")
    with pytest.raises(ValueError, match="implausible intensity"):
        parse_region_table(header + "FR,France,-5,CO2e,basis,2023,OWID\n")
    with pytest.raises(ValueError, match="implausible year"):
        parse_region_table(header + "FR,France,56,CO2e,basis,23,OWID\n")
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
    assert (resolved.g_per_kwh, resolved.region, resolved.year, resolved.method) == (41.0, "SE", 2023, "region-table")
    assert not resolved.is_default and resolved.gas == "CO2e"
    assert resolved.source.startswith("Sweden (SE), 2023: Our World in Data")
    assert resolved.describe().startswith(
        "41 gCO2eq/kWh (CO2e; location-based annual average of national generation, life-cycle): Sweden (SE), 2023: "
        "Our World in Data"
    )
    assert resolved.chosen_by == "from --region"
    china = resolve_intensity(region="CN-SH")
    assert china.unit == "gCO2/kWh" and "(CO2 only, not CO2e; " in china.describe()
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
    # The latest world figure of the countries' own dataset: their generation-weighted mean.
    assert resolved.g_per_kwh == region_table()["WORLD"].g_per_kwh == 481.0
    assert resolved.is_default and resolved.method == "world-average" and resolved.year == 2023
    assert "Our World in Data" in resolved.source and resolved.gas == "CO2e"
    note = world_average_note()
    assert note.startswith("NOTE: ") and "481 gCO2eq/kWh (2023, World row of the bundled table)" in note
    assert "--region" in note and "--carbon-intensity" in note and "--carbon.region" in note
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
