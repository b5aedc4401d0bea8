"""The reporter from Python, for notebooks: ``runs`` is ``impact-report runs`` as a pandas DataFrame, ``appendix``
is ``impact-report appendix``. Both build the command line's arguments and go through the same functions, so a
notebook and the command print the same figures.

::

    from impact_reporter.notebook import runs, appendix

    table = runs('{experiment="mobilenet"}', prometheus="http://prometheus:9090", region="FR")
    table[["run_id", "labels.seed", "total_joules", "energy_per_unit.joules_per_sample"]]
    appendix({"Normal (32)": '{set="conv32"}', "Separable (64)": '{set="sep64"}'},
             compare=[("Normal (32)", "Separable (64)")])
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from impact_reporter.cli import appendix_sets, build_parser, figures_for, interpret, select_runs, write_appendices
from impact_reporter.table import run_json


def runs(
    *match: str,
    run_dirs: Iterable[str | Path] = (),
    prometheus: str | None = None,
    since: str = "30d",
    start: str | None = None,
    end: str | None = None,
    settle: str | None = None,
    carbon_intensity: float | None = None,
    region: str | None = None,
    pue: float | None = None,
) -> pd.DataFrame:
    """The runs ``impact-report runs`` lists for these arguments (its flags' names), one row each, with every
    figure of ``--format json`` flattened: ``labels.<name>`` (one column per label), ``energy_joules.<component>``,
    ``work_units.<unit>``, ``energy_per_unit.<key>``. A run without figures has ``not_measured`` set. Errors
    raise: ValueError for a bad argument, RunDataError when no run matches, PrometheusError when it is away."""
    argv = ["runs", *[f"--match={m}" for m in match], *[f"--run-dir={d}" for d in run_dirs]]
    argv += _flags(prometheus=prometheus, since=since, start=start, end=end, settle=settle)
    argv += _flags(carbon_intensity=carbon_intensity, region=region, pue=pue)
    args = build_parser().parse_args(argv)
    interpret(args)
    documents = [run_json(item) for item in figures_for(args, select_runs(args))]
    return pd.json_normalize(documents, sep=".") if documents else pd.DataFrame()


def appendix(
    sets: Mapping[str, str],
    compare: Sequence[tuple[str, str]] = (),
    out: str | Path = "appendix",
    pdf: bool = True,
    prometheus: str | None = None,
    since: str = "30d",
    start: str | None = None,
    end: str | None = None,
    carbon_intensity: float | None = None,
    region: str | None = None,
    pue: float | None = None,
) -> dict[str, Any]:
    """``impact-report appendix`` for ``sets`` (set name -> its label matchers) and the ``compare`` pairs (treatment,
    baseline): writes the pages into ``out`` (the PDFs too unless ``pdf`` is False) and returns appendix.json."""
    argv = ["appendix", "--experiment-set-names", *sets, *[f"--match={m}" for m in sets.values()], f"--out={out}"]
    argv += [flag for a, b in compare for flag in ("--compare", a, b)] + ([] if pdf else ["--no-pdf"])
    argv += _flags(prometheus=prometheus, since=since, start=start, end=end)
    argv += _flags(carbon_intensity=carbon_intensity, region=region, pue=pue)
    parser = build_parser()
    args = parser.parse_args(argv)
    interpret(args)
    write_appendices(args, appendix_sets(args, args.usage))
    return json.loads((Path(out) / "appendix.json").read_text())


def _flags(**values: Any) -> list[str]:
    """``--name=value`` for each value given, as the command line spells the flag."""
    return [f"--{name.replace('_', '-')}={value}" for name, value in values.items() if value is not None]
