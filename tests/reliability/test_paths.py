"""The socket and the store in places other users can reach: directories another user owns or may write to are
refused at start-up (exit 78, the flag named), the store never follows a link nor opens another user's file, its
files are 0600 under any umask, and the socket appears at its path already with its final mode and group.

Other users are uids without accounts: the attacker makes her socket directory in /tmp herself (a process of
hers); other directories and files are hers by ``chown``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import grp
import os
import sqlite3
import stat
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from experiment_impact_tracker.client import ExporterClient
from impact_exporter.cli import EXIT_UNSAFE_PATH
from tests.fakes.powercap import FakePowercap
from tests.servers import ExporterProcess, refused_start, short_socket_path

pytestmark = pytest.mark.integration

ATTACKER = 40051  # a uid and gid with no account
NOGROUP = 65534
IN_CREATE, IN_MOVED_TO = 0x100, 0x80


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    powercap = FakePowercap(tmp_path / "sys")
    powercap.add_zone("intel-rapl:0", "package-0", energy_uj=1_000_000)
    return powercap.sysfs


@pytest.fixture
def root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to own files as another user")


def start_up(sysfs: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """An exporter start that is expected to be refused (it would otherwise run until the timeout)."""
    return refused_start(f"--path.sysfs={sysfs}", "--web.listen-address=127.0.0.1:0", *args, timeout=30)


def assert_refused(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == EXIT_UNSAFE_PATH, result.stderr
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in result.stderr


@pytest.mark.parametrize("danger", ["owned by the attacker", "writable by everyone"])
def test_a_socket_directory_others_could_change_is_refused(
    sysfs: Path, tmp_path: Path, root_only: None, danger: str
) -> None:
    directory = short_socket_path().parent
    if danger == "owned by the attacker":  # she made it first, in /tmp where anyone may
        directory.rmdir()
        subprocess.run(["mkdir", "-m", "0755", str(directory)], user=ATTACKER, group=ATTACKER, check=True)
        expected = (f"{directory} is owned by uid {ATTACKER}", "--api.socket")
    else:
        directory.chmod(0o777)
        expected = (f"{directory} is writable by other users (mode 0777)", f"chmod go-w {directory}", "--api.socket")
    result = start_up(sysfs, f"--api.socket={directory / 'api.sock'}", f"--state-dir={tmp_path / 'state'}")
    assert_refused(result, *expected)
    assert not (directory / "api.sock").exists()


@pytest.mark.parametrize("danger", ["owned by the attacker", "writable by everyone", "under a writable parent"])
def test_a_state_directory_others_could_change_is_refused(
    sysfs: Path, tmp_path: Path, root_only: None, danger: str
) -> None:
    state = tmp_path / "shared" / "state"
    state.mkdir(parents=True)
    if danger == "owned by the attacker":
        os.chown(state, ATTACKER, ATTACKER)
        expected = f"{state} is owned by uid {ATTACKER}"
    elif danger == "writable by everyone":
        state.chmod(0o1777)  # the sticky bit does not help: others could still plant the store's files
        expected = f"{state} is writable by other users (mode 1777)"
    else:
        state.parent.chmod(0o777)  # anyone could rename the state directory away and put their own there
        expected = f"{state.parent} is writable by other users (mode 0777)"
    result = start_up(sysfs, "--no-api.socket", f"--state-dir={state}")
    assert_refused(result, expected, "--state-dir")
    assert not (state / "runs.sqlite").exists()


@pytest.mark.parametrize("name", ["runs.sqlite", "runs.sqlite-wal", "runs.sqlite-shm"])
def test_a_store_file_that_is_a_link_is_refused_and_its_target_untouched(
    sysfs: Path, tmp_path: Path, name: str
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    target = tmp_path / "elsewhere"
    target.write_text("root's file\n")
    (state / name).symlink_to(target)
    result = start_up(sysfs, "--no-api.socket", f"--state-dir={state}")
    assert_refused(result, f"{state / name} is a symbolic link", "remove it")
    assert target.read_text() == "root's file\n"
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("elsewhere")) == ["elsewhere"]


def test_a_store_of_another_user_is_refused_as_forged(sysfs: Path, tmp_path: Path, root_only: None) -> None:
    state = tmp_path / "state"
    state.mkdir()
    sqlite3.connect(state / "runs.sqlite").close()
    os.chown(state / "runs.sqlite", ATTACKER, ATTACKER)
    result = start_up(sysfs, "--no-api.socket", f"--state-dir={state}")
    assert_refused(result, f"{state / 'runs.sqlite'} belongs to uid {ATTACKER}", "forged")


class DirectoryEvents:
    """Names created in, and renamed into, a directory, as inotify reports them."""

    def __init__(self, directory: Path) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK)
        assert self._fd >= 0, os.strerror(ctypes.get_errno())
        assert self._libc.inotify_add_watch(self._fd, str(directory).encode(), IN_CREATE | IN_MOVED_TO) >= 0

    def read(self) -> list[tuple[str, int]]:
        """(name, mask) of every event since the watch began."""
        events, data = [], b""
        while True:
            try:
                data += os.read(self._fd, 65536)
            except BlockingIOError:
                break
        while data:
            _, mask, _, length = struct.unpack_from("iIII", data)
            name = data[16 : 16 + length].rstrip(b"\0").decode()
            events.append((name, mask))
            data = data[16 + length :]
        return events

    def close(self) -> None:
        os.close(self._fd)


@pytest.fixture
def umask_000() -> Iterator[None]:
    """The test process (and the exporter it starts) with umask 000, as a careless root shell might have."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def test_under_umask_000_the_store_is_0600_and_the_socket_is_renamed_into_place_0660_with_its_group(
    sysfs: Path, tmp_path: Path, root_only: None, umask_000: None
) -> None:
    socket_path = short_socket_path()
    events = DirectoryEvents(socket_path.parent)
    state = tmp_path / "state"
    sleeper = subprocess.Popen(["sleep", "60"])
    flags = [
        f"--path.sysfs={sysfs}",
        f"--api.socket={socket_path}",
        f"--state-dir={state}",
        "--api.socket-group=nogroup",
    ]
    exporter = ExporterProcess(tmp_path, flags)
    try:
        ExporterClient(f"unix://{socket_path}").start_run("paths", pid=sleeper.pid)
        socket_status = socket_path.lstat()
        assert stat.S_ISSOCK(socket_status.st_mode)
        assert (stat.S_IMODE(socket_status.st_mode), socket_status.st_uid) == (0o660, 0)
        assert grp.getgrgid(socket_status.st_gid).gr_gid == NOGROUP
        seen = events.read()
        assert ("api.sock", IN_MOVED_TO) in seen
        assert ("api.sock", IN_CREATE) not in seen  # it never existed at its path with the mode bind gave it
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in state.iterdir()}
        assert modes == {"runs.sqlite": 0o600, "runs.sqlite-wal": 0o600, "runs.sqlite-shm": 0o600}
        assert stat.S_IMODE(state.stat().st_mode) == 0o755
    finally:
        events.close()
        exporter.stop()
        sleeper.kill()
        sleeper.wait()


def test_a_store_left_0644_by_an_earlier_start_is_made_0600(sysfs: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    sqlite3.connect(state / "runs.sqlite").close()
    (state / "runs.sqlite").chmod(0o644)
    exporter = ExporterProcess(tmp_path, [f"--path.sysfs={sysfs}", f"--state-dir={state}"])
    exporter.stop()
    assert stat.S_IMODE((state / "runs.sqlite").stat().st_mode) == 0o600
