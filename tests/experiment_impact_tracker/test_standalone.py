"""Runs measured without an exporter: the standalone monitor (exporter/standalone.py), as the experiment starts it.

The energy test drives a fake machine (tests/fakes/standalone_node.py: powercap, procfs and NVML at their own
interfaces) under the real impact-run, so the joules the run must be given are known; the others run on this
machine's /proc with a fake powercap tree. The original experiment-impact-tracker's own scenarios (its
tests/test_scripts.py, tests/test_abrupt_stop.py) are ported at the end; its overhead check is a benchmark
(benchmarks/standalone.py), as timings are not asserted in tests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import requests

from experiment_impact_tracker import ExporterClient, read_run_dir, track_run
from experiment_impact_tracker.compute_tracker import ImpactTracker
from experiment_impact_tracker.errors import MeasurementFailed
from experiment_impact_tracker.standalone import StandaloneOptions
from impact_reporter.energy import counter_total
from impact_reporter.runs import load_run_dirs
from tests.fakes.powercap import FakePowercap
from tests.reporter.papers import pdf_text
from tests.servers import REPO_ROOT, PrometheusServer, free_port, require_binary, wait_for

NVML_MODULE = REPO_ROOT / "tests" / "fakes" / "nvml_module"


def no_exporter(tmp_path: Path, **extra: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("IMPACT_")}
    return {**environment, "IMPACT_EXPORTER": f"unix://{tmp_path}/no-exporter.sock", **extra}


def component_joules(run_dir: Path, metric: str = "impact_run_energy_joules_total") -> dict[str, float]:
    """Each component's energy (or another counter's total per component: units of work per unit) as the reporter
    reads the run directory, with no Prometheus."""
    (run,) = load_run_dirs([run_dir], lambda url: pytest.fail("a standalone run must not need Prometheus"))
    energy = run.samples[run.samples["metric"] == metric]
    return {component: counter_total(rows["value"].to_numpy()) for component, rows in energy.groupby("component")}


def work_totals(run_dir: Path) -> dict[str, float]:
    """The units of work the run's processes reported (run.add_work), as the reporter reads the run directory."""
    return component_joules(run_dir, "impact_run_work_units_total")


def test_impact_run_without_an_exporter_gives_the_run_its_true_energy_and_the_reports_say_how(tmp_path: Path) -> None:
    root = tmp_path / "node"
    root.mkdir()
    done = root / "done"
    waits = f"import os, time\nwhile not os.path.exists({str(done)!r}): time.sleep(0.02)"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fakes.standalone_node",
            str(root),
            "--",
            "--experiment=busy",
            f"--logdir={root / 'run'}",
            f"--path.sysfs={root / 'sys'}",
            f"--path.procfs={root / 'proc'}",
            "--sample-interval=0.5",
            "--",
            sys.executable,
            "-c",
            waits,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env=no_exporter(tmp_path, PYTHONPATH=f"{NVML_MODULE}:{REPO_ROOT}", FAKE_NVML_STATE=str(root / "nvml.json")),
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\n") == 1 and "so 'busy' is measured without it, standalone (rapl, nvml)" in (
        result.stderr
    )
    truth = json.loads((root / "truth.json").read_text())
    measured = component_joules(root / "run")
    for component in ("cpu", "dram", "gpu"):
        assert measured[component] == pytest.approx(truth[component], rel=0.01), component
    record = read_run_dir(root / "run")
    assert record["measured_by"] == "standalone (rapl, nvml)"
    assert record["methods"] == {"cpu": "rapl", "dram": "rapl", "gpu": "nvml-counter"}

    require_binary("lualatex", "apt-get install texlive-luatex")
    out = tmp_path / "appendix"
    seed = subprocess.run(
        [
            str(Path(sys.executable).parent / "create-compute-appendix"),
            str(root / "run"),
            "--experiment_set_names",
            "Busy",
        ]
        + ["--output_dir", str(out), "--region", "FR"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env=no_exporter(tmp_path, PROMETHEUS_URL="http://127.0.0.1:1"),
    )
    assert seed.returncode == 0, seed.stderr
    assert "by standalone (rapl, nvml)" in pdf_text(out / "Busy" / "0.pdf")
    report = subprocess.run(
        [sys.executable, "-m", "impact_reporter", "appendix", "--experiment-set-names", "Busy"]
        + ["--run-dirs", str(root / "run"), "--out", str(tmp_path / "tex"), "--no-pdf", "--region", "FR"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env=no_exporter(tmp_path, PROMETHEUS_URL="http://127.0.0.1:1"),
    )
    assert report.returncode == 0, report.stderr
    (listed,) = json.loads((tmp_path / "tex" / "appendix.json").read_text())["sets"][0]["runs"]
    assert listed["measured_by"] == "standalone (rapl, nvml)"


def test_the_seed_loop_keeps_training_serves_metrics_and_raises_only_when_the_monitor_dies(tmp_path: Path) -> None:
    powercap = FakePowercap.intel_two_socket(tmp_path / "sys")
    address = f"127.0.0.1:{free_port()}"
    tracker = ImpactTracker(
        tmp_path / "logs",
        client=ExporterClient(f"unix://{tmp_path}/no-exporter.sock"),
        standalone=StandaloneOptions(sample_interval_seconds=0.1, sysfs=str(powercap.sysfs), listen_address=address),
    )
    tracker.launch_impact_monitor()
    try:
        assert tracker.run is not None and tracker.run.tracked
        first = tracker.get_latest_info_and_check_for_errors()
        for step in range(10_000):  # a training loop that checks at every step, as the original README shows
            powercap.advance("intel-rapl:0", 0.01)
            info = tracker.get_latest_info_and_check_for_errors()
            if info["last_sample_time"] > first["last_sample_time"] + 0.3 and step > 100:
                break
        assert info["status"] == "active" and info["energy_joules"]["cpu"] > 0

        metrics = requests.get(f"http://{address}/metrics", timeout=10).text  # real HTTP, the exporter's collector
        run_id = tracker.run.run_id
        assert f'impact_run_energy_joules_total{{component="cpu",run_id="{run_id}"' in metrics
        assert 'impact_source_up{source="rapl"} 1.0' in metrics

        os.kill(tracker.run._monitor.pid, signal.SIGKILL)
        with pytest.raises(MeasurementFailed, match="stopped measuring the run: it was killed or failed") as raised:
            wait_for(lambda: tracker.get_latest_info_and_check_for_errors() and False, 10, "the monitor's end")
        assert str(tmp_path / "logs" / "samples.csv") in str(raised.value)
    finally:
        tracker.stop()
    assert len((tmp_path / "logs" / "samples.csv").read_text().splitlines()) > 3, "the samples before the kill"


def test_a_careless_user_rapl_unreadable_and_a_logdir_that_holds_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("IMPACT_EXPORTER", f"unix://{tmp_path}/no-exporter.sock")
    monkeypatch.delenv("IMPACT_STANDALONE", raising=False)
    options = StandaloneOptions(sample_interval_seconds=0.1, sysfs=str(tmp_path / "no-powercap"))
    with track_run("first", logdir=tmp_path / "run", standalone=options) as first:
        pass
    (warning,) = [record.getMessage() for record in caplog.records]
    assert "measured without it, standalone (estimate)" in warning
    assert "RAPL cannot be used: no RAPL zones under" in warning and "CPU energy is ESTIMATED" in warning
    assert read_run_dir(tmp_path / "run")["methods"] == {"cpu": "estimate"}

    caplog.clear()
    with track_run("second", logdir=tmp_path / "run", standalone=options):
        pass
    assert f"{tmp_path / 'run'} held a run already; it is moved to {tmp_path / 'run' / 'previous' / first.run_id}" in (
        caplog.records[0].getMessage()
    )
    assert read_run_dir(tmp_path / "run")["experiment"] == "second"
    assert read_run_dir(tmp_path / "run" / "previous" / first.run_id)["experiment"] == "first"
    assert component_joules(tmp_path / "run" / "previous" / first.run_id)["cpu"] >= 0

    caplog.clear()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        busy_port = StandaloneOptions(sysfs=str(tmp_path / "no-powercap"), listen_address=address)
        with track_run("third", standalone=busy_port) as third:
            pass
    assert not third.tracked
    (warning,) = [record.getMessage() for record in caplog.records]
    assert warning.endswith(
        f"and the standalone monitor cannot measure: cannot serve /metrics on {address}: Address already in use"
    )


MYAPP = """
    # experiment-impact-tracker's tests/scripts/myapp.py, with numpy for torch: a two-layer network's steps, the
    # tracker checked at every one.
    import sys
    import numpy as np
    from experiment_impact_tracker.compute_tracker import ImpactTracker

    tracker = ImpactTracker(sys.argv[1])
    tracker.launch_impact_monitor()
    x, w = np.random.randn(64, 128), np.random.randn(128, 16)
    for step in range(int(sys.argv[2])):
        (x @ w).clip(0)
        tracker.get_latest_info_and_check_for_errors()
        if step == 0:
            print("training", flush=True)
    print("SUCCESS")
"""


def myapp(logdir: Path, steps: int, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(MYAPP), str(logdir), str(steps)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )


def test_the_original_s_tracked_script_and_abrupt_stop(tmp_path: Path) -> None:
    env = no_exporter(tmp_path)
    # About a second of CPU time: 200 steps (the original's) take 3 ms, under /proc's 10 ms tick, which a loaded
    # machine could read as no CPU time at all, so no energy (this test's one failure in CI).
    script = myapp(tmp_path / "exp1", 80_000, env)
    stdout, stderr = script.communicate(timeout=120)
    assert stdout.split()[-1] == "SUCCESS", stderr
    assert component_joules(tmp_path / "exp1")["cpu"] > 0

    killed = myapp(tmp_path / "exp2", 10**9, env)
    try:
        assert killed.stdout.readline() == "training\n"
        samples = tmp_path / "exp2" / "samples.csv"
        wait_for(lambda: len(samples.read_text().splitlines()) > 4, 30, "a few samples")
        before_kill = samples.read_text().splitlines()
        killed.kill()
    finally:
        killed.wait()
    wait_for(lambda: read_run_dir(tmp_path / "exp2").get("end_time"), 30, "the monitor to close the run")
    after = samples.read_text().splitlines()
    assert after[: len(before_kill)] == before_kill, "the samples written before the kill survive as they were"
    record = read_run_dir(tmp_path / "exp2")
    assert record["end_reason"] in (
        "the run's processes are all gone",
        "the experiment's process that started the monitor is gone",
    )
    assert component_joules(tmp_path / "exp2")["cpu"] > 0


NESTED = """
    # Code that marks its own runs, started by impact-run with no exporter: both join impact-run's standalone run.
    import json, sys
    from experiment_impact_tracker import track_run
    from experiment_impact_tracker.compute_tracker import ImpactTracker

    with track_run("inner", logdir=sys.argv[1]) as run:
        while not (run.info()["last_sample_time"] and run.info()["cpu_seconds"] > 0):
            sum(range(10_000))
        seen = run.info()
        for _ in range(5):
            run.add_work(samples=64, steps=1)  # a joined run's work goes to impact-run's monitor
    tracker = ImpactTracker(sys.argv[2])  # the very directory impact-run writes
    tracker.launch_impact_monitor()
    checked = tracker.get_latest_info_and_check_for_errors()
    tracker.stop()
    print(json.dumps({"run_id": run.run_id, "created": run.created, "measured_by": run.measured_by, "seen": seen,
                      "tracker_run_id": tracker.run.run_id, "tracker_created": tracker.run.created,
                      "checked": checked}))
"""


def test_runs_marked_inside_impact_run_join_its_standalone_run_rather_than_start_a_second_monitor(
    tmp_path: Path,
) -> None:
    outer, inner = tmp_path / "outer", tmp_path / "inner"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "impact-run"), "--experiment=outer", f"--logdir={outer}"]
        + [f"--path.sysfs={tmp_path / 'no-powercap'}", "--sample-interval=0.1", "--"]
        + [sys.executable, "-c", textwrap.dedent(NESTED), str(inner), str(outer)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env=no_exporter(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("measured without it") == 1, "one monitor, impact-run's: " + result.stderr
    report = json.loads(result.stdout)
    record = read_run_dir(outer)
    assert report["run_id"] == report["tracker_run_id"] == record["run_id"]
    assert not report["created"] and not report["tracker_created"]
    assert report["measured_by"] == record["measured_by"] == "standalone (estimate)"
    assert report["seen"]["status"] == "active" and report["seen"]["cpu_seconds"] > 0
    assert report["seen"]["energy_joules"]["cpu"] >= 0 and report["checked"]["status"] == "active"

    assert record["experiment"] == "outer" and record["end_time"] is not None, "the outer run.json, finished"
    assert not (outer / "previous").exists(), "joining the run in its own directory sets nothing aside"
    assert read_run_dir(inner)["joined"] and not (inner / "samples.csv").exists()
    assert read_run_dir(inner)["run_id"] == record["run_id"]
    assert component_joules(outer)["cpu"] >= report["seen"]["energy_joules"]["cpu"]
    assert work_totals(outer) == {"samples": 320, "steps": 5}, "a joined run's work reaches impact-run's monitor"


def test_a_prometheus_scraping_the_standalone_run_stores_the_energy_its_samples_csv_ends_with(
    tmp_path: Path, prometheus: PrometheusServer
) -> None:
    powercap = FakePowercap.intel_two_socket(tmp_path / "sys")
    address = f"127.0.0.1:{free_port()}"
    options = StandaloneOptions(sample_interval_seconds=0.1, sysfs=str(powercap.sysfs), listen_address=address)
    client = ExporterClient(f"unix://{tmp_path}/no-exporter.sock")
    with track_run("scraped", logdir=tmp_path / "run", client=client, standalone=options) as run:
        selector = f'impact_run_energy_joules_total{{run_id="{run.run_id}",component="cpu"}}'
        prometheus.add_target(address)
        try:
            for _ in range(10):  # 100 J on the package while this process works; then the counters stand still
                powercap.advance("intel-rapl:0", 10.0)
                sum(range(300_000))
                run.add_work(samples=32)

            def scraped_the_latest() -> float | None:
                latest = run.info()["energy_joules"]["cpu"]
                stored = prometheus.query(selector)
                return latest if latest > 0 and stored and float(stored[0]["value"][1]) == latest else None

            wait_for(scraped_the_latest, 30, "a scrape of the run's latest energy")
            scraped = float(prometheus.query(selector)[0]["value"][1])
        finally:
            prometheus.remove_target(address)
    rows = [line.split(",") for line in (tmp_path / "run" / "samples.csv").read_text().splitlines()]
    final = [float(row[4]) for row in rows if row[0] == "impact_run_energy_joules_total" and row[2] == "cpu"][-1]
    assert 0 < scraped <= 100.0
    assert scraped == final == run.final["energy_joules"]["cpu"], "Prometheus holds what samples.csv ends with"
    assert work_totals(tmp_path / "run") == {"samples": 320}, "the work reported, through the run's own monitor"
    assert run.final["work_units"] == {"samples": 320}
