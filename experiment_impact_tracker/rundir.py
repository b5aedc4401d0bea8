"""Run directories: ``run.json``, what one run was and where its figures live, for the reporter.

The exporter holds the measurements and Prometheus keeps them; ``run.json`` holds what they cannot know: the
experiment's own directory, its hardware as the experiment saw it, the Prometheus that scraped it, and the final
figures the exporter returned at stop. It is written at start (``end_time`` null) and again at stop, each time
to a temporary file that replaces the old one, so a crash leaves the previous complete version, never half a
file::

    {"format": 1, "run_id": "4f1c...", "tracked": true, "experiment": "mobilenet", "set": "conv32",
     "labels": {"seed": "0"}, "exporter": "unix:///run/impact-exporter/api.sock",
     "prometheus_url": "http://localhost:9090", "start_time": 1700000000.1, "end_time": 1700000360.7,
     "host": "node1", "hardware": {"cpu": {"brand_raw": "...", "count": 64, "arch": "X86_64"}, "gpus": []},
     "pid": 4242, "user": "alice", "command": null, "final": {...the exporter's run object...}}
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from experiment_impact_tracker.errors import RunDirError

RUN_JSON = "run.json"
SAMPLES_CSV = "samples.csv"
"""The samples of a run measured without an exporter (exporter/standalone.py), in ``impact-report archive``'s format."""
SAMPLES_HEADER = "metric,instance,component,timestamp,value\n"
ENERGY = "impact_run_energy_joules_total"
CPU_SECONDS = "impact_run_cpu_seconds_total"
GPU_SECONDS = "impact_run_gpu_seconds_total"
WORK_UNITS_TOTAL = "impact_run_work_units_total"
WORK_JSONL = "work.jsonl"
"""Units of work a standalone run's processes reported (``run.add_work``), one JSON object a line, appended by any
of them; its monitor adds them to the run at its next sample (exporter/standalone.py)."""
"""The series samples.csv holds (those of the exporter's per-run metrics, docs/metrics.md)."""
PREVIOUS = "previous"
FORMAT_VERSION = 1
PROMETHEUS_URL_ENV = "PROMETHEUS_URL"
DEFAULT_PROMETHEUS_URL = "http://localhost:9090"


def describe_hardware(nvml: Any = None) -> dict[str, Any]:
    """The CPU (py-cpuinfo: brand_raw, count, arch) and the visible NVIDIA GPUs (``[]`` without any). Imported here,
    not with the module: the standalone monitor reads and writes run directories and must start fast."""
    from experiment_impact_tracker.cpu.common import cpu_summary
    from experiment_impact_tracker.gpu.nvidia import gpus_or_none

    return {"cpu": cpu_summary(), "gpus": gpus_or_none(nvml)}


def append_work(run_dir: Path, units: Mapping[str, int]) -> None:
    """Append units of work to a standalone run's WORK_JSONL: one short write in append mode, so the lines of
    several processes of the run never interleave; OSError when the run directory cannot be written."""
    fd = os.open(run_dir / WORK_JSONL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(dict(units)) + "\n").encode())
    finally:
        os.close(fd)


def write_json_atomic(path: Path, document: Any) -> None:
    """Write ``document`` as JSON to ``path`` through a temporary file in the same directory and ``os.replace``,
    so readers and crashes see the old file or the new one, complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as temp:
            json.dump(document, temp, indent=2, sort_keys=True)
            temp.write("\n")
            temp.flush()
            os.fsync(temp.fileno())
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_run_dir(logdir: str | os.PathLike[str], record: dict[str, Any]) -> Path:
    """Write ``record`` as ``logdir/run.json`` (creating ``logdir``) and return the file's path."""
    path = Path(logdir) / RUN_JSON
    write_json_atomic(path, {"format": FORMAT_VERSION, **record})
    return path


def set_aside_previous_run(logdir: Path) -> Path | None:
    """Move the run that ``logdir`` holds (its run.json and samples.csv) into ``logdir/previous/<run id or time>``,
    so a new run in the same directory overwrites nothing measured; where it went, or None when there was none."""
    held = [logdir / name for name in (RUN_JSON, SAMPLES_CSV) if (logdir / name).exists()]
    if not held:
        return None
    try:
        name = str(json.loads((logdir / RUN_JSON).read_text()).get("run_id") or "")
    except (OSError, ValueError, AttributeError):
        name = ""
    target = logdir / PREVIOUS / (name.replace("/", "_") or f"run-{int(os.path.getmtime(held[0]))}")
    while target.exists():
        target = target.with_name(target.name + "+")
    target.mkdir(parents=True)
    for path in held:
        os.replace(path, target / path.name)
    return target


def read_run_dir(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The record in ``path/run.json`` (``path`` may also be the file itself); RunDirError saying what is wrong
    when it is missing, unreadable, not JSON or not a run record."""
    path = Path(path)
    file = path if path.name == RUN_JSON and not path.is_dir() else path / RUN_JSON
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise RunDirError(
            f"{file} does not exist: {path} is not a run directory written by track_run, impact-run or ImpactTracker"
        ) from None
    except OSError as error:
        raise RunDirError(f"cannot read {file}: {error.strerror or error}") from error
    try:
        record = json.loads(text)
    except ValueError as error:
        raise RunDirError(f"{file} is not valid JSON: {error}") from error
    if not isinstance(record, dict) or "experiment" not in record:
        raise RunDirError(f"{file} is not a run record (no 'experiment' field)")
    version = record.get("format", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise RunDirError(f"{file} has format {version!r}; this library reads format {FORMAT_VERSION} (upgrade it?)")
    return record


def prometheus_url(environ: Mapping[str, str] | None = None) -> str:
    """The Prometheus that scrapes the exporter, for the reporter: ``$PROMETHEUS_URL`` or localhost:9090."""
    environ = os.environ if environ is None else environ
    return environ.get(PROMETHEUS_URL_ENV) or DEFAULT_PROMETHEUS_URL
