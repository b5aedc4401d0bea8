"""The library against the real exporter: real sockets, real runs, real child processes.

Experiments run as child processes of the test, never in the test process itself: the exporter is the test's
child too, and a run of the test process would measure the exporter's own CPU time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

import experiment_impact_tracker
from experiment_impact_tracker import ExporterClient, ExporterError, ExporterUnavailable, UnknownRun, read_run_dir
from experiment_impact_tracker.compute_tracker import ImpactTracker
from experiment_impact_tracker.errors import RunUnhealthy
from tests.fakes.powercap import FakePowercap
from tests.servers import REPO_ROOT, ExporterProcess, wait_for

pytestmark = pytest.mark.integration

PACKAGE = "intel-rapl:0"
BUSY_SECONDS = 1.0
SAMPLE_INTERVAL = 0.2


@pytest.fixture
def powercap(tmp_path: Path) -> FakePowercap:
    return FakePowercap.intel_two_socket(tmp_path / "sys")


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A socket path short enough for sun_path (108 bytes), which pytest's tmp_path may not be."""
    directory = Path(tempfile.mkdtemp(prefix="eit-"))
    yield directory / "api.sock"
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def exporter_flags(powercap: FakePowercap, socket_path: Path, tmp_path: Path) -> list[str]:
    return [
        f"--path.sysfs={powercap.sysfs}",
        f"--api.socket={socket_path}",
        f"--state-dir={tmp_path / 'state'}",
        f"--sample-interval={SAMPLE_INTERVAL}",
    ]


@pytest.fixture
def exporter(start_exporter: Callable[..., ExporterProcess], exporter_flags: list[str]) -> ExporterProcess:
    return start_exporter(*exporter_flags)


@pytest.fixture
def client(exporter: ExporterProcess, socket_path: Path) -> ExporterClient:
    return ExporterClient(f"unix://{socket_path}")


@pytest.fixture
def env(exporter: ExporterProcess, socket_path: Path) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("IMPACT_")}
    return {**environment, "IMPACT_EXPORTER": f"unix://{socket_path}"}


@pytest.fixture
def power(powercap: FakePowercap) -> Iterator[None]:
    """The package draws 20 W for as long as the test runs."""
    stop = threading.Event()

    def draw() -> None:
        while not stop.wait(0.05):
            powercap.advance(PACKAGE, 20.0 * 0.05)

    thread = threading.Thread(target=draw, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join()


def python(code: str, *args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO_ROOT,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


BUSY = textwrap.dedent(f"""
    def busy(run_id):
        import time
        from experiment_impact_tracker import ExporterClient
        client = ExporterClient()
        while client.get_run(run_id)["last_sample_time"] <= client.get_run(run_id)["start_time"]:
            time.sleep(0.02)  # the exporter counts CPU time from its first sample of the run on
        start = time.process_time()
        while time.process_time() - start < {BUSY_SECONDS}:
            pass
""")


def assert_measured_the_busy_loop(cpu_seconds: float) -> None:
    # More than the loop and its polling would mean the run measured something else (the interpreter's start,
    # py-cpuinfo, impact-run, the exporter).
    assert BUSY_SECONDS - 0.05 <= cpu_seconds <= BUSY_SECONDS + 0.3


def test_track_run_registers_the_process_and_stops_the_run_at_the_end_of_the_block(
    client: ExporterClient, env: dict[str, str], tmp_path: Path, power: None
) -> None:
    result = python(
        BUSY
        + textwrap.dedent("""
        import json, os, sys
        from experiment_impact_tracker import track_run
        with track_run("mobilenet", set="conv32", labels={"seed": 0}, logdir=sys.argv[1]) as run:
            during = run.info()
            busy(run.run_id)
        print(json.dumps({"pid": os.getpid(), "run_id": run.run_id, "tracked": run.tracked, "during": during,
                          "final": run.final}))
    """),
        str(tmp_path / "run"),
        env=env,
    )
    assert result.stderr == ""
    out = json.loads(result.stdout)
    assert out["tracked"] is True
    during, final = out["during"], out["final"]
    assert (during["status"], during["end_time"], during["pids"]) == ("active", None, [out["pid"]])
    assert (during["experiment"], during["set"], during["labels"]) == ("mobilenet", "conv32", {"seed": "0"})
    assert final["status"] == "finished"
    assert final["start_time"] <= final["end_time"] <= time.time()
    assert_measured_the_busy_loop(final["cpu_seconds"])
    assert final["energy_joules"]["cpu"] > 0, "no package energy was attributed to a busy run"
    assert client.get_run(out["run_id"]) | {"last_sample_time": None} == final | {"last_sample_time": None}

    record = read_run_dir(tmp_path / "run")
    assert record["tracked"] is True and record["run_id"] == out["run_id"]
    assert record["final"] == final
    assert (record["start_time"], record["end_time"]) == (final["start_time"], final["end_time"])
    assert record["exporter"] == env["IMPACT_EXPORTER"]
    assert record["pid"] == out["pid"] and record["user"] == final["user"]


def test_a_decorated_function_is_one_run_per_call(client: ExporterClient, env: dict[str, str]) -> None:
    result = python(
        """
        from experiment_impact_tracker import track_run
        @track_run("sweep", labels={"lr": "0.1"})
        def train():
            pass
        train()
        train()
    """,
        env=env,
    )
    assert result.stderr == ""
    runs = [run for run in client.list_runs() if run["experiment"] == "sweep"]
    assert len(runs) == 2
    assert {run["status"] for run in runs} == {"finished"}
    assert runs[0]["run_id"] != runs[1]["run_id"]


def test_a_forked_child_leaving_the_block_does_not_end_the_parent_s_run(env: dict[str, str]) -> None:
    result = python(
        """
        import os, sys
        from experiment_impact_tracker import track_run
        with track_run("forks") as run:
            pid = os.fork()
            if pid == 0:
                sys.exit(0)  # leaves the with block in the child
            os.waitpid(pid, 0)
            print(run.info()["status"])
        print(run.final["status"])
    """,
        env=env,
    )
    assert result.stdout == "active\nfinished\n"


def test_processes_started_with_one_run_id_join_it_and_only_its_creator_ends_it(
    client: ExporterClient, env: dict[str, str]
) -> None:
    code = """
        import sys
        from experiment_impact_tracker import track_run
        with track_run("ddp", labels={"world": "2"}) as run:
            print(run.run_id, run.created, flush=True)
            sys.stdin.readline()
    """
    job = {**env, "IMPACT_RUN_ID": "job-42"}
    creator = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=job,
        cwd=REPO_ROOT,
    )
    try:
        assert creator.stdout.readline() == "job-42 True\n"
        joiner = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            input="\n",
            capture_output=True,
            text=True,
            env=job,
            cwd=REPO_ROOT,
            timeout=60,
        )
        assert (joiner.returncode, joiner.stdout, joiner.stderr) == (0, "job-42 False\n", "")
        run = client.get_run("job-42")
        assert run["status"] == "active", "the joining process ended the run when it left"
        assert len(run["pids"]) == 2 and creator.pid in run["pids"]
        creator.communicate("\n", timeout=30)
    finally:
        creator.kill()
        creator.wait()
    assert client.get_run("job-42")["status"] == "finished"

    again = python(code, env=job, check=False)
    assert "not tracking 'ddp': impact-exporter at" in again.stderr
    assert "answered 409: run job-42 already finished on this node" in again.stderr
    assert again.stdout.startswith("None False")


def test_impact_run_registers_the_command_not_itself(
    client: ExporterClient, env: dict[str, str], tmp_path: Path
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiment_impact_tracker",
            "--experiment",
            "train",
            "--set",
            "small",
            "--label",
            "seed=1",
            "--logdir",
            str(tmp_path / "run"),
            "--",
            sys.executable,
            "-c",
            BUSY + "import os\nbusy(os.environ['IMPACT_RUN_ID'])\nprint(os.getpid(), os.environ['IMPACT_RUN_ID'])\n"
            "raise SystemExit(3)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO_ROOT,
    )
    assert (result.returncode, result.stderr) == (3, "")
    pid, run_id = result.stdout.split()
    run = client.get_run(run_id)
    assert run["pids"] == [int(pid)]
    assert (run["experiment"], run["set"], run["labels"]) == ("train", "small", {"seed": "1"})
    assert run["status"] == "finished"
    assert_measured_the_busy_loop(run["cpu_seconds"])
    record = read_run_dir(tmp_path / "run")
    assert record["pid"] == int(pid) and record["run_id"] == run_id and record["final"]["status"] == "finished"


def test_code_inside_impact_run_uses_impact_run_s_run(client: ExporterClient, env: dict[str, str]) -> None:
    inner = """
        import os
        from experiment_impact_tracker import track_run
        with track_run("named-differently") as run:
            print(run.run_id == os.environ["IMPACT_RUN_ID"], run.tracked, run.created)
    """
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiment_impact_tracker",
            "--experiment",
            "outer",
            "--",
            sys.executable,
            "-c",
            textwrap.dedent(inner),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=REPO_ROOT,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "True True False\n", "")
    assert [run["experiment"] for run in client.list_runs()] == ["outer"]


def test_a_run_nested_in_another_run_of_the_same_process_is_refused_with_one_warning(
    client: ExporterClient, env: dict[str, str]
) -> None:
    """A process counts in one run at a time: the inner block runs untracked, the outer run goes on."""
    result = python(
        """
        from experiment_impact_tracker import ExporterError, track_run
        with track_run("outer") as outer:
            with track_run("inner") as inner:
                print(outer.run_id, outer.tracked, inner.tracked)
            with track_run("inner-with-id", run_id="inner-7") as with_id:
                assert not with_id.tracked
            try:
                with track_run("strict-inner", strict=True):
                    pass
            except ExporterError as error:
                print(error.status)
        print(outer.final["status"])
    """,
        env=env,
    )
    outer_id, outer_tracked, inner_tracked, status, final = result.stdout.split()
    assert (outer_tracked, inner_tracked, status, final) == ("True", "False", "409", "finished")
    warning, warning_with_id = result.stderr.splitlines()
    assert warning.startswith("experiment_impact_tracker: warning: not tracking 'inner': impact-exporter at ")
    assert f"is a root of active run {outer_id}; a process counts in one run at a time" in warning
    assert warning_with_id.startswith("experiment_impact_tracker: warning: not tracking 'inner-with-id': ")
    assert f"is a root of active run {outer_id}" in warning_with_id, "the 409's reason, not the unknown id"
    assert [run["experiment"] for run in client.list_runs()] == ["outer"]


def test_the_seed_api_as_in_the_original_readme(client: ExporterClient, env: dict[str, str], tmp_path: Path) -> None:
    logdir = tmp_path / "mobilenet-seed0"
    result = python(
        BUSY
        + textwrap.dedent("""
        import json, sys, time
        from experiment_impact_tracker.compute_tracker import ImpactTracker
        tracker = ImpactTracker(sys.argv[1])
        tracker.launch_impact_monitor()
        busy(tracker.run.run_id)
        time.sleep(0.5)
        print(json.dumps(tracker.get_latest_info_and_check_for_errors()))
    """),
        str(logdir),
        env=env,
    )
    assert result.stderr == ""
    info = json.loads(result.stdout)
    assert (info["experiment"], info["status"]) == ("mobilenet-seed0", "active")
    assert_measured_the_busy_loop(info["cpu_seconds"])
    record = read_run_dir(logdir)  # rewritten by the atexit stop
    assert record["final"]["status"] == "finished" and record["end_time"] is not None
    assert client.get_run(info["run_id"])["status"] == "finished"


def test_the_seed_api_raises_when_the_exporter_is_gone_or_forgot_the_run(
    start_exporter: Callable[..., ExporterProcess],
    exporter: ExporterProcess,
    exporter_flags: list[str],
    client: ExporterClient,
    tmp_path: Path,
) -> None:
    tracker = ImpactTracker(tmp_path / "logs", client=client)
    tracker.launch_impact_monitor()
    try:
        assert tracker.get_latest_info_and_check_for_errors()["status"] == "active"
        exporter.stop()
        with pytest.raises(ExporterUnavailable, match="start impact-exporter"):
            tracker.get_latest_info_and_check_for_errors()
        start_exporter(*exporter_flags[:-2], f"--state-dir={tmp_path / 'other-state'}", exporter_flags[-1])
        with pytest.raises(UnknownRun) as raised:
            tracker.get_latest_info_and_check_for_errors()
        assert f"no run '{tracker.run.run_id}' on this exporter" in str(raised.value)
        assert "restarted with another --state-dir" in str(raised.value)
    finally:
        tracker.stop()


def test_the_seed_tracker_says_whether_it_launched_and_gives_its_initial_info(
    client: ExporterClient, tmp_path: Path
) -> None:
    tracker = ImpactTracker(tmp_path / "logs", client=client)
    assert not tracker.launched
    before = tracker.initial_info["experiment_start"]
    tracker.launch_impact_monitor()
    try:
        assert tracker.launched and tracker.run is not None and tracker.run.tracked
        info = tracker.initial_info
        assert info["experiment_start"] == datetime.fromtimestamp(tracker.run.start_time) >= before
        assert info["cpu_info"]["usable_cpus"] == len(os.sched_getaffinity(0))
        assert info["cpu_info"]["brand_raw"] == read_run_dir(tmp_path / "logs")["hardware"]["cpu"]["brand_raw"]
        assert "gpu_info" not in info, "this machine has no GPU, and the original left the key out then"
        assert info["experiment_impact_tracker_version"] == experiment_impact_tracker.__version__
    finally:
        tracker.stop()
    assert tracker.launched


def test_the_seed_api_raises_when_a_source_goes_down(
    exporter: ExporterProcess, client: ExporterClient, powercap: FakePowercap, tmp_path: Path
) -> None:
    tracker = ImpactTracker(tmp_path / "logs", client=client)
    tracker.launch_impact_monitor()
    try:
        tracker.get_latest_info_and_check_for_errors()
        (powercap.zone_dir(PACKAGE).resolve() / "energy_uj").unlink()
        wait_for(lambda: not client.get_run(tracker.run.run_id)["sources_up"]["rapl"], 10, "rapl to go down")
        with pytest.raises(RunUnhealthy, match=r"source\(s\) down: rapl \(\d+ errors\)"):
            tracker.get_latest_info_and_check_for_errors()
    finally:
        tracker.stop()


def test_api_errors_reach_the_caller_with_the_api_s_message(client: ExporterClient, env: dict[str, str]) -> None:
    with pytest.raises(ExporterError) as raised:
        client.start_run("x", labels={"job": "1"})
    assert raised.value.status == 400
    assert "label name 'job' is reserved" in raised.value.message
    with pytest.raises(ExporterError) as raised:
        client.get_run("no-such-run")
    assert (raised.value.status, raised.value.message) == (404, "no run 'no-such-run' on this exporter")

    strict = python(
        """
        from experiment_impact_tracker import track_run, ExporterError
        try:
            with track_run("x", labels={"job": "1"}, strict=True):
                print("entered")
        except ExporterError as error:
            print(error.status)
    """,
        env=env,
    )
    assert strict.stdout == "400\n"


def test_tcp_needs_the_token_and_registers_the_calling_pid(
    start_exporter: Callable[..., ExporterProcess], powercap: FakePowercap, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    exporter = start_exporter(
        f"--path.sysfs={powercap.sysfs}",
        f"--api.token-file={token_file}",
        f"--state-dir={tmp_path / 'state'}",
        "--no-api.socket",
    )
    address = f"http://{exporter.address}"
    client = ExporterClient(address, token="s3cret")
    run = client.start_run("remote", labels={"node": "n1"})
    assert run["pids"] == [os.getpid()]
    assert client.stop_run(run["run_id"])["status"] == "finished"
    assert client.stop_run(run["run_id"])["end_time"] == client.get_run(run["run_id"])["end_time"]  # idempotent

    with pytest.raises(ExporterError) as raised:
        ExporterClient(address, token="wrong").list_runs()
    assert raised.value.status == 401
    assert str(raised.value).endswith(
        "set IMPACT_EXPORTER_TOKEN to the exporter's API token (the content of its --api.token-file)"
    )
