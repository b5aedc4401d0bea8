"""The README's first command: the demo does the whole job on this machine and leaves a real appendix."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.servers import REPO_ROOT, require_binary

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end_and_writes_the_comparison(tmp_path: Path) -> None:
    require_binary("prometheus", "apt-get install prometheus")
    require_binary("lualatex", "apt-get install texlive-luatex texlive-latex-recommended texlive-science latexmk")
    pdftotext = require_binary("pdftotext", "apt-get install poppler-utils")
    out = tmp_path / "demo-output"
    result = subprocess.run(
        ["./scripts/demo"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=420,
        env={**os.environ, "DEMO_OUTPUT": str(out), "DEMO_PRODUCTS": "20"},  # the pipeline, not the workload
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for n in range(6):
        assert f"run {n % 3} of the {'float64' if n < 3 else 'float32'} set" in result.stdout
    comparison = out / "float64 matmul_v_float32 matmul.pdf"
    assert f"comparison: {comparison}" in result.stdout
    for set_name in ("float64 matmul", "float32 matmul"):
        for stem in ("0", "1", "2", "summary"):
            assert (out / set_name / f"{stem}.pdf").is_file()
    text = subprocess.run([pdftotext, "-layout", str(comparison), "-"], capture_output=True, text=True).stdout
    assert "float64 matmul versus float32 matmul" in text
    for column in ("Mean A", "Mean B", "Total energy", "Hedges"):
        assert column in text
    if "CPU energy is ESTIMATED" in result.stdout + result.stderr or "RAPL cannot be used" in result.stdout:
        assert re.search(r"Total energy \((J|Wh|kWh)\), estimated", text), "an estimate is marked as one"
    document = json.loads((out / "appendix.json").read_text())
    means = document["comparisons"][0]["quantities"]["total_kwh"]
    assert means["mean_a"] > means["mean_b"] > 0, "float64 products must cost more energy than float32 ones"
    leftovers = subprocess.run(["pgrep", "-f", "impact-demo"], capture_output=True, text=True).stdout
    assert leftovers == "", "the demo stops every process it started"
