"""track_run and ImpactTracker without an exporter: the experiment must go on, with one clear warning."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from experiment_impact_tracker import ImpactTrackerError, RunNotTracked, track_run
from experiment_impact_tracker.compute_tracker import ImpactTracker
from experiment_impact_tracker.errors import BadExporterAddress, ExporterUnavailable, RunUnhealthy
from experiment_impact_tracker.runs import check_run_health
from tests.servers import REPO_ROOT, free_port

EXPERIMENT = """
    from experiment_impact_tracker import track_run

    with track_run("mobilenet", set="conv32", labels={"seed": "0"}) as run:
        print("epoch 1 done, tracked:", run.tracked, flush=True)
    print("finished", flush=True)
"""


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("IMPACT_")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env={**environment, **env},
    )


@pytest.mark.parametrize("kind", ["missing socket", "closed port"])
def test_without_an_exporter_the_experiment_runs_after_one_warning_line(tmp_path: Path, kind: str) -> None:
    address = f"unix://{tmp_path}/api.sock" if kind == "missing socket" else f"http://127.0.0.1:{free_port()}"
    result = run_python(EXPERIMENT, IMPACT_EXPORTER=address, IMPACT_STANDALONE="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "epoch 1 done, tracked: False\nfinished\n"
    reason = "No such file or directory" if kind == "missing socket" else "Connection refused"
    assert result.stderr == (
        f"experiment_impact_tracker: warning: not tracking 'mobilenet': cannot reach impact-exporter at {address} "
        f"({reason}); start impact-exporter on this machine, or set IMPACT_EXPORTER to its address "
        "(unix:///path/to/api.sock or http://HOST:9877)\n"
    )


def test_strict_raises_before_the_block_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMPACT_EXPORTER", f"unix://{tmp_path}/api.sock")
    monkeypatch.setenv("IMPACT_STANDALONE", "0")
    entered = False
    with pytest.raises(ExporterUnavailable, match="start impact-exporter"):
        with track_run("mobilenet", strict=True):
            entered = True
    assert not entered

    @track_run("mobilenet", strict=True)
    def train() -> str:
        return "trained"

    with pytest.raises(ExporterUnavailable):
        train()


def test_a_bad_exporter_address_is_a_warning_or_with_strict_an_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("IMPACT_EXPORTER", "localhost:9877")
    with caplog.at_level(logging.WARNING, logger="experiment_impact_tracker"):
        with track_run("mobilenet") as run:
            pass
    assert not run.tracked
    assert [record.getMessage() for record in caplog.records] == [
        "not tracking 'mobilenet': bad impact-exporter address 'localhost:9877': the scheme must be unix:// or "
        "http://; expected unix:///path/to/api.sock or http://HOST:9877"
    ]
    with pytest.raises(BadExporterAddress):
        with track_run("mobilenet", strict=True):
            pass


def test_the_decorator_returns_the_result_and_lets_exceptions_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMPACT_EXPORTER", f"unix://{tmp_path}/api.sock")
    monkeypatch.setenv("IMPACT_STANDALONE", "0")

    @track_run("mobilenet", labels={"seed": "0"})
    def train(epochs: int) -> int:
        """Train."""
        if epochs < 0:
            raise ValueError("negative epochs")
        return epochs * 2

    assert train(3) == 6
    assert train.__name__ == "train" and train.__doc__ == "Train."
    with pytest.raises(ValueError, match="negative epochs"):
        train(-1)


def test_an_exception_in_the_block_propagates_and_the_run_still_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMPACT_EXPORTER", f"unix://{tmp_path}/api.sock")
    monkeypatch.setenv("IMPACT_STANDALONE", "0")
    with pytest.raises(KeyError):
        with track_run("mobilenet", logdir=tmp_path / "run") as run:
            raise KeyError("boom")
    assert run.end_time is not None
    assert '"end_time": null' not in (tmp_path / "run" / "run.json").read_text()


def test_info_of_an_untracked_run_says_why_it_is_untracked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMPACT_EXPORTER", f"unix://{tmp_path}/api.sock")
    monkeypatch.setenv("IMPACT_STANDALONE", "0")
    with track_run("mobilenet") as run:
        assert run.run_id is None and not run.tracked
        with pytest.raises(RunNotTracked) as raised:
            run.info()
    assert str(raised.value).startswith(
        f"run of 'mobilenet' is not tracked: cannot reach impact-exporter at unix://{tmp_path}/api.sock"
    )


def test_the_seed_tracker_names_the_experiment_after_its_logdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMPACT_EXPERIMENT", raising=False)
    assert ImpactTracker(tmp_path / "mobilenet-seed0").experiment == "mobilenet-seed0"
    assert ImpactTracker(str(tmp_path / "mobilenet-seed0") + "/").experiment == "mobilenet-seed0"
    monkeypatch.setenv("IMPACT_EXPERIMENT", "mobilenet")
    assert ImpactTracker(tmp_path / "mobilenet-seed0").experiment == "mobilenet"


def test_the_seed_tracker_without_an_exporter_warns_at_launch_and_raises_when_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMPACT_EXPORTER", f"unix://{tmp_path}/api.sock")
    monkeypatch.setenv("IMPACT_STANDALONE", "0")
    tracker = ImpactTracker(tmp_path / "logs")
    with pytest.raises(ImpactTrackerError, match=r"call launch_impact_monitor\(\) first"):
        tracker.get_latest_info_and_check_for_errors()
    tracker.launch_impact_monitor()
    first = tracker.run
    tracker.launch_impact_monitor()
    assert tracker.run is first, "a second launch registered again"
    with pytest.raises(RunNotTracked, match="start impact-exporter on this machine"):
        tracker.get_latest_info_and_check_for_errors()
    assert (tmp_path / "logs" / "run.json").exists()
    tracker.stop()


HEALTHY = {
    "run_id": "r1",
    "status": "active",
    "last_sample_time": 1000.0,
    "sources_up": {"rapl": True, "procfs": True},
    "source_errors": {"rapl": 0, "procfs": 0},
}


def test_current_figures_from_working_sources_are_healthy() -> None:
    check_run_health(HEALTHY, now=1009.9)


@pytest.mark.parametrize(
    "change, now, message",
    [
        ({}, 1010.5, "run r1: impact-exporter's samples are stale (last sample 10.5 s ago, limit 10 s)"),
        ({"last_sample_time": None}, 1000.0, "samples are stale (never sampled, limit 10 s)"),
        (
            {"sources_up": {"rapl": False, "procfs": True}, "source_errors": {"rapl": 3, "procfs": 0}},
            1000.0,
            "run r1: source(s) down: rapl (3 errors); that energy is not being measured",
        ),
        ({"status": "finished"}, 1000.0, "run r1: the run is finished, so its figures no longer grow"),
    ],
)
def test_stale_down_or_finished_runs_are_unhealthy(change: dict, now: float, message: str) -> None:
    with pytest.raises(RunUnhealthy) as raised:
        check_run_health({**HEALTHY, **change}, now=now)
    assert message in str(raised.value)
