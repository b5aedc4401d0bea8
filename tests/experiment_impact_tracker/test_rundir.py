"""run.json: atomic writes, read-back, and what an untracked run records."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

import pytest

from experiment_impact_tracker import read_run_dir, track_run
from experiment_impact_tracker.cpu.common import cpu_info
from experiment_impact_tracker.errors import RunDirError
from experiment_impact_tracker.rundir import write_json_atomic, write_run_dir


def test_written_record_reads_back_with_its_format(tmp_path: Path) -> None:
    path = write_run_dir(tmp_path / "run", {"experiment": "mobilenet", "labels": {"seed": "0"}, "end_time": None})
    assert path == tmp_path / "run" / "run.json"
    assert read_run_dir(tmp_path / "run") == {
        "format": 1,
        "experiment": "mobilenet",
        "labels": {"seed": "0"},
        "end_time": None,
    }
    assert read_run_dir(path)["experiment"] == "mobilenet"  # the file itself works too


def test_a_write_that_fails_halfway_leaves_the_previous_file_whole_and_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    write_json_atomic(path, {"experiment": "mobilenet", "end_time": None})
    with pytest.raises(TypeError):
        # json.dump writes the first keys, then fails on the object: a direct write would leave half a file
        write_json_atomic(path, {"experiment": "mobilenet", "end_time": 12.5, "zz": object()})
    assert json.loads(path.read_text()) == {"experiment": "mobilenet", "end_time": None}
    assert sorted(os.listdir(tmp_path)) == ["run.json"]


def test_the_written_file_is_readable_by_others(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "run.json", {"experiment": "x"})
    assert (tmp_path / "run.json").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "run.json does not exist"),
        ('{"experiment": ', "run.json is not valid JSON"),
        ("[1, 2]", "is not a run record (no 'experiment' field)"),
        ('{"format": 9, "experiment": "x"}', "has format 9; this library reads format 1"),
    ],
)
def test_reading_a_bad_run_dir_says_what_is_wrong(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / "run.json").write_text(content)
    with pytest.raises(RunDirError, match=re.escape(message)):
        read_run_dir(tmp_path)


def test_an_untracked_run_still_records_what_the_reporter_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMPACT_EXPORTER", f"unix://{tmp_path}/none.sock")
    monkeypatch.setenv("IMPACT_STANDALONE", "0")
    monkeypatch.setenv("PROMETHEUS_URL", "http://prometheus.lab:9090")
    monkeypatch.delenv("IMPACT_RUN_ID", raising=False)
    logdir = tmp_path / "runs" / "seed0"
    before = time.time()
    with track_run("mobilenet", set="conv32", labels={"seed": 0}, logdir=logdir) as run:
        at_start = read_run_dir(logdir)
    after = time.time()
    record = read_run_dir(logdir)

    assert at_start["end_time"] is None
    assert before <= at_start["start_time"] <= after
    assert record["start_time"] == at_start["start_time"] <= record["end_time"] <= after
    info = cpu_info()
    assert record["hardware"] == {
        "cpu": {"brand_raw": info["brand_raw"], "count": info["count"], "arch": info["arch"]},
        "gpus": [],
    }
    assert {
        key: record[key]
        for key in (
            "experiment",
            "set",
            "labels",
            "tracked",
            "run_id",
            "exporter",
            "prometheus_url",
            "host",
            "pid",
            "final",
            "command",
        )
    } == {
        "experiment": "mobilenet",
        "set": "conv32",
        "labels": {"seed": "0"},
        "tracked": False,
        "run_id": None,
        "exporter": f"unix://{tmp_path}/none.sock",
        "prometheus_url": "http://prometheus.lab:9090",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "final": None,
        "command": None,
    }
    assert "cannot reach impact-exporter" in record["untracked_reason"]
    assert record["user"]
    assert run.logdir == logdir


def test_an_unwritable_logdir_fails_before_the_experiment_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMPACT_EXPORTER", f"unix://{tmp_path}/none.sock")
    monkeypatch.setenv("IMPACT_STANDALONE", "0")
    (tmp_path / "file").write_text("")
    entered = False
    with pytest.raises(OSError):
        with track_run("mobilenet", logdir=tmp_path / "file" / "run"):
            entered = True
    assert not entered
