"""Safe places for the exporter's socket and store: directories no other user can change, files no other user can
read or replace.

Another user who can write to the socket's directory can replace the socket with her own and read the requests
meant for the exporter; one who can write to the state directory can plant a symbolic link where the store goes
(and have the exporter create its files elsewhere) or a forged store that it would resume. So at start-up each
directory, and every directory above it, must belong to root or the exporter's user; the directory itself may
be writable by no one else, and one above it only with the sticky bit (as /tmp). The socket is made in a private
directory and renamed into place once its mode and group are right; the store's files are opened without
following links and kept at mode 0600.
"""

from __future__ import annotations

import errno
import os
import pwd
import socket
import stat
import tempfile
from pathlib import Path

STORE_MODE = 0o600
SOCKET_MODE = 0o660


class UnsafePath(Exception):
    """A directory or file another user could change; the message names the path, the danger and the fix."""


def owner_name(uid: int) -> str:
    """``uid 1001 (alice)``, or ``uid 1001`` for a uid without an account."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def check_directory(directory: Path, flag: str) -> None:
    """Create ``directory`` if it is missing (mode 0755) and can be, then raise UnsafePath unless it and every directory
    above it belong to root or this process's user, it is writable by no one else, and a directory above it is
    writable by others only with the sticky bit; a symbolic link on the way must belong to root or this user too."""
    directory = Path(os.path.abspath(directory))
    for link in symlinks_on(directory):
        owner = os.lstat(link).st_uid
        if owner not in (0, os.geteuid()):
            raise UnsafePath(
                f"{flag}: {link} is a symbolic link owned by {owner_name(owner)}, who could point it elsewhere; "
                f"use a path without it in {flag}"
            )
    try:
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError:
        return  # nothing can be put there: the store and the socket report their own error, naming their flag
    real = Path(os.path.realpath(directory))
    for path in (real, *real.parents):
        status = os.stat(path)
        if status.st_uid not in (0, os.geteuid()):
            raise UnsafePath(
                f"{flag}: {path} is owned by {owner_name(status.st_uid)}, not by root or the exporter's user "
                f"({owner_name(os.geteuid())}), so that user could replace what the exporter puts in {real}; "
                f"remove it or choose a directory of the exporter's own with {flag}"
            )
        writable_by_others = status.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if writable_by_others and (path == real or not status.st_mode & stat.S_ISVTX):
            raise UnsafePath(
                f"{flag}: {path} is writable by other users (mode {stat.S_IMODE(status.st_mode):04o}), who could "
                f"replace what the exporter puts in {real}; run 'chmod go-w {path}' or choose another directory "
                f"with {flag}"
            )


def symlinks_on(path: Path) -> list[Path]:
    """The symbolic links among ``path`` and the directories above it that exist."""
    links = []
    for candidate in (*reversed(path.parents), path):
        if candidate.is_symlink():
            links.append(candidate)
    return links


def bind_socket(listener: socket.socket, path: Path, group: int | None) -> None:
    """Bind ``listener`` at ``path`` with mode 0660 and ``group`` from the moment the path exists: it is bound in a
    private directory beside ``path``, given its mode and group there, and renamed into place (replacing a stale
    socket at once)."""
    private = Path(tempfile.mkdtemp(prefix=".", dir=path.parent))
    try:
        staged = private / "s"
        listener.bind(str(staged))
        os.chmod(staged, SOCKET_MODE)
        if group is not None:
            os.chown(staged, -1, group)
        os.rename(staged, path)
    finally:
        staged.unlink(missing_ok=True)
        private.rmdir()


def protect_store_files(database: Path) -> None:
    """Make sure the store's files are this user's regular files of mode 0600 before SQLite opens them: create the
    database that way if it is missing, tighten the mode of files left by an earlier start, and raise UnsafePath
    for a symbolic link or a file of another user. SQLite gives the files it creates next to the database (the
    write-ahead log, the shared-memory index) the database's mode. Other errors (an unwritable directory) are
    raised as they are."""
    for path in (database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")):
        create = os.O_CREAT if path == database else 0
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | create, STORE_MODE)
        except FileNotFoundError:
            continue
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise  # an unwritable directory, say: the store reports it, and new runs are refused
            raise UnsafePath(
                f"--state-dir: {path} is a symbolic link; the store's files must be the exporter's own: remove it"
            ) from None
        try:
            status = os.fstat(descriptor)
            if not stat.S_ISREG(status.st_mode):
                raise UnsafePath(f"--state-dir: {path} is not a regular file; remove it")
            if status.st_uid != os.geteuid():
                raise UnsafePath(
                    f"--state-dir: {path} belongs to {owner_name(status.st_uid)}, not the exporter's user "
                    f"({owner_name(os.geteuid())}): it may be forged; remove it"
                )
            if stat.S_IMODE(status.st_mode) != STORE_MODE:
                os.fchmod(descriptor, STORE_MODE)
        finally:
            os.close(descriptor)
