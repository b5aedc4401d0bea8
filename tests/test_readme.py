"""The README cannot rot: its two commands are the scripts CI and the demo test run, and every flag that a
README example passes to one of our commands exists in that command's --help."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from tests.servers import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
COMMANDS = {
    "impact-exporter": [sys.executable, "-m", "impact_exporter"],
    "impact-report": [sys.executable, "-m", "impact_reporter"],
    "impact-run": [sys.executable, "-m", "experiment_impact_tracker"],
    "create-compute-appendix": [
        sys.executable,
        "-c",
        "import sys; from impact_reporter.cli import seed_main; sys.exit(seed_main(sys.argv[1:]))",
    ],
    "generate-carbon-impact-statement": [
        sys.executable,
        "-c",
        "import sys; from impact_reporter.cli import statement_main; sys.exit(statement_main(sys.argv[1:]))",
    ],
}


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, re.DOTALL)


def commands() -> list[list[str]]:
    """Every command line of the README's shell blocks, continuation lines joined, comments dropped."""
    lines = []
    for block in shell_blocks():
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(shlex.split(line))
    return lines


def test_the_quickstart_is_the_demo_and_the_test_script() -> None:
    quickstart = [shlex.split(line) for line in shell_blocks()[0].splitlines() if line.strip()]
    assert quickstart == [["./scripts/demo"], ["./scripts/test"]]
    assert "exec ./scripts/test" in (REPO_ROOT / ".ci" / "run").read_text()


def our_commands() -> list[list[str]]:
    """The README's command lines that run one of our programs (``sudo`` dropped)."""
    found = []
    for words in commands():
        words = words[1:] if words[:1] == ["sudo"] else words
        if words and words[0] in COMMANDS:
            found.append(words)
    return found


def test_the_readme_shows_every_program() -> None:
    assert {words[0] for words in our_commands()} == set(COMMANDS)


@pytest.mark.parametrize("words", our_commands(), ids=lambda words: " ".join(words)[:60])
def test_every_flag_in_a_readme_example_exists(words: list[str]) -> None:
    program, args = words[0], words[1:]
    subcommand = [args[0]] if program == "impact-report" and args and not args[0].startswith("-") else []
    help_text = subprocess.run(
        [*COMMANDS[program], *subcommand, "--help"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60
    ).stdout
    for arg in args:
        if arg == "--":
            break
        if arg.startswith("--"):
            assert arg.split("=")[0] in help_text, f"{program} {' '.join(subcommand)} has no {arg}"
