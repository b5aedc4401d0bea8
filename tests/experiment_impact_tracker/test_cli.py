"""``impact-run`` without an exporter: exit statuses, signals, usage errors. With one: test_with_exporter.py."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest

from experiment_impact_tracker.cli import EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EXIT_TRACKING_FAILED, exit_status
from tests.servers import REPO_ROOT, wait_for

IMPACT_RUN = [sys.executable, "-m", "experiment_impact_tracker"]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """No exporter, and standalone measurement off (IMPACT_STANDALONE=0): every run here is untracked (and says so
    in one warning line). tests/experiment_impact_tracker/test_standalone.py measures without an exporter."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("IMPACT_")}
    return {**environment, "IMPACT_EXPORTER": f"unix://{tmp_path}/no-exporter.sock", "IMPACT_STANDALONE": "0"}


def impact_run(
    *args: str, env: dict[str, str], timeout: float = 60, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*IMPACT_RUN, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT, **kwargs
    )


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_help_documents_usage_exit_statuses_and_environment(env: dict[str, str]) -> None:
    result = impact_run("--help", env=env)
    assert result.returncode == 0
    assert "usage: impact-run --experiment NAME [options] -- CMD [ARG ...]" in result.stdout
    for text in [
        "--experiment",
        "--set",
        "--label KEY=VALUE",
        "--run-id",
        "--logdir",
        "--strict",
        "--exporter",
        "128+N",
        "125  --strict",
        "126  the command was found but cannot be executed",
        "127  the command was not found",
        "IMPACT_EXPORTER_TOKEN",
        "IMPACT_RUN_ID",
        "PROMETHEUS_URL",
    ]:
        assert text in result.stdout, text


@pytest.mark.parametrize("code", [0, 7, 255])
def test_the_command_exit_status_is_passed_through(env: dict[str, str], code: int) -> None:
    result = impact_run("--experiment", "x", "--", *python(f"import sys; sys.exit({code})"), env=env)
    assert result.returncode == code
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("impact-run: warning: not tracking 'x': cannot reach")


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSEGV, signal.SIGTERM])
def test_a_command_killed_by_signal_n_exits_128_plus_n(env: dict[str, str], signum: int) -> None:
    result = impact_run("--experiment", "x", "--", *python(f"import os; os.kill(os.getpid(), {int(signum)})"), env=env)
    assert result.returncode == 128 + signum


def test_exit_status_mirrors_a_shell() -> None:
    assert exit_status(3 << 8) == 3
    assert exit_status(signal.SIGINT) == 130


def test_stdin_and_stdout_are_the_command_s(env: dict[str, str]) -> None:
    result = impact_run("--experiment", "x", "--", "tr", "a-z", "A-Z", input="hello\n", env=env)
    assert (result.returncode, result.stdout) == (0, "HELLO\n")


HANDLER = """
    import os, signal, sys, time
    out = sys.argv[1]
    def handle(signum, frame):
        with open(out, "a") as f:
            f.write(signal.Signals(signum).name + "\\n")
        if not os.environ.get("KEEP_GOING"):
            sys.exit(0)
    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2"):
        signal.signal(getattr(signal, name), handle)
    open(out + ".ready", "w").close()
    deadline = time.monotonic() + float(os.environ.get("WAIT", "30"))
    while time.monotonic() < deadline:
        time.sleep(0.05)
    sys.exit(3)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2])
def test_signals_sent_to_impact_run_are_forwarded_to_the_command(
    env: dict[str, str], tmp_path: Path, signum: signal.Signals
) -> None:
    out = tmp_path / "signals"
    process = subprocess.Popen(
        [*IMPACT_RUN, "--experiment", "x", "--", *python(HANDLER), str(out)],
        env=env,
        cwd=REPO_ROOT,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: Path(f"{out}.ready").exists(), 30, "the command to install its handlers")
        process.send_signal(signum)
        assert process.wait(timeout=20) == 0, "the command did not exit through its handler"
    finally:
        process.kill()
        process.wait()
    assert out.read_text() == f"{signum.name}\n"


def test_ctrl_c_at_a_terminal_reaches_the_command_once(env: dict[str, str], tmp_path: Path) -> None:
    """The terminal signals the whole foreground process group; forwarding it too would interrupt twice."""
    out = tmp_path / "signals"
    primary, secondary = os.openpty()

    def take_the_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = subprocess.Popen(
        [*IMPACT_RUN, "--experiment", "x", "--", *python(HANDLER), str(out)],
        env={**env, "KEEP_GOING": "1", "WAIT": "1.5"},
        cwd=REPO_ROOT,
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        start_new_session=True,
        preexec_fn=take_the_terminal,
    )
    os.close(secondary)
    try:
        wait_for(lambda: Path(f"{out}.ready").exists(), 30, "the command to install its handlers")
        os.write(primary, b"\x03")  # Ctrl-C
        assert process.wait(timeout=20) == 3
    finally:
        process.kill()
        process.wait()
        os.close(primary)
    assert out.read_text() == "SIGINT\n"


def test_command_not_found_exits_127(env: dict[str, str], tmp_path: Path) -> None:
    result = impact_run("--experiment", "x", "--", "no-such-command-xyz", "--flag", env=env)
    assert result.returncode == EXIT_NOT_FOUND == 127
    assert result.stderr == "impact-run: no-such-command-xyz: command not found\n"
    result = impact_run("--experiment", "x", "--", str(tmp_path / "missing.sh"), env=env)
    assert result.returncode == 127
    assert result.stderr == f"impact-run: {tmp_path}/missing.sh: No such file or directory\n"


def test_a_command_that_cannot_be_executed_exits_126(env: dict[str, str], tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o644)
    result = impact_run("--experiment", "x", "--", str(script), env=env)
    assert result.returncode == EXIT_CANNOT_EXECUTE == 126
    assert result.stderr == f"impact-run: {script}: Permission denied\n"
    assert "ran" not in result.stdout


def test_a_file_the_kernel_cannot_execute_exits_126_after_the_exec_fails(env: dict[str, str], tmp_path: Path) -> None:
    binary = tmp_path / "job"
    binary.write_bytes(b"\x7fELF\x00garbage")
    binary.chmod(0o755)
    result = impact_run("--experiment", "x", "--", str(binary), env=env)
    assert result.returncode == 126
    assert result.stderr.splitlines()[-1] == f"impact-run: {binary}: Exec format error"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--experiment", "x"], "no command given: put it after --"),
        (["--experiment", "x", "--"], "no command given"),
        (["--", "true"], "the following arguments are required: --experiment"),
        (["--experiment", "x", "--label", "seed", "--", "true"], "argument --label: 'seed' is not KEY=VALUE"),
        (["--experiment", "x", "--label", "=0", "--", "true"], "argument --label: '=0' is not KEY=VALUE"),
        (["--experiment", "x", "--label", "a=1", "--label", "a=2", "--", "true"], "--label a given more than once"),
        (["--experiment", "x", "--exporter", "node1:9877", "--", "true"], "--exporter: bad impact-exporter address"),
    ],
)
def test_bad_usage_exits_2_without_running_anything(env: dict[str, str], args: list[str], message: str) -> None:
    result = impact_run(*args, env=env)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_strict_without_an_exporter_exits_125_and_does_not_run_the_command(env: dict[str, str], tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = impact_run("--experiment", "x", "--strict", "--", "touch", str(marker), env=env)
    assert result.returncode == EXIT_TRACKING_FAILED == 125
    assert result.stderr.startswith("impact-run: not running touch (--strict): cannot reach impact-exporter at unix://")
    assert not marker.exists()


def test_without_strict_the_command_runs_untracked_with_the_given_run_id(env: dict[str, str], tmp_path: Path) -> None:
    result = impact_run(
        "--experiment",
        "x",
        "--run-id",
        "job-7",
        "--logdir",
        str(tmp_path / "run"),
        "--",
        *python("import os; print(os.getpid(), os.environ.get('IMPACT_RUN_ID'))"),
        env=env,
    )
    assert result.returncode == 0
    pid, run_id = result.stdout.split()
    assert run_id == "job-7"
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["pid"] == int(pid), "run.json names impact-run's pid, not the command's"
    assert record["command"][-1] == "import os; print(os.getpid(), os.environ.get('IMPACT_RUN_ID'))"
    assert record["tracked"] is False and record["end_time"] >= record["start_time"]


def test_an_unwritable_logdir_exits_125_before_the_command_runs(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    marker = tmp_path / "ran"
    result = impact_run(
        "--experiment", "x", "--logdir", str(tmp_path / "file" / "run"), "--", "touch", str(marker), env=env
    )
    assert result.returncode == 125
    assert f"impact-run: cannot write {tmp_path}/file/run/run.json: Not a directory" in result.stderr
    assert not marker.exists()


def test_impact_run_exits_promptly_when_the_command_does(env: dict[str, str]) -> None:
    started = time.monotonic()
    impact_run("--experiment", "x", "--", "true", env=env)
    assert time.monotonic() - started < 5
