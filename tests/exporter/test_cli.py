"""The command line: flags, start-up errors a user can fix, exit codes, clean shutdown."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from impact_exporter.cli import GC_FIRST_GENERATION_THRESHOLD, main, parse_listen_address
from impact_exporter.sources import HardwareNotFound
from impact_exporter.sources.nvml import NvmlSource
from tests.fakes.powercap import FakePowercap
from tests.servers import REPO_ROOT, ExporterProcess, require_binary, wait_for


def run_exporter(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "impact_exporter", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT
    )


def test_help_explains_every_flag() -> None:
    result = run_exporter("--help")
    assert result.returncode == 0
    for flag in [
        "--web.listen-address",
        "--path.sysfs",
        "--path.procfs",
        "--sample-interval",
        "--cpu.source",
        "--cpu.tdp-watts",
        "--cpu.idle-fraction",
        "--api.socket",
        "--state-dir",
        "--gpu.source",
        "--gpu.devices",
        "--gpu.idle-watts",
        "--gpu.idle-attribution",
        "--log.level",
        "--web.config.file",
        "--collector.memory",
        "--web.max-connections",
        "--web.max-connections-per-client",
        "--web.idle-timeout",
        "--web.read-timeout",
        "--web.write-timeout",
    ]:
        assert flag in result.stdout


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--sample-interval=0", "--sample-interval=0.0: must be more than 0"),
        ("--sample-interval=-1", "must be more than 0"),
        ("--sample-interval=nan", "must be more than 0"),
        ("--sample-interval=abc", "invalid float value"),
        ("--web.listen-address=localhost", "expected [HOST]:PORT"),
        ("--web.listen-address=:99999", "expected [HOST]:PORT"),
        ("--log.level=loud", "invalid choice"),
        ("--web.max-connections=0", "--web.max-connections=0: must be at least 1"),
        ("--web.max-connections-per-client=-1", "--web.max-connections-per-client=-1: must be at least 1"),
        ("--web.read-timeout=0s", "--web.read-timeout=0s: must be more than 0"),
        ("--web.write-timeout=soon", "invalid duration 'soon'"),
    ],
)
def test_bad_flags_exit_2_with_a_message_and_no_traceback(flag: str, message: str) -> None:
    result = run_exporter(flag)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "value, expected",
    [(":9877", ("::", 9877)), ("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:9100", ("::1", 9100))],
)
def test_listen_address_forms(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(value) == expected


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_exporter(f"--web.listen-address=127.0.0.1:{port}", "--cpu.source=none")
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "--web.listen-address" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_procfs_names_the_flag(tmp_path: Path) -> None:
    result = run_exporter(f"--path.procfs={tmp_path / 'nowhere'}", "--cpu.source=none")
    assert result.returncode == 1
    assert "--path.procfs" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_rapl_auto_falls_back_to_the_estimate_and_says_so(
    tmp_path: Path, start_exporter: Callable[..., ExporterProcess]
) -> None:
    exporter = start_exporter(f"--path.sysfs={tmp_path}", "--cpu.tdp-watts=100")
    assert "no RAPL zones" in exporter.log()
    assert "CPU energy is ESTIMATED" in exporter.log()
    text = exporter.metrics_text()
    assert 'impact_source_up{source="procfs"} 1.0' in text
    assert 'impact_source_up{source="estimate"} 1.0' in text
    assert 'impact_estimated_package_joules_total{package="0"}' in text
    assert 'impact_energy_source_info{component="cpu",method="estimate"} 1.0' in text
    assert "impact_rapl_" not in text


def test_a_rapl_tree_that_becomes_readable_is_preferred_by_auto(
    tmp_path: Path, start_exporter: Callable[..., ExporterProcess]
) -> None:
    powercap = FakePowercap.amd(tmp_path / "sys")
    counter = powercap.zone_dir("intel-rapl:0").resolve() / "energy_uj"
    counter.rename(counter.with_name("saved"))
    counter.mkdir()  # unreadable, even for root
    broken = start_exporter(f"--path.sysfs={tmp_path / 'sys'}")
    assert "RAPL cannot be used" in broken.log()
    assert 'method="estimate"' in broken.metrics_text()
    broken.stop()

    counter.rmdir()
    counter.with_name("saved").rename(counter)
    text = start_exporter(f"--path.sysfs={tmp_path / 'sys'}").metrics_text()
    assert 'impact_energy_source_info{component="cpu",method="rapl"} 1.0' in text
    assert "impact_estimated_" not in text


def test_rapl_asked_for_but_absent_is_an_error(tmp_path: Path) -> None:
    result = run_exporter(f"--path.sysfs={tmp_path}", "--cpu.source=rapl")
    assert result.returncode == 1
    assert "no RAPL zones" in result.stderr
    assert "Traceback" not in result.stderr


def test_cpu_source_none_measures_no_energy(tmp_path: Path, start_exporter: Callable[..., ExporterProcess]) -> None:
    FakePowercap.amd(tmp_path / "sys")
    text = start_exporter(f"--path.sysfs={tmp_path / 'sys'}", "--cpu.source=none").metrics_text()
    assert "_package_joules_total" not in text
    assert 'source="rapl"' not in text and 'source="estimate"' not in text


def test_a_bad_tdp_is_a_clear_error(tmp_path: Path) -> None:
    result = run_exporter(f"--path.sysfs={tmp_path}", "--cpu.source=estimate", "--cpu.tdp-watts=-5")
    assert result.returncode == 1
    assert "--cpu.tdp-watts" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreadable_energy_counters_stop_start_up_with_the_fixes(tmp_path: Path) -> None:
    """energy_uj is root-only on current kernels; a non-root exporter must say how to fix that."""
    tmp_path = Path(tempfile.mkdtemp(prefix="impact-test-"))
    tmp_path.chmod(0o755)  # the unprivileged child must reach the zone directories, as in /sys
    powercap = FakePowercap.amd(tmp_path / "sys")
    for zone in ("intel-rapl:0", "intel-rapl:0:0"):
        (powercap.zone_dir(zone) / "energy_uj").chmod(0o400)
    log = tmp_path / "stderr"
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody when root, then run main() as a user would
        try:
            sys.stderr = open(log, "w", buffering=1)  # noqa: SIM115 (the child exits right after)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            code = main([f"--path.sysfs={tmp_path / 'sys'}", "--web.listen-address=127.0.0.1:0", "--cpu.source=rapl"])
        except BaseException:
            traceback.print_exc()
            code = 99
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    stderr = log.read_text()
    shutil.rmtree(tmp_path)
    assert os.waitstatus_to_exitcode(status) == 1, stderr
    for fix in ("root", "systemd", "chmod"):
        assert fix in stderr
    assert "Traceback" not in stderr


def test_sigterm_and_sigint_shut_down_cleanly(tmp_path: Path, start_exporter: Callable[..., ExporterProcess]) -> None:
    FakePowercap.amd(tmp_path / "sys")
    for sig in (signal.SIGTERM, signal.SIGINT):
        exporter = start_exporter(f"--path.sysfs={tmp_path / 'sys'}")
        assert requests.get(f"{exporter.url}/-/healthy", timeout=5).text == "Healthy\n"
        assert exporter.stop(sig) == 0
        assert "shutting down" in exporter.log()
        assert "Traceback" not in exporter.log()


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("impact-exporter")
    assert script.exists(), "pip install -e . creates the impact-exporter console script"
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0
    assert result.stdout.startswith("impact-exporter ")


def machine_has_nvidia_gpu() -> bool:
    try:
        NvmlSource().close()
    except HardwareNotFound:
        return False
    return True


def test_gpus_asked_for_without_a_driver_is_a_clear_error_and_auto_goes_on(
    tmp_path: Path, start_exporter: Callable[..., ExporterProcess]
) -> None:
    if machine_has_nvidia_gpu():
        pytest.skip("this machine has an NVIDIA GPU; tests/gpu covers it")
    result = run_exporter("--gpu.source=nvml", "--cpu.source=none")
    assert result.returncode == 1
    assert "no NVIDIA GPU" in result.stderr
    assert "Traceback" not in result.stderr
    text = start_exporter("--cpu.source=none").metrics_text()
    assert "impact_gpu_" not in text and 'source="nvml"' not in text


def test_a_negative_gpu_idle_power_is_a_usage_error() -> None:
    result = run_exporter("--gpu.idle-watts=-3")
    assert result.returncode == 2
    assert "--gpu.idle-watts" in result.stderr


def test_the_exporter_process_freezes_its_start_up_objects_and_collects_young_objects_less_often() -> None:
    script = (
        "import gc; from impact_exporter.cli import settle_garbage_collector as settle; settle(); "
        "print(gc.get_threshold()[0], gc.get_freeze_count() > 10_000)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert result.stdout.split() == [str(GC_FIRST_GENERATION_THRESHOLD), "True"]


@pytest.mark.parametrize("capabilities, warned", [("", False), ("--bounding-set=-sys_ptrace", True)])
def test_pss_without_cap_sys_ptrace_is_a_warning_that_names_the_fixes(
    tmp_path: Path, capabilities: str, warned: bool
) -> None:
    """The exporter as root, with and without CAP_SYS_PTRACE in its capability sets (setpriv drops it)."""
    setpriv = require_binary("setpriv", "apt-get install util-linux")
    prefix = [setpriv, "--inh-caps=-sys_ptrace", capabilities, "--"] if capabilities else []
    log = tmp_path / "exporter.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "impact_exporter", "--collector.memory=pss", "--cpu.source=none"]
            + ["--web.listen-address=127.0.0.1:0", "--no-api.socket", f"--state-dir={tmp_path / 'state'}"],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
    try:
        wait_for(lambda: "listening on" in log.read_text(), 30, "the exporter to listen")
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert ("without CAP_SYS_PTRACE" in log.read_text()) is warned
    if warned:
        assert "--collector.memory=rss" in log.read_text()
