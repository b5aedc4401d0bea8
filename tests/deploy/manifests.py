"""What the deployment tests share: the files under deploy/, read as their tools read them, and the exporter's own
flag parser to check the flags they pass."""

from __future__ import annotations

import contextlib
import grp
import io
import json
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from impact_exporter.cli import Settings, build_parser, parse_settings
from tests.servers import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
RULES_DIR = DEPLOY / "prometheus" / "rules"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
KUBERNETES = DEPLOY / "kubernetes"


def load_yaml(path: Path) -> Any:
    """The one YAML document in ``path``."""
    return yaml.safe_load(path.read_text())


def load_documents(path: Path) -> list[Any]:
    """Every non-empty YAML document in ``path`` (Kubernetes files may hold several)."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_data_file(path: Path) -> list[Any]:
    """The documents of a YAML or JSON file, parsed as the tool that reads it would."""
    if path.suffix == ".json":
        return [json.loads(path.read_text())]
    return load_documents(path)


def rule_files() -> list[Path]:
    """The rule files every Prometheus of the project loads (the tests' one included)."""
    return sorted(RULES_DIR.glob("*.yml"))


def rules() -> list[dict[str, Any]]:
    """Every recording and alerting rule, in file order."""
    return [rule for path in rule_files() for group in load_yaml(path)["groups"] for rule in group["rules"]]


@dataclass(frozen=True)
class ExporterFlags:
    """Flags as ``impact-exporter`` parses them: its settings, and the socket group by name."""

    settings: Settings
    socket_group: str | None


def exporter_flags(flags: Sequence[str]) -> ExporterFlags:
    """Parse ``flags`` with the exporter's real parser and validation; fail the test with the exporter's message
    if it rejects them. The socket group exists only where the exporter is deployed, so it is checked by name and
    then resolved as this process's own group."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = build_parser().parse_args(list(flags))
            own_group = grp.getgrgid(os.getgid()).gr_name
            local = [re.sub(r"^--api\.socket-group=.*", f"--api.socket-group={own_group}", f) for f in flags]
            settings = parse_settings(local)
    except SystemExit:
        pytest.fail(f"impact-exporter rejects {shlex.join(flags)}: {stderr.getvalue().strip()}")
    return ExporterFlags(settings, args.api_socket_group)


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its keyword and its arguments, continuation lines joined."""

    keyword: str
    arguments: str


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """The instructions of a Dockerfile, comments dropped and ``\\`` continuations joined."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, arguments = line.strip().partition(" ")
            instructions.append(Instruction(keyword.upper(), arguments.strip()))
    return instructions


def dockerfile_arg_default(name: str) -> str:
    """The default value of ``ARG name=value`` in the exporter's Dockerfile."""
    for instruction in dockerfile_instructions():
        if instruction.keyword == "ARG" and instruction.arguments.startswith(f"{name}="):
            return instruction.arguments.split("=", 1)[1]
    pytest.fail(f"{DOCKERFILE} has no ARG {name}=<default>")
