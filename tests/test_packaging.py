"""The package installs as a user would install it: a wheel built from the tree goes into a clean virtual
environment (no system site-packages), the base install leaves out the reporter's heavy dependencies, ``[exporter]``
is enough for the exporter, and with ``[all]`` each console script and ``python -m`` answers ``--help``.

Dependencies come from PyPI. Without it the tests skip, except under CI=true, where they fail. One wheel and one
environment serve the whole module: what the base install holds is recorded first, then ``[exporter]`` is added
and recorded, then ``[all]``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import zipfile
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.servers import IN_CI, REPO_ROOT

COMMANDS = [
    "impact-exporter",
    "impact-report",
    "create-compute-appendix",
    "generate-carbon-impact-statement",
    "impact-run",
]
MODULES = ["impact_exporter", "impact_reporter", "experiment_impact_tracker"]
HEAVY = ["pandas", "scipy", "statsmodels", "jinja2", "numpy"]
"""Distributions only the reporter needs; the base install must not bring them."""

INSTALL_TIMEOUT_S = 900
OUTER_PIP = tuple(int(part) for part in version("pip").split(".")[:2]) >= (22, 3)
"""Whether this interpreter's pip can install into another (``--python``), so the venv needs no pip of its own
(creating one with pip takes seconds)."""


@dataclass(frozen=True)
class Venv:
    """A clean virtual environment and the wheel to install into it."""

    root: Path
    wheel: Path
    workdir: Path
    base: frozenset[str] = frozenset()
    """The distributions the base install (no extras) put into the venv."""
    base_help: tuple[tuple[str, subprocess.CompletedProcess[str]], ...] = ()
    """What each command of an extra answered to ``--help`` with the base install, and ``impact-run
    --web.listen-address`` (the standalone monitor's /metrics is the exporter's collector), after the extra's name."""

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def run(self, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a command from a directory outside the checkout, so nothing is imported from the source tree."""
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
        env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        return subprocess.run(
            [str(arg) for arg in args], cwd=self.workdir, env=env, capture_output=True, text=True, timeout=timeout
        )

    def pip_install(self, requirement: str) -> None:
        """Install into the venv; no .pyc compiling, which is most of the time [all] takes from pip's cache."""
        pip = [sys.executable, "-m", "pip", "--python", str(self.python)] if OUTER_PIP else [self.python, "-m", "pip"]
        pip.append("--disable-pip-version-check")
        result = self.run(*pip, "install", "-q", "--no-compile", requirement, timeout=INSTALL_TIMEOUT_S)
        assert result.returncode == 0, f"pip install {requirement} failed:\n{result.stdout}\n{result.stderr}"

    def distributions(self) -> set[str]:
        """Normalised names of the distributions installed in the venv."""
        script = "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] for d in m.distributions()))"
        result = self.run(self.python, "-c", script)
        assert result.returncode == 0, result.stderr
        return {name.strip().lower().replace("_", "-") for name in result.stdout.split()}


def pypi_reachable() -> bool:
    try:
        with socket.create_connection(("pypi.org", 443), timeout=10):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """The wheel built from the tree and a clean venv with its base install (``base`` records what that held)."""
    if not pypi_reachable():
        message = "PyPI (pypi.org:443) cannot be reached: the packaging tests install dependencies from it"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    tmp = tmp_path_factory.mktemp("packaging")
    dist = tmp / "dist"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--disable-pip-version-check",
            "-q",
            "--no-deps",
            "-w",
            str(dist),
            str(REPO_ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    assert built.returncode == 0, f"pip wheel failed:\n{built.stdout}\n{built.stderr}"
    (wheel,) = dist.glob("*.whl")
    without_pip = ["--without-pip"] if OUTER_PIP else []
    subprocess.run([sys.executable, "-m", "venv", *without_pip, str(tmp / "venv")], check=True)
    workdir = tmp / "work"
    workdir.mkdir()
    environment = Venv(tmp / "venv", wheel, workdir)
    environment.pip_install(str(wheel))
    return replace(
        environment,
        base=frozenset(environment.distributions()),
        base_help=(*extra_commands_help(environment), listen_without_the_exporter(environment)),
    )


EXTRA_SCRIPTS = {
    "exporter": ["impact-exporter"],
    "reporter": ["impact-report", "create-compute-appendix", "generate-carbon-impact-statement"],
}
EXTRA_MODULES = {"exporter": "impact_exporter", "reporter": "impact_reporter"}
"""The console scripts and the ``python -m`` module each extra brings."""


def extra_commands_help(venv: Venv) -> tuple[tuple[str, subprocess.CompletedProcess[str]], ...]:
    """``--help`` of every command of an extra, as the venv answers it now, each after its extra's name."""
    answers = []
    for extra, scripts in EXTRA_SCRIPTS.items():
        answers += [(extra, venv.run(venv.root / "bin" / script, "--help")) for script in scripts]
        answers.append((extra, venv.run(venv.python, "-m", EXTRA_MODULES[extra], "--help")))
    return tuple(answers)


def listen_without_the_exporter(venv: Venv) -> tuple[str, subprocess.CompletedProcess[str]]:
    """What ``impact-run --web.listen-address`` answers without ``[exporter]``: it must not start the command."""
    marker = venv.workdir / "ran"
    return "exporter", venv.run(
        venv.root / "bin" / "impact-run", "--experiment=x", "--web.listen-address=127.0.0.1:9", "--", "touch", marker
    )


@dataclass(frozen=True)
class ExporterOnly:
    """What the venv held, and what ``impact-exporter --help`` did, with the base install and ``[exporter]``."""

    distributions: frozenset[str]
    help: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def exporter_only(venv: Venv) -> ExporterOnly:
    """``[exporter]`` added to the base install: an operator's install, recorded before ``[all]`` comes."""
    venv.pip_install(f"{venv.wheel}[exporter]")
    return ExporterOnly(frozenset(venv.distributions()), venv.run(venv.root / "bin" / "impact-exporter", "--help"))


@pytest.fixture(scope="module")
def venv_all(venv: Venv, exporter_only: ExporterOnly) -> Venv:
    """The same venv once ``[all]`` is installed into it (after the ``[exporter]`` install was recorded)."""
    venv.pip_install(f"{venv.wheel}[all]")
    return venv


def python_output(venv: Venv, script: str) -> str:
    """What ``script`` prints when the venv's Python runs it; it must succeed."""
    result = venv.run(venv.python, "-c", script)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_wheel_holds_the_packages_and_their_data_but_not_the_tests(venv: Venv) -> None:
    names = zipfile.ZipFile(venv.wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == set(MODULES), "no generic top-level name (exporter, reporter) in site-packages"
    assert any(name.startswith("impact_reporter/templates/") for name in names)
    assert any(name.startswith("impact_exporter/data/") and name.endswith(".csv") for name in names)


def test_the_base_install_leaves_out_the_reporters_dependencies(venv: Venv) -> None:
    assert "experiment-impact-tracker" in venv.base
    assert not set(HEAVY) & venv.base


def test_without_its_extra_a_command_names_the_extra_to_install(venv: Venv) -> None:
    assert len(venv.base_help) == 7  # 6 commands of extras (4 scripts, 2 modules) and impact-run --web.listen-address
    for extra, result in venv.base_help:
        assert result.returncode == 3, (result.args, result.stderr)
        assert f"pip install 'experiment-impact-tracker[{extra}]'" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
    listen = venv.base_help[-1][1]
    assert listen.stderr.startswith("impact-run --web.listen-address: needs prometheus_client"), listen.stderr
    assert not (venv.workdir / "ran").exists(), "the command does not run"


def test_the_client_imports_nothing_heavy(venv: Venv) -> None:
    unwanted = set(HEAVY) | {"impact_exporter", "impact_reporter", "prometheus_client"}
    script = (
        "import sys, experiment_impact_tracker.compute_tracker, experiment_impact_tracker.cli;"
        f" print(sorted({{name.split('.')[0] for name in sys.modules}} & {unwanted!r}))"
    )
    assert python_output(venv, script) == "[]"


def test_the_exporter_extra_runs_the_exporter_without_the_reporters_dependencies(exporter_only: ExporterOnly) -> None:
    assert "prometheus-client" in exporter_only.distributions
    assert not set(HEAVY) & exporter_only.distributions
    assert exporter_only.help.returncode == 0, exporter_only.help.stderr
    assert "usage:" in exporter_only.help.stdout


def test_the_reporter_imports_nothing_of_the_exporter(venv_all: Venv) -> None:
    script = (
        "import sys, impact_reporter.cli;"
        " print(sorted({name.split('.')[0] for name in sys.modules} & {'impact_exporter', 'prometheus_client'}))"
    )
    assert python_output(venv_all, script) == "[]"


def test_with_all_extras_every_command_answers_help(venv_all: Venv) -> None:
    venv = venv_all
    assert set(HEAVY) <= venv.distributions()
    for command in COMMANDS:
        result = venv.run(venv.root / "bin" / command, "--help")
        assert result.returncode == 0, f"{command} --help:\n{result.stderr}"
        assert "usage:" in result.stdout, command
    for module in MODULES:
        result = venv.run(venv.python, "-m", module, "--help")
        assert result.returncode == 0, f"python -m {module} --help:\n{result.stderr}"
        assert "usage:" in result.stdout, module


def test_the_installed_packages_read_their_bundled_tables(venv_all: Venv) -> None:
    script = (
        "from impact_exporter.sources.estimate import tdp_table; from impact_reporter.carbon import region_table;"
        " print(len(tdp_table()) > 0, 'FR' in region_table())"
    )
    assert python_output(venv_all, script).split() == ["True", "True"]
