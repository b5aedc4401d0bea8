"""Which Kubernetes pod and container a process runs in, read from its cgroup path (``/proc/<pid>/cgroup``).

The kubelet names a pod's cgroup after the pod's UID and each container's cgroup after the container's ID, so
the path alone identifies both; no API server access is needed. The container ID carries the runtime prefix
(``containerd://``) when the path shows the runtime, as kube-state-metrics' ``kube_pod_container_info`` does, so
the two join on ``container_id`` and pod and namespace names come from there.
"""

from __future__ import annotations

import re

POD_CGROUP = re.compile(
    r"/(?:kubepods(?:\.slice)?/|(?:\.\./)+)"  # the kubelet's hierarchy at the root, or above our cgroup namespace
    r"(?:kubepods-(?:besteffort|burstable)\.slice/|(?:besteffort|burstable)/)?"  # the QoS class, but for Guaranteed
    r"(?:kubepods(?:-besteffort|-burstable)?-)?"  # the systemd driver's slice prefix
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?(?:/|$)"
)
"""A pod's cgroup, matched from the start of the path only: a user with a delegated cgroup subtree (systemd's
``user@.service``) can name a cgroup ``kubepods-...-pod<uid>.slice`` below it, but not at the root."""
CONTAINER = re.compile(r"^(?:(cri-containerd|docker|crio)-)?([0-9a-f]{64})(?:\.scope)?$")
RUNTIME_PREFIX = {"cri-containerd": "containerd://", "docker": "docker://", "crio": "cri-o://", None: ""}


def kubernetes_labels(cgroup_text: str) -> dict[str, str]:
    """``pod_uid`` and ``container_id`` of the process whose ``/proc/<pid>/cgroup`` is ``cgroup_text``; empty
    outside Kubernetes. cgroup v1 and v2, systemd and cgroupfs drivers, and paths seen from another cgroup
    namespace (``/../..``) all work; a pod-like name anywhere but in the kubelet's hierarchy is not a pod."""
    for line in cgroup_text.splitlines():
        path = line.split(":", 2)[-1]
        pod = POD_CGROUP.match(path)
        if pod is None:
            continue
        labels = {"pod_uid": pod.group(1).replace("_", "-")}
        container = CONTAINER.match(path.rstrip("/").rsplit("/", 1)[-1])
        if container is not None:
            labels["container_id"] = RUNTIME_PREFIX[container.group(1)] + container.group(2)
        return labels
    return {}
