"""Pod and container of a run's process, from cgroup files as the kubelet and container runtimes write them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from impact_exporter.collector import ImpactCollector
from impact_exporter.host import HostInfo
from impact_exporter.kubernetes import kubernetes_labels
from impact_exporter.run import StartRequest
from impact_exporter.runs import RunRegistry
from impact_exporter.sampler import Snapshot
from impact_exporter.store import RunStore
from tests.fakes.procfs import FakeProc

POD_UID = "8f3c1d2e-4b5a-4c6d-9e8f-0a1b2c3d4e5f"
CONTAINER = "3b8e6fbc1c0f4f6fa0b3c2f1e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0"
CGROUP_V2_CONTAINERD = (
    "0::/kubepods.slice/kubepods-burstable.slice/"
    f"kubepods-burstable-pod{POD_UID.replace('-', '_')}.slice/cri-containerd-{CONTAINER}.scope\n"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (CGROUP_V2_CONTAINERD, {"pod_uid": POD_UID, "container_id": f"containerd://{CONTAINER}"}),
        (  # cgroup v1, cgroupfs driver: no runtime in the path
            f"12:pids:/kubepods/besteffort/pod{POD_UID}/{CONTAINER}\n"
            f"11:memory:/kubepods/besteffort/pod{POD_UID}/{CONTAINER}\n1:name=systemd:/init.scope\n",
            {"pod_uid": POD_UID, "container_id": CONTAINER},
        ),
        (
            f"0::/kubepods.slice/kubepods-pod{POD_UID.replace('-', '_')}.slice/docker-{CONTAINER}.scope\n",
            {"pod_uid": POD_UID, "container_id": f"docker://{CONTAINER}"},
        ),
        (
            f"0::/kubepods.slice/kubepods-pod{POD_UID.replace('-', '_')}.slice/crio-{CONTAINER}.scope\n",
            {"pod_uid": POD_UID, "container_id": f"cri-o://{CONTAINER}"},
        ),
        (  # seen from the exporter's own cgroup namespace: relative to it
            f"0::/../../kubepods-besteffort-pod{POD_UID.replace('-', '_')}.slice/cri-containerd-{CONTAINER}.scope\n",
            {"pod_uid": POD_UID, "container_id": f"containerd://{CONTAINER}"},
        ),
        (  # the pod's sandbox cgroup itself: a pod but no container
            f"0::/kubepods.slice/kubepods-pod{POD_UID.replace('-', '_')}.slice\n",
            {"pod_uid": POD_UID},
        ),
        ("0::/user.slice/user-1000.slice/session-3.scope\n", {}),
        (  # a user's delegated cgroup named like a pod's: not in the kubelet's hierarchy, so no pod
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/kubepods.slice/"
            f"kubepods-burstable-pod{POD_UID.replace('-', '_')}.slice/cri-containerd-{CONTAINER}.scope\n",
            {},
        ),
        (f"12:pids:/user.slice/kubepods/besteffort/pod{POD_UID}/{CONTAINER}\n", {}),
        (f"0::/../../user.slice/kubepods-besteffort-pod{POD_UID.replace('-', '_')}.slice\n", {}),
        (f"0::/system.slice/docker-{CONTAINER}.scope\n", {}),  # plain Docker: not Kubernetes
        ("", {}),
    ],
)
def test_pod_and_container_come_from_the_cgroup_path(text: str, expected: dict[str, str]) -> None:
    assert kubernetes_labels(text) == expected


def test_a_run_in_a_pod_carries_pod_and_container_on_its_info_and_keeps_them_across_restarts(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path / "proc")
    proc.spawn(4242, 1, start=100, uid=0, cgroup=CGROUP_V2_CONTAINERD.strip())
    proc.spawn(4343, 1, start=100, uid=0)
    store_path = tmp_path / "state" / "runs.sqlite"
    registry = RunRegistry(proc.procfs(), RunStore(store_path))
    in_pod, _ = registry.start(StartRequest("train", run_id="in-pod", pid=4242), 0, None)
    on_host, _ = registry.start(StartRequest("train", run_id="on-host", pid=4343), 0, None)
    assert in_pod.placement == {"pod_uid": POD_UID, "container_id": f"containerd://{CONTAINER}"}
    assert on_host.placement == {}

    registry.close()
    resumed = RunRegistry(proc.procfs(), RunStore(store_path))
    collector = CollectorRegistry()
    collector.register(
        ImpactCollector(lambda: Snapshot(), HostInfo("node", "cpu", "vendor", 2, "6.1"), "0", runs=resumed.runs)
    )
    info = {"experiment": "train", "set": "", "user": "root"}
    assert (
        collector.get_sample_value(
            "impact_run_info",
            {**info, "run_id": "in-pod", "pod_uid": POD_UID, "container_id": f"containerd://{CONTAINER}"},
        )
        == 1.0
    )
    assert collector.get_sample_value("impact_run_info", {**info, "run_id": "on-host"}) == 1.0


def test_a_store_from_before_placement_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    old_schema = (
        RunStore.SCHEMA.replace(",\n            placement TEXT NOT NULL DEFAULT '{}'", "")
        .replace(",\n            cgroup TEXT", "")
        .replace(",\n            cgroup_populated INTEGER NOT NULL DEFAULT 0", "")
        .replace(",\n            work_units TEXT NOT NULL DEFAULT '{}'", "")
    )
    assert "placement" not in old_schema and "cgroup" not in old_schema and "work_units" not in old_schema
    with sqlite3.connect(path) as db:
        db.execute(old_schema)
        db.execute(
            "INSERT INTO runs VALUES ('old', 'e', '', '{}', 0, 'root', '[[1, 2]]', 10.0, 20.0, '{\"cpu\": 5.0}', "
            "1.0, 20.0, 0.0)"
        )
    [run] = RunStore(path).load()
    assert (run.run_id, run.placement, run.energy_joules, run.cgroup) == ("old", {}, {"cpu": 5.0}, None)
    assert not run.cgroup_populated and run.work_units == {}
