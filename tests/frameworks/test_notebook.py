"""``%%track_run`` in a real IPython InteractiveShell, and the run's HTML table, against a real exporter. The shell
runs in a child process, as a notebook's kernel would (IPython comes with the [frameworks] extra)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiment_impact_tracker import ExporterClient
from tests.experiment_impact_tracker.test_with_exporter import BUSY, python

pytestmark = [pytest.mark.frameworks, pytest.mark.integration]


def test_track_run_cell_magic_measures_the_cell_and_shows_an_html_table(
    client: ExporterClient, env: dict[str, str], tmp_path: Path, power: None
) -> None:
    result = python(
        BUSY
        + """
from IPython.core.interactiveshell import InteractiveShell
import json
shell = InteractiveShell.instance()
shell.user_ns["busy"] = busy
shell.run_line_magic("load_ext", "experiment_impact_tracker.notebook")
shell.run_cell_magic("track_run", "notebook-cell --set s1 --label seed=4 --as cell_run",
                     "busy(cell_run.run_id)\\ncell_run.add_work(samples=640, steps=10)")
run = shell.user_ns["cell_run"]
bad = shell.run_cell("%%track_run --set x\\npass")
print(json.dumps({"run_id": run.run_id, "html": run._repr_html_(), "bad": repr(bad.error_in_exec)}))
""",
        env=env,
    )
    out = json.loads(result.stdout.splitlines()[-1])
    final = client.get_run(out["run_id"])
    assert (final["experiment"], final["set"], final["labels"], final["status"]) == (
        "notebook-cell",
        "s1",
        {"seed": "4"},
        "finished",
    )
    assert final["work_units"] == {"samples": 640, "steps": 10}
    total = sum(final["energy_joules"].values())
    assert total > 0
    html = out["html"]
    assert html.startswith('<table class="impact-run">')
    assert f"<tr><th>energy</th><td>{total:.4g} J</td></tr>" in html
    assert f"<tr><th>Energy per sample</th><td>{total / 640:.4g} J/sample</td></tr>" in html
    assert "<tr><th>labels</th><td>seed=4</td></tr>" in html
    assert "UsageError" in out["bad"]
