"""``impact-report runs`` output: the table a person reads, the CSV a script reads, and runs that were not measured.

Most tests format RunFigures computed from synthetic runs; the last runs the real command on archived runs.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest

from impact_reporter.appendix import FailedRun
from impact_reporter.carbon import resolve_intensity
from impact_reporter.energy import RunFigures, run_figures
from impact_reporter.runs import SAMPLE_COLUMNS, Run, RunDataError, write_archive
from impact_reporter.table import Listed, csv_frame, display_width, run_json, runs_table, table_columns
from tests.reporter.archives import HOST, synthetic_run
from tests.servers import REPO_ROOT

INTENSITY = resolve_intensity(flag_g_per_kwh=300.0)
PUE = 1.58


def with_gpu(run: Run, watts: float) -> Run:
    """``run`` with a GPU drawing ``watts`` throughout, measured by NVML's energy counter."""
    times = run.samples[run.samples["component"] == "cpu"]["timestamp"].to_numpy()
    gpu = pd.DataFrame(
        [("impact_run_energy_joules_total", HOST.instance, "gpu", t, watts * (t - run.start_time)) for t in times],
        columns=SAMPLE_COLUMNS,
    )
    return dataclasses.replace(
        run, samples=pd.concat([run.samples, gpu], ignore_index=True), methods={**run.methods, "gpu": "nvml-counter"}
    )


def without_samples(run: Run) -> Run:
    return dataclasses.replace(run, samples=run.samples.iloc[0:0])


def listed(runs: list[Run]) -> list[Listed]:
    """What ``impact-report runs`` lists for ``runs``: figures, or the reason a run has none."""
    items: list[Listed] = []
    for run in runs:
        try:
            items.append(run_figures(run, INTENSITY, PUE))
        except RunDataError as error:
            items.append(FailedRun(run, str(error)))
    return items


def six_runs() -> list[Run]:
    """Six runs with 32-character ids, long and CJK names and labels, one with a GPU and one not measured."""
    names = [
        ("mobilenet", "conv32", {"lr": "0.1", "seed": "0"}),
        ("mobilenet", "separable-depthwise-64", {"lr": "0.1", "seed": "1"}),
        ("画像分類の実験ベースライン", "畳み込み", {"データ": "猫と犬"}),
        ("a-very-long-experiment-name-for-transformers", "ablation", {"optimizer": "adamw-decoupled", "seed": "7"}),
        ("bert-finetune", "glue", {"task": "mnli"}),
        ("日本語", "セット", {}),
    ]
    runs = [
        synthetic_run(
            uuid.uuid4().hex,
            experiment,
            set_name,
            40.0 * (index + 1),
            seconds=60 * (index + 1) ** 3,
            start=1_700_000_000.0 + 3600 * index,
            labels=labels,
        )
        for index, (experiment, set_name, labels) in enumerate(names)
    ]
    runs[4] = with_gpu(runs[4], 300.0)
    runs[5] = without_samples(runs[5])
    return runs


def test_the_default_table_of_six_runs_fits_100_columns_and_lines_up() -> None:
    runs = six_runs()
    table = runs_table(listed(runs), INTENSITY, PUE)
    lines = table.splitlines()
    header, rows = lines[0], lines[1:7]

    assert max(display_width(line) for line in lines) <= 100, table
    for run, row in zip(runs, rows, strict=True):
        assert row.startswith(run.run_id[:8] + "  "), "a short run id, as git shortens hashes"
        assert run.run_id not in row
    start_column = display_width(header[: header.index("start (UTC)")])
    for row in rows:
        assert display_width(row[: row.index("2023-11-1")]) == start_column, row
    measured_rows = rows[:5]
    assert {display_width(row) for row in measured_rows} == {display_width(header)}, "numbers end under the header"
    assert "画像分類" in table and "…" in table
    assert "1.07828e-05" not in table and "nan" not in table.lower()


@pytest.mark.parametrize(
    "joules, shown",
    [(0.04, "40.0 mJ"), (2700.0, "2700 J"), (2.25e6, "625 Wh"), (6.6096e7, "18.4 kWh")],
)
def test_energy_reads_in_a_unit_chosen_per_value_to_three_figures(joules: float, shown: str) -> None:
    [figures] = listed([synthetic_run("r", "e", "s", joules / 60, dram_watts=0.0)])
    columns = {column.header: column.cells for column in table_columns([figures], wide=False)}
    assert columns["energy"] == (shown,)


def test_missing_gpu_energy_is_blank_in_the_table_and_empty_in_the_csv() -> None:
    cpu_only = synthetic_run("cpu-only", "e", "s", 40.0)
    on_gpu = with_gpu(synthetic_run("on-gpu", "e", "s", 40.0), 300.0)
    items = listed([cpu_only, on_gpu])

    wide = {column.header: column.cells for column in table_columns(items, wide=True)}
    assert wide["gpu"] == ("", "5.00 Wh")
    assert wide["gpu method"] == ("", "nvml-counter")
    assert "nan" not in runs_table(items, INTENSITY, PUE, wide=True).lower()
    rows = list(csv.DictReader(io.StringIO(csv_frame(items).to_csv(index=False))))
    assert [row["gpu_J"] for row in rows] == ["", "18000.0"]


def test_the_csv_keeps_a_0_04_joule_run_exact() -> None:
    [figures] = listed([synthetic_run("tiny", "e", "s", 0.03 / 60, dram_watts=0.01 / 60)])
    [row] = csv.DictReader(io.StringIO(csv_frame([figures]).to_csv(index=False)))
    document = json.loads(json.dumps(run_json(figures)))

    assert float(row["total_J"]) == document["total_joules"] == pytest.approx(0.04)
    assert float(row["cpu_J"]) == document["energy_joules"]["cpu"]
    assert float(row["kWh"]) == document["total_kwh"]
    assert float(row["kgCO2eq"]) == document["kg_co2eq"]


def test_json_writes_null_where_a_figure_is_not_a_number() -> None:
    [figures] = listed([synthetic_run("r", "e", "s", 40.0)])
    broken = dataclasses.replace(figures, peak_power_watts=float("nan"), energy_joules={"cpu": float("inf")})
    document = json.loads(json.dumps(run_json(broken), allow_nan=False))
    assert document["peak_power_watts"] is None and document["energy_joules"] == {"cpu": None}


def test_the_csv_has_one_column_per_label() -> None:
    items = listed(
        [
            synthetic_run("a", "e", "s", 40.0, labels={"lr": "0.1,0.2", "seed": "1"}),
            synthetic_run("b", "e", "s", 40.0, labels={"seed": "2", "optimizer": "adam"}),
        ]
    )
    rows = list(csv.DictReader(io.StringIO(csv_frame(items).to_csv(index=False))))
    assert [{k: v for k, v in row.items() if k.startswith("label.")} for row in rows] == [
        {"label.lr": "0.1,0.2", "label.optimizer": "", "label.seed": "1"},
        {"label.lr": "", "label.optimizer": "adam", "label.seed": "2"},
    ]


def test_a_cpu_only_and_a_gpu_run_set_give_the_same_csv_header() -> None:
    cpu_box = csv_frame(listed([synthetic_run("a", "e", "s", 40.0, methods={"cpu": "estimate"})]))
    gpu_box = csv_frame(listed([with_gpu(synthetic_run("b", "e", "s", 40.0), 300.0)]))
    assert list(cpu_box.columns) == list(gpu_box.columns)
    assert {"cpu_J", "dram_J", "gpu_J", "cpu_method", "dram_method", "gpu_method"} <= set(cpu_box.columns)


def test_a_run_without_samples_is_listed_as_not_measured_with_the_reason() -> None:
    measured, broken = synthetic_run("fine", "e", "s", 40.0), without_samples(synthetic_run("broken", "e", "s", 40.0))
    items = listed([measured, broken])
    assert isinstance(items[0], RunFigures) and isinstance(items[1], FailedRun)

    table = runs_table(items, INTENSITY, PUE)
    [row] = [line for line in table.splitlines() if line.startswith("broken ")]
    assert "not measured" in row
    assert "broken: not measured: run broken (e s) has no energy samples" in table
    [_, csv_row] = csv.DictReader(io.StringIO(csv_frame(items).to_csv(index=False)))
    assert csv_row["total_J"] == "" and "has no energy samples" in csv_row["not_measured"]
    assert "has no energy samples" in run_json(items[1])["not_measured"]


def report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "impact_reporter", "runs", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )


def test_the_command_lists_archived_runs_in_every_format(tmp_path: Path) -> None:
    runs = six_runs()
    directories = [f"--run-dir={write_archive(run, tmp_path / run.run_id).parent}" for run in runs]
    flags = [*directories, "--carbon-intensity=300", "--prometheus=http://127.0.0.1:9"]

    table = report(*flags)
    assert max(display_width(line) for line in table.stdout.splitlines()) <= 100, table.stdout
    assert all(run.run_id[:8] in table.stdout for run in runs)
    assert table.returncode == 1, "a run was not measured"
    assert table.stderr.strip() == (
        f"impact-report: 1 of 6 runs not measured ({runs[5].run_id}): they are listed with the reason"
    )
    wide = report(*flags, "--wide")
    assert all(run.run_id in wide.stdout for run in runs)

    document = json.loads(report(*flags, "--format=json").stdout)
    rows = list(csv.DictReader(io.StringIO(report(*flags, "--format=csv").stdout)))
    assert [row["run_id"] for row in rows] == [run["run_id"] for run in document["runs"]]
    for row, run in zip(rows[:5], document["runs"], strict=False):
        assert float(row["total_J"]) == run["total_joules"]
        assert float(row["kgCO2eq"]) == run["kg_co2eq"]
    assert "has no energy samples" in rows[5]["not_measured"]
    assert rows[5]["not_measured"] == document["runs"][5]["not_measured"]


def fine_and_federated() -> list[Run]:
    """Two 60 s runs at 40 W: one scraped every second, one as a 15 s federation of it keeps it (0, 15 ... 60 s)."""
    return [synthetic_run("fine", "e", "s", 40.0), synthetic_run("federated", "e", "s", 40.0, spacing=15.0)]


def test_the_table_shows_each_runs_spacing_and_what_coverage_is_judged_against() -> None:
    own = [run_figures(run, INTENSITY, PUE) for run in fine_and_federated()]
    expected = [run_figures(run, INTENSITY, PUE, expected_interval=1.0) for run in fine_and_federated()]

    columns = {column.header: column.cells for column in table_columns(own, wide=True)}
    assert (columns["coverage"], columns["spacing"]) == (("100%", "100%"), ("1.00 s", "15.0 s"))
    table = " ".join(runs_table(own, INTENSITY, PUE).split())
    assert "samples every 1.00 s to 15.0 s (median spacing; peak power is over intervals of it); " in table
    assert "coverage against each node's own spacing" in table
    assert "samples every 15.0 s (" in runs_table(own[1:], INTENSITY, PUE)
    unmeasured = listed([without_samples(fine_and_federated()[0])])
    assert "samples every" not in runs_table(unmeasured, INTENSITY, PUE) and "coverage against" not in runs_table(
        unmeasured, INTENSITY, PUE
    )
    # against 1 s, each of the federated run's four 15 s stretches counts 1 s: 4 of 60 s
    columns = {column.header: column.cells for column in table_columns(expected, wide=False)}
    assert columns["coverage"] == ("100%", "6.67%") and "spacing" not in columns
    table = " ".join(runs_table(expected, INTENSITY, PUE, wide=True).split())
    assert "spacing: the median spacing of a run's samples (peak power is over intervals of it); " in table
    assert "coverage against the expected scrape interval of 1.00 s (--expected-interval)" in table
    rows = list(csv.DictReader(io.StringIO(csv_frame(expected).to_csv(index=False))))
    assert [(row["sample_interval_s"], row["expected_interval_s"]) for row in rows] == [("1.0", "1.0"), ("15.0", "1.0")]
    assert float(rows[1]["coverage"]) == pytest.approx(4 / 60)


def test_the_command_judges_coverage_against_expected_interval(tmp_path: Path) -> None:
    directories = [f"--run-dir={write_archive(run, tmp_path / run.run_id).parent}" for run in fine_and_federated()]
    flags = [*directories, "--carbon-intensity=300", "--prometheus=http://127.0.0.1:9", "--format=json"]
    result = report(*flags, "--expected-interval=1s")
    assert result.returncode == 0, result.stderr
    fine, federated = json.loads(result.stdout)["runs"]
    assert (fine["coverage"], fine["sample_interval_seconds"], fine["expected_interval_seconds"]) == (1.0, 1.0, 1.0)
    assert federated["coverage"] == pytest.approx(4 / 60)
    assert (federated["largest_gap_seconds"], federated["sample_interval_seconds"]) == (15.0, 15.0)
    assert federated["total_joules"] == pytest.approx(fine["total_joules"]) == 60 * 45.0


@pytest.mark.parametrize(
    "value, message",
    [("0", "an interval must be longer than 0"), ("-1s", "invalid duration '-1s'"), ("fast", "invalid duration")],
)
def test_an_expected_interval_that_is_no_duration_is_a_usage_error(value: str, message: str) -> None:
    result = report("--run-dir=/nonexistent", f"--expected-interval={value}")
    assert result.returncode == 2
    assert message in result.stderr and "--expected-interval" in result.stderr
    assert "Traceback" not in result.stderr
