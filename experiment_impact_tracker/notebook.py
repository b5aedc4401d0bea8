"""Runs in a notebook: a run shows its figures as an HTML table, and ``%%track_run`` measures one cell.

::

    %load_ext experiment_impact_tracker.notebook

    %%track_run mobilenet --set conv32 --label seed=0
    train()

The cell runs inside ``track_run`` (the kernel process and whatever it starts are the run), the run is kept in
the notebook's namespace as ``impact_run`` (``--as NAME`` picks another name) and shown as a table. IPython is
imported only by ``load_ipython_extension``: the client itself never needs it.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Mapping
from html import escape
from typing import TYPE_CHECKING, Any

from experiment_impact_tracker.cli import parse_label
from experiment_impact_tracker.errors import ImpactTrackerError
from experiment_impact_tracker.runs import track_run
from experiment_impact_tracker.work import PER_UNIT, energy_per_unit

if TYPE_CHECKING:
    from experiment_impact_tracker.runs import Run

DEFAULT_NAME = "impact_run"


def figure_rows(run: Run, figures: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(name, value) rows of what a run is and, when ``figures`` (the exporter's run object) are known, what it
    used: duration, energy per component and in total, CPU time, work done and energy per unit of work."""
    rows = [
        ("experiment", run.experiment),
        ("set", run.set or ""),
        ("labels", " ".join(f"{name}={value}" for name, value in sorted(run.labels.items()))),
        ("run id", run.run_id if run.tracked else f"untracked: {run.untracked_reason}"),
    ]
    if not figures:
        return rows
    energy = {component: float(joules) for component, joules in (figures.get("energy_joules") or {}).items()}
    total = sum(energy.values())
    end = figures.get("end_time") or figures.get("last_sample_time")
    rows.append(("status", str(figures.get("status", ""))))
    if end and figures.get("start_time"):
        rows.append(("duration", f"{end - figures['start_time']:.3g} s"))
    rows += [(f"{component} energy", f"{joules:.4g} J") for component, joules in sorted(energy.items())]
    rows += [("energy", f"{total:.4g} J"), ("CPU time", f"{float(figures.get('cpu_seconds') or 0):.3g} s")]
    work = figures.get("work_units") or {}
    rows += [(unit, f"{count:,}") for unit, count in sorted(work.items())]
    per_unit = energy_per_unit(total, work)
    rows += [
        (spec.label, f"{per_unit[spec.key]:.4g} {spec.unit}") for spec in PER_UNIT.values() if spec.key in per_unit
    ]
    return rows


def html_table(run: Run) -> str:
    """The run as an HTML table (``Run._repr_html_``): its final figures once stopped, else the exporter's latest."""
    figures = run.final
    if figures is None and run.tracked:
        try:
            figures = run.info()
        except ImpactTrackerError:
            figures = None
    cells = "".join(
        f"<tr><th>{escape(name)}</th><td>{escape(value)}</td></tr>" for name, value in figure_rows(run, figures)
    )
    return f'<table class="impact-run">{cells}</table>'


def magic_parser() -> argparse.ArgumentParser:
    """``%%track_run``'s arguments: those of ``track_run``, and the name the run is kept under."""
    parser = argparse.ArgumentParser(prog="%%track_run", add_help=False, exit_on_error=False)
    parser.add_argument("experiment")
    parser.add_argument("--set")
    parser.add_argument("--label", dest="labels", action="append", type=parse_label, default=[])
    parser.add_argument("--logdir")
    parser.add_argument("--strict", action="store_true")
    parser.add_argument("--as", dest="name", default=DEFAULT_NAME)
    return parser


def track_cell(line: str, cell: str, shell: Any) -> Run:
    """Run ``cell`` in ``shell`` as one run described by ``line`` (``%%track_run``'s arguments); the run is kept in
    the shell's namespace and returned (so the notebook shows its table). A bad line raises UsageError."""
    from IPython.core.error import UsageError

    try:
        args = magic_parser().parse_args(shlex.split(line))
    except (argparse.ArgumentError, argparse.ArgumentTypeError, ValueError) as error:
        raise UsageError(
            f"%%track_run: {error}; usage: %%track_run EXPERIMENT [--set SET] [--label NAME=VALUE]... "
            "[--logdir DIR] [--strict] [--as NAME]"
        ) from None
    except SystemExit:  # argparse's exit on a missing argument
        raise UsageError(
            "%%track_run: the experiment's name is required: %%track_run EXPERIMENT [--set SET] [--label NAME=VALUE]"
        ) from None
    with track_run(
        args.experiment, set=args.set, labels=dict(args.labels), logdir=args.logdir, strict=args.strict
    ) as run:
        shell.user_ns[args.name] = run
        shell.run_cell(cell)
    return run


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext experiment_impact_tracker.notebook``: registers the ``%%track_run`` cell magic."""
    ipython.register_magic_function(
        lambda line, cell: track_cell(line, cell, ipython), magic_kind="cell", magic_name="track_run"
    )
