"""deploy/systemd: systemd accepts the unit, and it starts the exporter with flags the exporter accepts, as an
unprivileged user without capabilities and with a run socket its group may use; the tmpfiles rule makes RAPL
readable by the unit's RAPL group and no one else, and the udev rule applies it again when the driver loads."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from impact_exporter.connections import DESCRIPTOR_RESERVE
from tests.deploy.manifests import DEPLOY, dockerfile_arg_default, exporter_flags
from tests.deploy.rapl_access import counters, rapl_check_as
from tests.servers import require_binary

UNIT = DEPLOY / "systemd" / "impact-exporter.service"
RAPL_TMPFILES = DEPLOY / "systemd" / "impact-exporter-rapl.conf"
RAPL_UDEV_RULE = DEPLOY / "systemd" / "90-impact-exporter-rapl.rules"
INSTALLED_BINARY = "/usr/local/bin/impact-exporter"
RAPL_GROUP = "impact-rapl"
EXPORTER_UID = 61877  # any unprivileged uid: the unit's is dynamic


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
    assert SERVICE["SupplementaryGroups"][0].split() == [flags.socket_group, RAPL_GROUP], (
        "it may give the socket only to its own group, and reads RAPL through the other"
    )
    assert flags.settings.state_dir == Path("/var/lib") / SERVICE["StateDirectory"][0]


def test_it_runs_unprivileged_without_any_capability() -> None:
    """No CAP_DAC_READ_SEARCH (it reads every file, /etc/shadow included) and no CAP_SYS_PTRACE (it opens a root
    process's memory): RAPL comes through a group, a run's memory is RSS, which anyone may read."""
    assert SERVICE["DynamicUser"] == ["yes"]
    assert "User" not in SERVICE
    assert SERVICE["CapabilityBoundingSet"] == [""], "an empty bounding set: no capability, ever"
    assert "AmbientCapabilities" not in SERVICE
    assert SERVICE["NoNewPrivileges"] == ["yes"]
    assert exporter_flags(exec_start()[1:]).settings.memory == "rss"


def tmpfiles_lines() -> list[list[str]]:
    return [line.split() for line in RAPL_TMPFILES.read_text().splitlines() if line and not line.startswith("#")]


def test_the_tmpfiles_rule_gives_rapl_to_the_units_group_read_only() -> None:
    lines = tmpfiles_lines()
    assert [line[1] for line in lines] == [
        "/sys/class/powercap/intel-rapl:*/energy_uj",
        "/sys/class/powercap/intel-rapl:*:*/energy_uj",
    ]
    rules = {(kind, mode, user, group) for kind, _, mode, user, group, *_ in lines}
    assert rules == {("z", "0440", "root", RAPL_GROUP)}
    assert RAPL_GROUP in SERVICE["SupplementaryGroups"][0].split()


def test_the_tmpfiles_rule_makes_root_only_counters_readable_by_the_group_alone(node_root: Path) -> None:
    """systemd-tmpfiles applies the shipped file to a machine root whose RAPL counters are 0400 root: the
    exporter's reader, as a user without capabilities, fails before and succeeds after only if in the group."""
    tmpfiles = require_binary("systemd-tmpfiles", "apt-get install systemd")
    gid = int(dockerfile_arg_default("IMPACT_RAPL_GID"))
    (node_root / "etc").mkdir()
    (node_root / "etc" / "group").write_text(f"root:x:0:\n{RAPL_GROUP}:x:{gid}:\n")
    (node_root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    sysfs = node_root / "sys"
    assert "permission denied" in rapl_check_as(sysfs, EXPORTER_UID, EXPORTER_UID, [gid])

    result = subprocess.run(
        [tmpfiles, f"--root={node_root}", "--create", str(RAPL_TMPFILES)], capture_output=True, text=True, timeout=30
    )
    assert (result.returncode, result.stderr) == (0, "")

    for counter in counters(sysfs):
        assert (oct(counter.stat().st_mode & 0o777), counter.stat().st_uid, counter.stat().st_gid) == ("0o440", 0, gid)
    assert rapl_check_as(sysfs, EXPORTER_UID, EXPORTER_UID, [gid]) == "readable"
    assert "permission denied" in rapl_check_as(sysfs, EXPORTER_UID, EXPORTER_UID, [])


def test_the_udev_rule_applies_the_installed_tmpfiles_rule_when_a_rapl_zone_appears() -> None:
    (rule,) = [line for line in RAPL_UDEV_RULE.read_text().splitlines() if line and not line.startswith("#")]
    keys = dict(re.findall(r'(\w+(?:\+)?)(?:==|\+?=)"([^"]*)"', rule))
    assert keys["ACTION"] == "add" and keys["SUBSYSTEM"] == "powercap" and keys["KERNEL"] == "intel-rapl:*"
    assert keys["RUN+"] == f"/usr/bin/systemd-tmpfiles --create /etc/tmpfiles.d/{RAPL_TMPFILES.name}"
    assert RAPL_UDEV_RULE.name in UNIT.read_text() and RAPL_TMPFILES.name in UNIT.read_text(), "install steps"


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
