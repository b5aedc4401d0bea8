"""The socket directory mounted read-only, as training pods mount it (deploy/kubernetes/example-training-pod.yaml):
connect(2) to the exporter's socket works through it, and not even root can replace or remove the socket."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.servers import IN_CI, ExporterProcess, require_binary

# Runs in the mount namespace that has the read-only view: one API call through the socket, then the two ways a
# pod would take the socket over.
CLIENT = textwrap.dedent(
    """
    import errno, json, os, socket, sys
    path = sys.argv[1]
    with socket.socket(socket.AF_UNIX) as connection:
        connection.connect(path)
        connection.sendall(b"GET /api/v1/runs HTTP/1.1\\r\\nHost: exporter\\r\\nConnection: close\\r\\n\\r\\n")
        status = connection.makefile("rb").readline().split()[1].decode()
    def refusal(action):
        try:
            action()
        except OSError as error:
            return errno.errorcode[error.errno]
        return "done"
    removed = refusal(lambda: os.unlink(path))
    replaced = refusal(lambda: socket.socket(socket.AF_UNIX).bind(path + ".new"))
    print(json.dumps({"uid": os.getuid(), "status": status, "unlink": removed, "bind": replaced}))
    """
)


def test_a_read_only_mount_of_the_socket_directory_still_connects_and_keeps_the_socket_safe(
    start_exporter: Callable[..., ExporterProcess], node_exporter_powercap: Path
) -> None:
    unshare = require_binary("unshare", "apt-get install util-linux")
    exporter = start_exporter(f"--path.sysfs={node_exporter_powercap}")
    directory = exporter.socket_path.parent
    pod_view = Path(tempfile.mkdtemp(prefix="iet-pod-"))
    script = (
        f"mount --bind {directory} {pod_view} && mount -o remount,bind,ro {pod_view} && "
        f"exec {sys.executable} -c '{CLIENT}' {pod_view / exporter.socket_path.name}"
    )
    result = subprocess.run([unshare, "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=30)
    pod_view.rmdir()
    if result.returncode != 0 and "permission denied" in result.stderr.lower():
        message = f"this machine does not allow bind mounts: {result.stderr.strip()}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"uid": 0, "status": "200", "unlink": "EROFS", "bind": "EROFS"}
    assert exporter.socket_path.is_socket()
