"""The bundled carbon table is the rebuild script's output, and ``impact-report regions`` lists it."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest

from impact_reporter.carbon import TABLE_COLUMNS, region_table
from impact_reporter.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_table_is_the_build_scripts_output(tmp_path: Path) -> None:
    # The script reads the installed codecarbon's data files (a test dependency); updating the data is one
    # command and one diff, and a hand edit of the table fails here.
    built = tmp_path / "carbon_intensity.csv"
    subprocess.run([sys.executable, str(ROOT / "scripts/build-carbon-table"), "--out", str(built)], check=True)
    committed = (ROOT / "reporter/data/carbon_intensity.csv").read_text(encoding="utf-8")
    assert built.read_text(encoding="utf-8") == committed
    assert committed.count("\n") - 1 == len(region_table()) == 435


def test_regions_lists_every_row_with_its_year_gas_and_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["regions", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(rows[0]) == TABLE_COLUMNS
    assert [row["region"] for row in rows] == list(region_table())
    assert all(row["year"] and row["source"] and row["gas"] in ("CO2e", "CO2") for row in rows)

    assert main(["regions", "ghislain"]) == 0  # by name, in any case
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert lines[0].split()[:4] == ["gcp:europe-west1", "122", "gCO2e/kWh", "2023"]
    assert "Google Cloud region carbon data" in lines[0]

    assert main(["regions", "BEIJING"]) == 0
    assert capsys.readouterr().out.split()[:4] == ["CN-BJ", "555", "gCO2/kWh", "2023"]


def test_regions_with_no_match_is_a_usage_error_naming_close_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["regions", "azure:west-europe"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("impact-report: no region matches 'azure:west-europe'; ")
    assert "did you mean azure:westeurope (Azure Netherlands)?" in captured.err


@pytest.mark.parametrize(
    ("code", "suggested"),
    [("gcp:europe-west7", "gcp:europe-west1"), ("aws:us-east-3", "aws:us-east-1"), ("CA-QX", "CA-QC")],
)
def test_an_unknown_region_exits_2_with_close_matches_before_reading_anything(
    code: str, suggested: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs", f"--region={code}", "--prometheus=http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"impact-report: unknown region '{code}': did you mean ") and suggested in err
    assert err.count("\n") == 1 and "Traceback" not in err
