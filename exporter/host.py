"""Static facts about the host, read once at start-up from the (possibly host-mounted) procfs."""

from __future__ import annotations

import platform
import socket
from dataclasses import dataclass
from pathlib import Path

from impact_exporter.sources.procfs import ProcFS


@dataclass(frozen=True)
class HostInfo:
    """Static facts about the host, exported as ``impact_host_info`` for the reporter."""

    hostname: str
    cpu_model: str
    cpu_vendor: str
    cpu_count: int
    kernel: str
    region: str = ""  # the grid region (exporter/cloud.py), "" when not given


def read_host_info(procfs_root: Path, region: str = "") -> HostInfo:
    """Hostname, CPU model and kernel as procfs shows them, so a container reports its host's hardware; ``region``
    as given (``--carbon.region``) or read from the cloud's metadata."""
    cpu = ProcFS(procfs_root).cpuinfo()
    return HostInfo(
        hostname=_read_first_line(procfs_root / "sys/kernel/hostname") or socket.gethostname(),
        cpu_model=cpu.model,
        cpu_vendor=cpu.vendor,
        cpu_count=cpu.logical_cpus,
        kernel=_read_first_line(procfs_root / "sys/kernel/osrelease") or platform.release(),
        region=region,
    )


def _read_first_line(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""
