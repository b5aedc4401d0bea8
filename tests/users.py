"""Other users, for real: work done in a forked child of the (root) test that dropped to another uid and gid, so
the kernel (SO_PEERCRED, file permissions, ptrace checks) sees that user, exactly as in production."""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import pytest


def as_uid(
    uid: int,
    gid: int,
    work: Callable[[], Any],
    groups: Sequence[int] = (),
    enter: Callable[[], None] | None = None,
) -> Any:
    """What ``work()`` returns (anything JSON can carry), run in a child that switched to ``uid`` and ``gid`` with
    only ``groups`` as supplementary groups (and so no capability); a failure in the child fails the test with its
    traceback. ``enter`` runs in the child first, still as root (to move it into a cgroup, say)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            if enter is not None:
                enter()
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            os.write(write, json.dumps({"result": work()}).encode())
        except BaseException:
            os.write(write, json.dumps({"child failed": traceback.format_exc()}).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        answer = json.loads(pipe.read() or '{"child failed": "no answer"}')
    os.waitpid(pid, 0)
    if "child failed" in answer:
        pytest.fail(f"the child as uid {uid} failed:\n{answer['child failed']}")
    return answer["result"]
