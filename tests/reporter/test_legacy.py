"""experiment-impact-tracker 0.1's log directories read by the reporter, and the 0.1.x entry points built on them.

The logs are written as 0.1.9 wrote them (tests/reporter/legacy_logs.py). Expected figures are computed here from
what the test wrote: energies by integrating the written power as 0.1.x did, and DataInterface's figures by 0.1.9's
own formulas (``utils.gather_additional_info``), restated below with pandas over the files, info.pkl read by plain
pickle with the stand-in classes in place (as 0.1.x read it with shapely installed).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from experiment_impact_tracker.data_interface import DataInterface
from impact_reporter import legacy
from impact_reporter.carbon import world_average
from impact_reporter.cli import main, seed_main, statement_main
from impact_reporter.latex import build_pdf
from impact_reporter.runs import RunDataError, write_archive
from tests.reporter.archives import synthetic_run
from tests.reporter.legacy_logs import OldRun, stand_in_modules, write_old_log
from tests.servers import require_binary

HOUR = 3600.0
START = 1_700_000_000.0
GPU_RUN = OldRun(
    offsets=[3.0, 7.5, 11.0, 15.2, 19.0, 23.1, 27.0],
    rapl_watts=[20.0, 22.0, 21.0, None, 25.0, 24.0, 23.0],  # one sample lacks the field: it counts 0
    gpu_watts=[100.0, 120.0, 110.0, 130.0, 90.0, 95.0, 100.0],
    gpu_utilisation=[0.5, 0.6, 0.4, 0.7, 0.5, 0.5, 0.5],
    cpu_seconds=[{"4242": 1.0 + i, "4243": 0.5 * i} for i in range(7)],
    gpus=2,
)
CPU_RUN = OldRun(offsets=[2.0, 6.0, 10.0, 14.0], rapl_watts=[30.0, 31.0, 32.0, 29.0], geometry=False, duration=17.0)
KILLED_RUN = OldRun(offsets=[1.0, 5.0, 9.0], rapl_watts=[40.0, 41.0, 42.0], duration=None)  # no experiment_end
NO_INFO_RUN = OldRun(offsets=[2.0, 6.0, 10.0], rapl_watts=[35.0, 36.0, 37.0], info=False)


def integrated_joules(run: OldRun, watts: Sequence[float | None]) -> float:
    """0.1.x's integral of the written power: each sample's power from the previous sample (or the start) until
    it, the last one's until the end; a missing value counts 0. Without info.pkl the run spans its samples, and
    without an end it ends at its last sample."""
    times = [run.start + offset for offset in run.offsets]
    start = run.start if run.info else times[0]
    end = run.start + run.duration if run.info and run.duration is not None else times[-1]
    edges = [start, *times, end]
    values = [w or 0.0 for w in watts]
    return sum(p * (edges[i + 1] - edges[i]) for i, p in enumerate([*values, values[-1]]))


def original_additional_info(logdir: Path, pue: float) -> dict[str, float]:
    """0.1.9's ``gather_additional_info`` (its total_power, estimated_carbon_impact_kg and exp_len_hours) on this
    directory, restated: pandas over data.json, info.pkl through plain pickle."""
    with stand_in_modules():
        info = pickle.loads((logdir / "impacttracker" / "info.pkl").read_bytes())
    lines = [json.loads(line) for line in (logdir / "impacttracker" / "data.json").read_text().splitlines()]
    df = pd.json_normalize(lines)
    start, end = info["experiment_start"].timestamp(), info["experiment_end"].timestamp()
    differences = df["timestamp"].diff()
    differences[0] = df["timestamp"][0] - start
    differences.loc[len(differences)] = end - df["timestamp"][len(df["timestamp"]) - 1]
    hours = differences / 3600.0

    def kw(field: str) -> pd.Series:
        series = df[field] / 1000.0
        series.loc[len(series)] = series.loc[len(series) - 1]
        return series

    kwh_per_step = hours * kw("rapl_estimated_attributable_power_draw")
    if "gpu_info" in info:
        kwh_per_step = hours * kw("nvidia_estimated_attributable_power_draw") + kwh_per_step
    total_power_per_step = pue * kwh_per_step
    total_power = total_power_per_step.sum()
    average = info["region_carbon_intensity_estimate"]["carbonIntensity"]
    if "realtime_carbon_intensity" in df:
        realtime = df["realtime_carbon_intensity"]
        realtime.loc[len(realtime)] = realtime.loc[len(realtime) - 1]
        realtime = pd.to_numeric(realtime, errors="coerce").ffill().bfill().fillna(value=average)
        grams = np.multiply(total_power_per_step, realtime).sum()
    else:
        grams = total_power * average
    return {"total_power": total_power, "kg": grams / 1000.0, "exp_len_hours": (end - start) / 3600.0}


def appendix(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """create-compute-appendix run in this process: its exit status and its stderr (give --output_dir a temporary
    directory: its default is the current one)."""
    status = seed_main([*args, "--carbon-intensity=300"])
    return status, capsys.readouterr().err


def test_create_compute_appendix_reports_old_logs_beside_new_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old"
    write_old_log(old / "gpu", GPU_RUN)
    write_old_log(old / "cpu", CPU_RUN)
    write_old_log(old / "nested" / "killed", KILLED_RUN)
    with open(old / "nested" / "killed" / "impacttracker" / "data.json", "a") as data:
        data.write('{"timestamp":1700000013.0,"rapl_pow')  # killed while writing its last line
    write_old_log(old / "no-info", NO_INFO_RUN)
    new = [
        write_archive(synthetic_run(f"new{i}", "mobilenet", "conv", 40.0 + i, seconds=30), tmp_path / f"n{i}").parent
        for i in range(3)
    ]
    out = tmp_path / "out"
    status, stderr = appendix(
        str(old),
        "--experiment_set_names",
        "Old",
        "New",
        "--compare_dirs",
        *map(str, new),
        "--output_dir",
        str(out),
        "--no-pdf",
        capsys=capsys,
    )
    assert status == 0, stderr

    document = json.loads((out / "appendix.json").read_text())
    runs = {run["run_id"]: run for run in document["sets"][0]["runs"]}
    assert list(runs) == [str(old / name) for name in ("cpu", "gpu", "nested/killed", "no-info")]
    for name, run in [("gpu", GPU_RUN), ("cpu", CPU_RUN), ("nested/killed", KILLED_RUN), ("no-info", NO_INFO_RUN)]:
        figures = runs[str(old / name)]
        assert figures["energy_joules"]["cpu+dram"] == pytest.approx(integrated_joules(run, run.rapl_watts), rel=1e-3)
        assert set(figures["methods"].values()) == {legacy.POWER_SAMPLES_METHOD}
        assert figures["measured_by"] == legacy.MEASURED_BY_LEGACY
        assert not any(figures["measured"].values()), "sampled power readings are not energy counters"
    gpu = runs[str(old / "gpu")]
    assert gpu["energy_joules"]["gpu"] == pytest.approx(integrated_joules(GPU_RUN, GPU_RUN.gpu_watts), rel=1e-3)
    assert gpu["cpu_hours"] * HOUR == pytest.approx(sum(GPU_RUN.cpu_seconds[-1].values()), rel=1e-9)
    gpu_seconds = integrated_joules(GPU_RUN, GPU_RUN.gpu_utilisation) * GPU_RUN.gpus
    assert gpu["gpu_hours"] * HOUR == pytest.approx(gpu_seconds, rel=1e-9)
    assert gpu["duration_seconds"] == pytest.approx(GPU_RUN.duration)
    assert gpu["hosts"][0]["cpu_model"] == "Intel(R) Xeon(R) CPU E5-2640 v3 @ 2.60GHz"
    assert runs[str(old / "nested/killed")]["duration_seconds"] == pytest.approx(KILLED_RUN.offsets[-1])
    assert runs[str(old / "no-info")]["hosts"] == []

    [compared] = document["comparisons"]
    assert "Total energy includes CPU package and DRAM energy and GPU energy in A only" in compared["warnings"][-1]
    summary = (out / "Old" / "summary.tex").read_text()
    assert (
        "CPU package and DRAM energy (J), sampled power &" in summary and "Total energy (Wh), sampled power" in summary
    )
    assert "Total energy (" in (out / "Old_v_New.tex").read_text()
    require_binary("lualatex", "apt-get install texlive-luatex texlive-latex-recommended texlive-science latexmk")
    build_pdf(out / "Old" / "1.tex")  # the old GPU run's page: the one PDF built here, to read it as a reader would
    text = pdf_text(out / "Old" / "1.pdf")
    assert text.count("integrated from sampled power (experiment-impact-tracker 0.1 power samples)") == 2
    assert "Energy of CPU package and DRAM; GPU: integrated from power readings" in text
    assert "not read from energy counters" in text and "Host (not recorded)" in text
    assert "Tesla V100-SXM2-16GB (driver 440.33.01)" in text and "kernel" not in text


def pdf_text(path: Path) -> str:
    pdftotext = require_binary("pdftotext", "apt-get install poppler-utils")
    return " ".join(
        subprocess.run([pdftotext, str(path), "-"], capture_output=True, text=True, check=True).stdout.split()
    )


def test_data_interface_gives_the_original_s_figures_over_old_and_new_directories(tmp_path: Path) -> None:
    realtime = OldRun(
        offsets=[600.0, 1800.0, 3000.0],
        rapl_watts=[80.0, 90.0, 85.0],
        gpu_watts=[250.0, 240.0, 260.0],
        gpu_utilisation=[0.9, 0.9, 0.9],
        realtime_intensity=[None, 120.0, "n/a"],  # lost to network errors: filled as 0.1.x filled them
        duration=3300.0,
        g_per_kwh=250.0,
    )
    steady = OldRun(offsets=[900.0, 2700.0], rapl_watts=[60.0, 70.0], duration=3600.0, g_per_kwh=30.0)
    old = [write_old_log(tmp_path / "logs" / "a", realtime), write_old_log(tmp_path / "logs" / "b", steady)]
    new_run = synthetic_run("new", "mobilenet", "conv", 40.0, seconds=600)  # 40 W CPU + 5 W DRAM
    new = write_archive(new_run, tmp_path / "archive" / "new").parent

    for kwargs, environ, pue in [({}, {"OVERRIDE_PUE": "1.2"}, 1.2), ({"pue": 1.1}, {"OVERRIDE_PUE": "1.2"}, 1.1)]:
        data = DataInterface([tmp_path / "logs", new], environ=environ, **kwargs)
        originals = [original_additional_info(logdir, pue) for logdir in old]
        new_kwh = 45.0 * 600 / 3.6e6
        assert data.PUE == pue
        assert data.total_power == pytest.approx(sum(o["total_power"] for o in originals) + new_kwh * pue, rel=1e-9)
        world = world_average().g_per_kwh / 1000.0  # a new run without a region: the table's world average, kg/kWh
        assert data.kg_carbon == pytest.approx(sum(o["kg"] for o in originals) + new_kwh * pue * world, rel=1e-9)
        assert data.exp_len_hours == pytest.approx(sum(o["exp_len_hours"] for o in originals) + 600 / HOUR, rel=1e-9)
        assert data.runs == 3
    given = DataInterface([tmp_path / "logs"], carbon_intensity=100.0, environ={})
    assert given.kg_carbon == pytest.approx(given.total_power * 100.0 / 1000.0, rel=1e-9)
    assert given.PUE == 1.58


def test_generate_carbon_impact_statement_prints_the_data_interface_s_totals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OVERRIDE_PUE", raising=False)
    run = OldRun(offsets=[600.0, 1800.0, 3000.0], rapl_watts=[180.0, 190.0, 185.0], duration=3600.0, g_per_kwh=250.0)
    write_old_log(tmp_path / "logs" / "seed0", run)
    write_old_log(tmp_path / "logs" / "seed1", run)
    data = DataInterface([tmp_path / "logs"])
    assert statement_main([str(tmp_path / "logs"), "USA"]) == 0
    output = capsys.readouterr()
    assert output.out.startswith(
        f"This work contributed {data.kg_carbon:.3f} kg of $\\text{{CO}}_{{2eq}}$ to the atmosphere and used "
        f"{data.total_power:.3f} kWh of electricity (2 runs, 2.000 hours in all; "
    )
    assert "the region average each recorded" in output.out and "@misc{henderson2020systematic," in output.out
    assert "USA: the social cost of carbon per country is not computed" in output.err
    assert "world average" not in output.err, "every run recorded its region's intensity"


def test_parent_directories_are_walked_and_an_impacttracker_folder_names_its_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("b/run1", "a/deep/run0", "c"):
        write_old_log(tmp_path / "old" / name, CPU_RUN)
    write_archive(synthetic_run("archived", "m", "s", 40.0), tmp_path / "old" / "d")
    assert [path.relative_to(tmp_path / "old") for path in legacy.expand([tmp_path / "old"])] == [
        Path("a/deep/run0"),
        Path("b/run1"),
        Path("c"),
        Path("d"),
    ]
    folder = tmp_path / "old" / "c" / "impacttracker"
    assert main(["runs", "--run-dir", str(folder), "--format=json", "--carbon-intensity=300"]) == 0
    [run] = json.loads(capsys.readouterr().out)["runs"]
    assert run["run_id"] == str(tmp_path / "old" / "c") and run["experiment"] == "c"
    assert run["total_joules"] == pytest.approx(integrated_joules(CPU_RUN, CPU_RUN.rapl_watts), rel=1e-9)


def damaged(tmp_path: Path, damage: str) -> Path:
    """An old log broken in one way."""
    logdir = write_old_log(tmp_path / "run0", CPU_RUN)
    folder = logdir / "impacttracker"
    if damage == "no data.json":
        (folder / "data.json").unlink()
    elif damage == "a bad line":
        lines = (folder / "data.json").read_text().splitlines()
        (folder / "data.json").write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    elif damage == "no power":
        (folder / "data.json").write_text('{"timestamp":1700000002.0,"cpu_freq":[]}\n')
    elif damage == "not a pickle":
        (folder / "info.pkl").write_bytes(b"this is not a pickle")
    elif damage == "another time zone":
        with stand_in_modules():
            info = pickle.loads((folder / "info.pkl").read_bytes())
            for key in ("experiment_start", "experiment_end"):  # as read 7 hours east of where they were written
                info[key] += timedelta(hours=7)
            (folder / "info.pkl").write_bytes(pickle.dumps(info))
    return logdir


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no data.json", "this experiment-impact-tracker 0.1 log directory has no data.json (its power samples)"),
        ("a bad line", "data.json:2: not a JSON object, as every line of data.json must be"),
        ("no power", "no sample of this experiment-impact-tracker 0.1 log directory has a power field"),
        ("not a pickle", "info.pkl of this experiment-impact-tracker 0.1 log directory is not a readable pickle"),
        ("another time zone", "holds local times of the machine that wrote it: set TZ to that machine's time zone"),
    ],
)
def test_an_unreadable_old_log_is_one_line_naming_the_format_and_what_is_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str, message: str
) -> None:
    logdir = damaged(tmp_path, damage)
    out = ["--output_dir", str(tmp_path / "out"), "--no-pdf"]
    status, stderr = appendix(str(logdir), "--experiment_set_names", "Old", *out, capsys=capsys)
    assert status == 1
    assert stderr.startswith("create-compute-appendix: ") and stderr.count("\n") == 1
    assert message in stderr


def test_a_directory_that_is_no_run_says_what_it_looked_for(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    status, stderr = appendix(str(tmp_path / "missing"), "--experiment_set_names", "x", capsys=capsys)
    assert (status, stderr) == (1, f"create-compute-appendix: {tmp_path / 'missing'} does not exist\n")
    status, stderr = appendix(str(tmp_path / "empty"), "--experiment_set_names", "x", capsys=capsys)
    assert status == 1 and stderr.startswith(f"create-compute-appendix: {tmp_path / 'empty'} is not a run directory")
    assert "no run.json (written by track_run" in stderr and "no impacttracker/ folder" in stderr


class Hostile:
    """Pickles as a call of ``function(*args)``: what a malicious info.pkl would ask the unpickler to run."""

    def __init__(self, function: Any, *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.function, self.args)


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_hostile_info_pkl_runs_no_code(tmp_path: Path, capsys: pytest.CaptureFixture[str], protocol: int) -> None:
    marker = tmp_path / "pwned"
    calls = [
        Hostile(os.system, f"touch {marker}"),
        Hostile(subprocess.call, ["touch", str(marker)]),
        Hostile(exec, f"open({str(marker)!r}, 'w').close()"),
        Hostile(eval, f"__import__('pathlib').Path({str(marker)!r}).touch()"),
    ]
    inside = write_old_log(tmp_path / "inside", CPU_RUN)
    with stand_in_modules():
        info = pickle.loads((inside / "impacttracker" / "info.pkl").read_bytes())
        (inside / "impacttracker" / "info.pkl").write_bytes(pickle.dumps({**info, "region": calls}, protocol=protocol))
    whole = write_old_log(tmp_path / "whole", CPU_RUN)
    (whole / "impacttracker" / "info.pkl").write_bytes(pickle.dumps(calls[0], protocol=protocol))

    read = legacy.read_info(inside / "impacttracker" / "info.pkl")
    assert [type(call).__qualname__ for call in read["region"]] == ["system", "call", "exec", "eval"]
    assert all(isinstance(call, legacy.Placeholder) for call in read["region"])
    assert read["experiment_start"] == info["experiment_start"]
    with pytest.raises(RunDataError, match=r"info.pkl of this .* holds system, not a dict"):
        legacy.read_info(whole / "impacttracker" / "info.pkl")
    out = ["--output_dir", str(tmp_path / "out"), "--no-pdf"]
    status, stderr = appendix(str(inside), "--experiment_set_names", "x", *out, capsys=capsys)
    assert status == 0, stderr
    assert not marker.exists(), "the unpickler ran code from info.pkl"


@pytest.mark.parametrize("flags", [["--site_spec", "site.json"], ["--title=Runs"], ["--experiment_set_filters", "a"]])
def test_the_original_s_html_flags_name_the_new_ones(capsys: pytest.CaptureFixture[str], flags: list[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        seed_main(["logs", *flags, "--output_dir", "out"])
    stderr = capsys.readouterr().err
    assert raised.value.code == 2
    assert f"create-compute-appendix: error: {flags[0].split('=')[0]}: experiment-impact-tracker 0.1's HTML" in stderr
    assert "--experiment_set_names" in stderr and "--compare_dirs" in stderr and "--output_dir" in stderr


def test_override_pue_is_honoured_and_the_flag_wins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = write_archive(synthetic_run("r", "m", "s", 40.0), tmp_path / "r").parent
    listing = ["runs", "--run-dir", str(run_dir), "--format=json", "--carbon-intensity=300"]
    monkeypatch.setenv("OVERRIDE_PUE", "2")
    assert main(listing) == 0
    [run] = json.loads(capsys.readouterr().out)["runs"]
    assert (run["pue"], run["kg_co2eq"]) == (2.0, pytest.approx(run["total_kwh"] * 2 * 0.3, rel=1e-12))
    assert main([*listing, "--pue=1.3"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["pue"] == 1.3
    monkeypatch.setenv("OVERRIDE_PUE", "0.5")
    assert main(listing) == 2
    assert capsys.readouterr().err == (
        "impact-report: OVERRIDE_PUE='0.5': the PUE must be a finite number >= 1.0 (facility energy / IT energy)\n"
    )
