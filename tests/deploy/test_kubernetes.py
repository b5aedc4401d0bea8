"""deploy/kubernetes: one exporter per node (the NVIDIA runtime on GPU nodes) in the host's PID namespace, with
the host's /proc and /sys read-only and the run socket on a host path that training pods mount read-only; the
exporter as a user without capabilities under the runtime's seccomp and AppArmor profiles, an init container
(the only root part) that makes RAPL readable by the exporter's group; a NetworkPolicy that lets only Prometheus
in; a Service, a ServiceMonitor, and a PrometheusRule that is the project's rule files."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from experiment_impact_tracker.client import DEFAULT_ADDRESS
from tests.deploy.manifests import KUBERNETES, dockerfile_arg_default, exporter_flags, load_documents, load_yaml, rules
from tests.deploy.rapl_access import counters, rapl_check_as
from tests.servers import REPO_ROOT

KUSTOMIZATION = load_yaml(KUBERNETES / "kustomization.yaml")
EXAMPLE_POD = KUBERNETES / "example-training-pod.yaml"
GENERATOR = KUBERNETES / "prometheusrule.py"
GPU_NODE_LABEL = "nvidia.com/gpu.present"
CLIENT_SOCKET_DIR = Path(DEFAULT_ADDRESS.removeprefix("unix://")).parent


def resources() -> list[dict[str, Any]]:
    """Every object ``kubectl apply -k deploy/kubernetes`` creates."""
    return [doc for name in KUSTOMIZATION["resources"] for doc in load_documents(KUBERNETES / name)]


def objects(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in resources() if doc["kind"] == kind]


def only(kind: str) -> dict[str, Any]:
    (found,) = objects(kind)
    return found


DAEMONSETS = {ds["metadata"]["name"]: ds for ds in objects("DaemonSet")}


def pod_spec(daemonset: dict[str, Any]) -> dict[str, Any]:
    return daemonset["spec"]["template"]["spec"]


def exporter_container(daemonset: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec(daemonset)["containers"]
    return container


def init_container(daemonset: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec(daemonset)["initContainers"]
    return container


def image_ids() -> tuple[int, int, int]:
    """The exporter image's (uid, gid of the socket group, gid of the RAPL group), as the Dockerfile builds them."""
    return tuple(int(dockerfile_arg_default(name)) for name in ("IMPACT_UID", "IMPACT_GID", "IMPACT_RAPL_GID"))


def host_mounts(spec: dict[str, Any], container: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Mount path in the container -> (host path, read-only) of every hostPath volume it mounts."""
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    return {
        m["mountPath"]: (host_paths[m["name"]], m.get("readOnly", False))
        for m in container["volumeMounts"]
        if m["name"] in host_paths
    }


def test_kustomize_applies_every_manifest_but_the_example() -> None:
    on_disk = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml", EXAMPLE_POD.name}
    assert set(KUSTOMIZATION["resources"]) == on_disk
    namespace = only("Namespace")["metadata"]["name"]
    assert KUSTOMIZATION["namespace"] == namespace
    assert {doc["metadata"].get("namespace") for doc in resources() if doc["kind"] != "Namespace"} == {namespace}


def test_the_namespace_allows_privileged_pods() -> None:
    assert only("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_there_is_one_daemonset_for_nodes_with_gpus_and_one_for_the_rest() -> None:
    assert set(DAEMONSETS) == {"impact-exporter", "impact-exporter-gpu"}
    gpu = pod_spec(DAEMONSETS["impact-exporter-gpu"])
    assert gpu["nodeSelector"] == {GPU_NODE_LABEL: "true"}
    assert gpu["runtimeClassName"] == "nvidia"
    env = {e["name"]: e["value"] for e in exporter_container(DAEMONSETS["impact-exporter-gpu"])["env"]}
    assert env == {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "utility"}
    assert "nvidia.com/gpu" not in str(exporter_container(DAEMONSETS["impact-exporter-gpu"])["resources"])
    cpu = pod_spec(DAEMONSETS["impact-exporter"])
    (term,) = cpu["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [{"key": GPU_NODE_LABEL, "operator": "NotIn", "values": ["true"]}]
    assert "runtimeClassName" not in cpu


@pytest.mark.parametrize("name", ["impact-exporter", "impact-exporter-gpu"])
def test_the_exporter_sees_the_hosts_processes_and_hardware_read_only(name: str) -> None:
    spec, container = pod_spec(DAEMONSETS[name]), exporter_container(DAEMONSETS[name])
    flags = exporter_flags(container["args"])
    mounts = host_mounts(spec, container)
    assert spec["hostPID"] is True
    assert mounts[str(flags.settings.procfs)] == ("/proc", True)
    assert mounts[str(flags.settings.sysfs)] == ("/sys", True)
    assert mounts[str(flags.settings.state_dir)] == (str(flags.settings.state_dir), False)
    assert {"operator": "Exists"} in spec["tolerations"], "every node, tainted ones included"


@pytest.mark.parametrize("name", ["impact-exporter", "impact-exporter-gpu"])
def test_the_run_socket_is_on_a_host_path_that_training_pods_mount(name: str) -> None:
    spec, container = pod_spec(DAEMONSETS[name]), exporter_container(DAEMONSETS[name])
    flags = exporter_flags(container["args"])
    socket_dir = str(flags.settings.api_socket.parent)
    assert host_mounts(spec, container)[socket_dir] == (socket_dir, False)
    (pod,) = load_documents(EXAMPLE_POD)
    (train,) = pod["spec"]["containers"]
    assert host_mounts(pod["spec"], train) == {str(CLIENT_SOCKET_DIR): (socket_dir, True)}, (
        "read-only: a pod may connect to the socket, never replace it"
    )
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert flags.socket_group == "impact"
    assert int(dockerfile_arg_default("IMPACT_GID")) in pod["spec"]["securityContext"]["supplementalGroups"]


@pytest.mark.parametrize("name", ["impact-exporter", "impact-exporter-gpu"])
def test_the_exporter_runs_as_the_images_user_without_capabilities_under_the_default_profiles(name: str) -> None:
    spec, container = pod_spec(DAEMONSETS[name]), exporter_container(DAEMONSETS[name])
    context = container["securityContext"]
    uid, socket_gid, rapl_gid = image_ids()
    assert (context["runAsUser"], context["runAsGroup"], context["runAsNonRoot"]) == (uid, socket_gid, True)
    assert uid != 0
    assert context.get("privileged", False) is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}, "no SYS_PTRACE, no CHOWN: nothing added"
    assert context["seccompProfile"] == context["appArmorProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["appArmorProfile"] == {"type": "RuntimeDefault"}
    annotations = DAEMONSETS[name]["spec"]["template"]["metadata"]["annotations"]
    assert set(annotations.values()) == {"runtime/default"}, "no container unconfined"
    assert rapl_gid in spec["securityContext"]["supplementalGroups"]
    assert spec["automountServiceAccountToken"] is False
    assert exporter_flags(container["args"]).settings.memory == "rss", "PSS would need SYS_PTRACE"


@pytest.mark.parametrize("name", ["impact-exporter", "impact-exporter-gpu"])
def test_only_the_init_container_runs_as_root_and_it_keeps_chown_alone(name: str) -> None:
    init = init_container(DAEMONSETS[name])
    context = init["securityContext"]
    assert context["runAsUser"] == 0
    assert context.get("privileged", False) is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert init["image"] == exporter_container(DAEMONSETS[name])["image"]
    spec = pod_spec(DAEMONSETS[name])
    mounts = host_mounts(spec, init)
    assert mounts["/host/sys"] == ("/sys", False)
    assert set(mounts) == {"/host/sys", "/run/impact-exporter", "/var/lib/impact-exporter"}


def run_init_script(daemonset: dict[str, Any], node_root: Path) -> subprocess.CompletedProcess[str]:
    """The init container's script, run here against ``node_root`` in place of the node's / (its host paths)."""
    command = init_container(daemonset)["command"]
    assert command[:2] == ["sh", "-c"]
    script = command[2]
    for path in ("/host/sys", "/run/impact-exporter", "/var/lib/impact-exporter"):
        target = node_root / ("sys" if path == "/host/sys" else path.lstrip("/"))
        target.mkdir(parents=True, exist_ok=True)
        script = script.replace(path, shlex.quote(str(target)))
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)


def test_the_init_container_makes_rapl_readable_by_the_exporters_group_alone(node_root: Path) -> None:
    """Its script on a node whose counters are root-only: the exporter's RAPL reader, as the image's user with
    no capability, reads them afterwards through the group, and a user outside the group still cannot."""
    uid, socket_gid, rapl_gid = image_ids()
    sysfs = node_root / "sys"
    assert "permission denied" in rapl_check_as(sysfs, uid, socket_gid, [rapl_gid])

    result = run_init_script(DAEMONSETS["impact-exporter"], node_root)
    assert (result.returncode, result.stderr) == (0, "")

    for counter in counters(sysfs):
        assert (oct(counter.stat().st_mode & 0o777), counter.stat().st_gid) == ("0o440", rapl_gid)
    assert rapl_check_as(sysfs, uid, socket_gid, [rapl_gid]) == "readable"
    assert "permission denied" in rapl_check_as(sysfs, 1000, 1000, [socket_gid]), "users who mark runs cannot"
    for directory, mode in (("run/impact-exporter", "0o755"), ("var/lib/impact-exporter", "0o700")):
        info = (node_root / directory).stat()
        assert (info.st_uid, info.st_gid, oct(info.st_mode & 0o777)) == (uid, socket_gid, mode)


def test_the_init_containers_of_both_daemonsets_are_the_same() -> None:
    assert init_container(DAEMONSETS["impact-exporter"]) == init_container(DAEMONSETS["impact-exporter-gpu"])


def test_no_container_but_the_init_container_may_run_as_root() -> None:
    for daemonset in DAEMONSETS.values():
        for container in pod_spec(daemonset)["containers"]:
            assert container["securityContext"]["runAsNonRoot"] is True
            assert container["securityContext"]["runAsUser"] != 0


def test_the_network_policy_lets_only_prometheus_reach_the_metrics_port_and_the_exporter_reach_nothing() -> None:
    policy = only("NetworkPolicy")
    selector = policy["spec"]["podSelector"]["matchLabels"].items()
    for daemonset in DAEMONSETS.values():
        assert selector <= daemonset["spec"]["template"]["metadata"]["labels"].items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["spec"]["egress"] == []
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": "metrics"}]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert "namespaceSelector" in peer, "a pod selector alone would mean pods of the exporter's own namespace"
    (port,) = exporter_container(DAEMONSETS["impact-exporter"])["ports"]
    assert port["name"] == "metrics"


@pytest.mark.parametrize("name", ["impact-exporter", "impact-exporter-gpu"])
def test_probes_and_the_metrics_port_are_where_the_exporter_listens(name: str) -> None:
    container = exporter_container(DAEMONSETS[name])
    (port,) = container["ports"]
    assert port == {"name": "metrics", "containerPort": exporter_flags(container["args"]).settings.listen_port}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/-/healthy", "port": "metrics"}


def test_the_service_selects_both_daemonsets_and_is_named_as_the_alerts_expect_the_job() -> None:
    service = only("Service")
    selector = service["spec"]["selector"].items()
    for daemonset in DAEMONSETS.values():
        assert selector <= daemonset["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["clusterIP"] == "None"
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "metrics"
    (down,) = [rule for rule in rules() if rule.get("alert") == "ImpactExporterDown"]
    assert re.search(r'job="([^"]+)"', down["expr"]).group(1) == service["metadata"]["name"]


def test_the_service_monitor_scrapes_the_service_port_and_names_targets_by_node() -> None:
    monitor, service = only("ServiceMonitor"), only("Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    (endpoint,) = monitor["spec"]["endpoints"]
    (port,) = service["spec"]["ports"]
    assert endpoint["port"] == port["name"]
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "instance"} in endpoint["relabelings"]


def test_the_prometheus_rule_is_generated_from_the_current_rule_files() -> None:
    result = subprocess.run([sys.executable, str(GENERATOR)], capture_output=True, text=True, timeout=30, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (KUBERNETES / "prometheusrule.yaml").read_text(), (
        "deploy/kubernetes/prometheusrule.yaml is out of date: "
        "python deploy/kubernetes/prometheusrule.py > deploy/kubernetes/prometheusrule.yaml"
    )
    spec_rules = [rule for group in only("PrometheusRule")["spec"]["groups"] for rule in group["rules"]]
    assert sorted(spec_rules, key=str) == sorted(rules(), key=str)
