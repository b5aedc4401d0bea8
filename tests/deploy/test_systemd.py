"""deploy/systemd/impact-exporter.service: systemd accepts it, and it starts the exporter with flags the exporter
accepts, as an unprivileged user with only the capabilities it needs and a run socket its group may use."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from impact_exporter.connections import DESCRIPTOR_RESERVE
from tests.deploy.manifests import DEPLOY, exporter_flags
from tests.servers import require_binary

UNIT = DEPLOY / "systemd" / "impact-exporter.service"
INSTALLED_BINARY = "/usr/local/bin/impact-exporter"


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value the unit gives it (keys such as DeviceAllow repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            sections[section] = {}
        else:
            key, _, value = line.partition("=")
            sections[section].setdefault(key, []).append(value)
    return sections


SERVICE = unit_settings(UNIT.read_text())["Service"]


def exec_start() -> list[str]:
    (command,) = SERVICE["ExecStart"]
    return shlex.split(command)


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    """Unknown or misspelt directives are only warnings to systemd, so any output fails the test."""
    analyze = require_binary("systemd-analyze", "apt-get install systemd")
    binary = shutil.which("impact-exporter", path=str(Path(sys.executable).parent))
    assert binary, "impact-exporter is not installed in this environment: pip install -e '.[exporter]'"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(f"ExecStart={INSTALLED_BINARY}", f"ExecStart={binary}"))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_it_starts_the_installed_exporter_with_flags_it_accepts() -> None:
    binary, *flags = exec_start()
    assert binary == INSTALLED_BINARY
    exporter_flags(flags)


def test_the_socket_lies_in_its_runtime_directory_and_belongs_to_the_group_of_users_who_mark_runs() -> None:
    flags = exporter_flags(exec_start()[1:])
    assert flags.settings.api_socket == Path("/run") / SERVICE["RuntimeDirectory"][0] / "api.sock"
    assert SERVICE["RuntimeDirectoryMode"] == ["0755"], "users must reach the socket in it"
    assert flags.socket_group is not None
    assert SERVICE["SupplementaryGroups"] == [flags.socket_group], "it may give the socket only to its own group"
    assert flags.settings.state_dir == Path("/var/lib") / SERVICE["StateDirectory"][0]


def test_it_runs_unprivileged_with_the_two_capabilities_it_needs() -> None:
    assert SERVICE["DynamicUser"] == ["yes"]
    assert "User" not in SERVICE
    needed = {"CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"}
    assert set(SERVICE["CapabilityBoundingSet"][0].split()) == needed
    assert set(SERVICE["AmbientCapabilities"][0].split()) == needed
    assert SERVICE["NoNewPrivileges"] == ["yes"]


@pytest.mark.parametrize(
    "key, forbidden",
    [("PrivateDevices", "yes"), ("ProtectProc", "invisible"), ("ProcSubset", "pid"), ("PrivateUsers", "yes")],
)
def test_hardening_keeps_the_gpus_and_every_process_in_sight(key: str, forbidden: str) -> None:
    assert forbidden not in SERVICE.get(key, [])


def test_nvml_may_open_the_gpus_behind_a_closed_device_policy() -> None:
    assert SERVICE["DevicePolicy"] == ["closed"]
    assert "char-nvidia-frontend rw" in SERVICE["DeviceAllow"]


def test_its_open_files_limit_holds_both_listeners_full_beside_the_samplers_descriptors() -> None:
    """Without LimitNOFILE, systemd's soft limit of 1,024 descriptors would bind before the connection caps. Half
    the limit is the procfs reader's, DESCRIPTOR_RESERVE the sampler's; what is left must hold both listeners
    full, twice over for the descriptors open at start-up."""
    limits = exporter_flags(exec_start()[1:]).settings.connection_limits
    limit = int(SERVICE["LimitNOFILE"][0])
    assert limit - limit // 2 - DESCRIPTOR_RESERVE >= 2 * (2 * limits.per_listener)
