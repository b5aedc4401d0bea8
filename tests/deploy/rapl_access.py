"""What the RAPL access tests share: a powercap tree with root-only counters, as current kernels make them, and
a check, from a child process that switched to an unprivileged user, of whether the exporter's RAPL reader can
read them."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from impact_exporter.sources.rapl import RaplSource
from tests.fakes.powercap import FakePowercap
from tests.users import as_uid

ZONES = {"intel-rapl:0": "package-0", "intel-rapl:0:0": "dram"}


def make_node_root() -> Path:
    """A machine's root with ``sys`` holding a package and a DRAM zone whose energy_uj is root-only (0400), in
    a directory every user may traverse (pytest's own are root-only). The caller removes it."""
    root = Path(tempfile.mkdtemp(prefix="iet-node-"))
    root.chmod(0o755)
    powercap = FakePowercap(root / "sys")
    for dirname, name in ZONES.items():
        powercap.add_zone(dirname, name, energy_uj=1_000_000)
        (powercap.zone_dir(dirname) / "energy_uj").chmod(0o400)
    return root


def counters(sysfs: Path) -> list[Path]:
    """The energy_uj files of the tree's zones, resolved."""
    return [(sysfs / "class" / "powercap" / dirname / "energy_uj").resolve() for dirname in ZONES]


def rapl_check_as(sysfs: Path, uid: int, gid: int, groups: Sequence[int]) -> str:
    """ "readable", or the error of RaplSource's start-up check, in a child running as ``uid``/``gid`` with only
    ``groups`` as supplementary groups and no capability."""

    def check() -> str:
        try:
            RaplSource(sysfs).check_readable()
        except Exception as error:  # noqa: BLE001 (the answer is the message, whatever the error)
            return f"{type(error).__name__}: {error}"
        return "readable"

    return as_uid(uid, gid, check, groups)
