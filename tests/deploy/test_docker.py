"""deploy/docker: the Dockerfile and the compose files, checked without a Docker engine. The image must hold
everything pip installs, start the exporter with flags it accepts, and the compose services must mount what the
exporter reads and what Prometheus and Grafana load."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import pytest
import tomllib

from tests.deploy.manifests import (
    DEPLOY,
    DOCKERFILE,
    dockerfile_arg_default,
    dockerfile_instructions,
    exporter_flags,
    load_yaml,
)
from tests.servers import REPO_ROOT

COMPOSE_FILE = DEPLOY / "docker-compose.yml"
GPU_COMPOSE_FILE = DEPLOY / "docker-compose.gpu.yml"
COMPOSE = load_yaml(COMPOSE_FILE)
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def copy_sources() -> list[str]:
    """The build-context paths the Dockerfile copies (``COPY --from`` copies from a stage, not the context)."""
    sources = []
    for instruction in dockerfile_instructions():
        if instruction.keyword == "COPY" and not instruction.arguments.startswith("--from"):
            sources += instruction.arguments.split()[:-1]
    return [source.rstrip("/") for source in sources]


def dockerignored(path: str) -> bool:
    """Whether the Dockerfile's own .dockerignore keeps ``path`` out of the build context (last match wins)."""
    ignored = False
    for line in Path(f"{DOCKERFILE}.dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        include = pattern.startswith("!")
        if fnmatch.fnmatch(path, pattern.lstrip("!").rstrip("/")):
            ignored = not include
    return ignored


def exec_form(keyword: str) -> list[str]:
    (instruction,) = [i for i in dockerfile_instructions() if i.keyword == keyword]
    return json.loads(instruction.arguments)


def test_the_image_copies_every_package_pip_installs_and_the_readme_it_needs() -> None:
    sources = copy_sources()
    setuptools = PYPROJECT["tool"]["setuptools"]
    folders = {setuptools["package-dir"].get(name, name) for name in setuptools["packages"] if "." not in name}
    assert set(sources) == {"pyproject.toml", PYPROJECT["project"]["readme"], *folders}
    for source in sources:
        assert (REPO_ROOT / source).exists(), source
        assert not dockerignored(source), f"{source} is excluded from the build context"


def test_the_context_leaves_out_the_virtual_environment_and_git() -> None:
    assert dockerignored(".venv") and dockerignored(".git") and dockerignored("tests")


def test_the_image_runs_the_console_script_with_flags_the_exporter_accepts() -> None:
    (entrypoint,) = exec_form("ENTRYPOINT")
    assert entrypoint in PYPROJECT["project"]["scripts"]
    flags = exporter_flags(exec_form("CMD"))
    assert (flags.settings.procfs, flags.settings.sysfs) == (Path("/host/proc"), Path("/host/sys"))
    groupadd = next(i.arguments for i in dockerfile_instructions() if "groupadd" in i.arguments)
    assert groupadd.split()[-1] == flags.socket_group
    assert '"${IMPACT_GID}"' in groupadd and dockerfile_arg_default("IMPACT_GID").isdigit()


def test_the_image_exposes_and_health_checks_the_port_it_listens_on() -> None:
    port = exporter_flags(exec_form("CMD")).settings.listen_port
    (expose,) = [i.arguments for i in dockerfile_instructions() if i.keyword == "EXPOSE"]
    (healthcheck,) = [i.arguments for i in dockerfile_instructions() if i.keyword == "HEALTHCHECK"]
    assert expose == str(port)
    assert f"127.0.0.1:{port}/-/healthy" in healthcheck


def exporter_service() -> dict[str, Any]:
    return COMPOSE["services"]["exporter"]


def bind_mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Container path -> (host path or volume, mode) of a compose service's short-syntax volumes."""
    mounts = {}
    for volume in service["volumes"]:
        source, target, *mode = volume.split(":")
        mounts[target] = (source, mode[0] if mode else "rw")
    return mounts


def test_compose_runs_three_services() -> None:
    assert set(COMPOSE["services"]) == {"exporter", "prometheus", "grafana"}


def test_compose_builds_the_exporter_image_from_the_repository() -> None:
    build = exporter_service()["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == REPO_ROOT
    assert context / build["dockerfile"] == DOCKERFILE
    assert build["args"]["IMPACT_GID"] == f"${{IMPACT_GID:-{dockerfile_arg_default('IMPACT_GID')}}}"


def test_compose_gives_the_exporter_the_hosts_processes_read_only_and_shares_the_run_socket() -> None:
    service = exporter_service()
    flags = exporter_flags(service["command"])
    mounts = bind_mounts(service)
    assert service["pid"] == "host"
    assert mounts[str(flags.settings.procfs)] == ("/proc", "ro")
    assert mounts[str(flags.settings.sysfs)] == ("/sys", "ro")
    socket_dir = str(flags.settings.api_socket.parent)
    assert mounts[socket_dir] == (socket_dir, "rw"), "users on the host reach the socket at the same path"
    assert mounts[str(flags.settings.state_dir)][0] in COMPOSE["volumes"]
    assert flags.socket_group == "impact"


def test_compose_runs_the_exporter_as_the_images_user_without_capabilities_under_the_default_profiles() -> None:
    service = exporter_service()
    assert "user" not in service, "the image's unprivileged user"
    assert service["cap_drop"] == ["ALL"]
    assert "cap_add" not in service, "no SYS_PTRACE, no CHOWN"
    assert service["read_only"] is True
    assert service["security_opt"] == ["no-new-privileges:true"], "AppArmor and seccomp stay Docker's defaults"
    assert exporter_flags(service["command"]).settings.memory == "rss", "PSS would need SYS_PTRACE"
    rapl_gid = dockerfile_arg_default("IMPACT_RAPL_GID")
    assert service["build"]["args"]["IMPACT_RAPL_GID"] == f"${{IMPACT_RAPL_GID:-{rapl_gid}}}"


def test_the_image_runs_as_an_unprivileged_user_in_the_socket_and_rapl_groups() -> None:
    (user,) = [i.arguments for i in dockerfile_instructions() if i.keyword == "USER"]
    assert user == "impact-exporter:impact"
    (useradd,) = [i.arguments for i in dockerfile_instructions() if "useradd" in i.arguments]
    words = useradd.split()
    assert words[words.index("--uid") + 1] == '"${IMPACT_UID}"' and int(dockerfile_arg_default("IMPACT_UID")) != 0
    assert words[words.index("--gid") + 1] == "impact"
    assert words[words.index("--groups") + 1] == "impact-rapl"
    assert "install -d -o impact-exporter -g impact" in useradd, "the state and socket directories are its own"
    instructions = dockerfile_instructions()
    user_at = next(n for n, i in enumerate(instructions) if i.keyword == "USER")
    assert all(i.keyword != "RUN" for i in instructions[user_at:]), "nothing after USER needs root"


def test_compose_prometheus_loads_the_project_rules_and_scrapes_the_exporter_service() -> None:
    service = COMPOSE["services"]["prometheus"]
    mounts = bind_mounts(service)
    config_flag = next(arg for arg in service["command"] if arg.startswith("--config.file="))
    config_path = Path(config_flag.split("=", 1)[1])
    source, mode = mounts[str(config_path.parent)]
    assert mode == "ro"
    config = load_yaml(DEPLOY / source / config_path.name)
    assert config["rule_files"] == ["rules/*.yml"]
    (job,) = config["scrape_configs"]
    port = exporter_flags(exporter_service()["command"]).settings.listen_port
    assert job["job_name"] == "impact-exporter"
    assert job["static_configs"] == [{"targets": [f"exporter:{port}"]}]


def test_compose_grafana_mounts_the_provisioning_and_the_dashboards() -> None:
    mounts = bind_mounts(COMPOSE["services"]["grafana"])
    assert mounts["/etc/grafana/provisioning"] == ("../grafana/provisioning", "ro")
    assert mounts["/var/lib/grafana/dashboards"] == ("../grafana/dashboards", "ro")


@pytest.mark.parametrize("source", ["../grafana/provisioning", "../grafana/dashboards"])
def test_compose_mounts_directories_that_exist(source: str) -> None:
    """Docker creates a missing bind source as an empty directory: Grafana would start with no dashboards."""
    assert (DEPLOY / source).is_dir()


def test_the_gpu_override_hands_the_exporter_every_gpu_through_the_nvidia_runtime() -> None:
    override = load_yaml(GPU_COMPOSE_FILE)
    (device,) = override["services"]["exporter"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == "all"
    assert {"gpu", "utility"} <= set(device["capabilities"])
