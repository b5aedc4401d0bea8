"""``impact-report``: list runs with their energy and carbon, and archive them, from Prometheus or run directories."""

from __future__ import annotations

import argparse
import csv
import gc
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from experiment_impact_tracker.durations import parse_duration
from impact_reporter import carbon
from impact_reporter.appendix import FailedRun, comparison_report, set_report
from impact_reporter.energy import RunFigures, runs_figures
from impact_reporter.latex import LATEX_INSTALL_HINT, LatexError, latex_available, write_appendix
from impact_reporter.legacy import Totals, impact_totals
from impact_reporter.nodes import NOT_REPLICA_LABELS, REPLICA_LABELS
from impact_reporter.prometheus import PartialResponse, PrometheusClient, PrometheusError, Series, parse_time
from impact_reporter.runs import (
    DEFAULT_SETTLE_SECONDS,
    PrometheusRuns,
    Run,
    RunDataError,
    load_run_dirs,
    run_info_selectors,
    write_archive,
)
from impact_reporter.table import Listed, csv_frame, json_text, run_json, runs_table
from impact_reporter.typeset import literal

EXIT_OK, EXIT_DATA, EXIT_USAGE = 0, 1, 2
T = TypeVar("T")
DEFAULT_PROMETHEUS = "http://localhost:9090"


def prometheus_parser() -> argparse.ArgumentParser:
    """Flags shared by every command: where the data is, and the time window to look in."""
    parent = argparse.ArgumentParser(add_help=False)
    source = parent.add_argument_group("Prometheus")
    source.add_argument(
        "--prometheus",
        metavar="URL",
        default=os.environ.get("PROMETHEUS_URL"),
        help=f"Prometheus HTTP API base URL; Thanos, Mimir and VictoriaMetrics work too "
        f"(default: $PROMETHEUS_URL, else {DEFAULT_PROMETHEUS}; for run directories, the URL in their run.json)",
    )
    source.add_argument(
        "--bearer-token-file",
        metavar="FILE",
        type=Path,
        help="send 'Authorization: Bearer <the file's content>' (default: $PROMETHEUS_TOKEN if set)",
    )
    source.add_argument(
        "--basic-auth", metavar="USER:PASSWORD", help="HTTP basic auth (default: $PROMETHEUS_BASIC_AUTH)"
    )
    source.add_argument("--ca-bundle", metavar="FILE", help="CA certificates to verify the server with")
    source.add_argument("--insecure", action="store_true", help="do not verify the server's TLS certificate")
    source.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="per request (default: 30)")
    source.add_argument(
        "--header",
        action="append",
        type=http_header,
        default=[],
        metavar="NAME=VALUE",
        help="send this HTTP header with every request, e.g. Mimir's X-Scope-OrgID=<tenant>; repeatable "
        "(default: none)",
    )
    source.add_argument(
        "--allow-partial",
        action="store_true",
        help="accept answers with warnings (Thanos, Mimir: a store did not answer), print the warnings and send "
        "partial_response=true; by default warnings are errors and partial_response=false is sent (default: off)",
    )
    source.add_argument(
        "--dedup",
        action="store_true",
        help="ask Thanos Query to deduplicate HA replicas (sends dedup=true) (default: off)",
    )
    source.add_argument(
        "--replica-label",
        action="append",
        type=replica_label,
        default=[],
        metavar="NAME",
        help="a label that tells the copies of an HA pair of Prometheus servers apart (their external labels): "
        "each node's series are read from one copy; repeatable (default: "
        f"{', '.join(REPLICA_LABELS)}, always recognised)",
    )
    window = parent.add_argument_group("time window")
    window.add_argument("--since", default="30d", metavar="DURATION", help="look back this far (default: %(default)s)")
    window.add_argument("--start", metavar="TIME", help="window start: RFC 3339 or unix seconds (overrides --since)")
    window.add_argument("--end", metavar="TIME", help="window end: RFC 3339, unix seconds or 'now' (default: now)")
    window.add_argument(
        "--settle",
        type=duration_seconds,
        default=DEFAULT_SETTLE_SECONDS,
        metavar="DURATION",
        help="a run that ended less long ago, whose final samples are not all in the store yet, is listed as "
        "still settling (not measured); 0 reports it as it is (default: 1m)",
    )
    return parent


def replica_label(text: str) -> str:
    """--replica-label's label name; a usage error for what is not a label name or cannot tell replicas apart."""
    name = text.strip()
    if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name):
        raise argparse.ArgumentTypeError(f"expected a label name such as prometheus_replica, not {text!r}")
    if name in NOT_REPLICA_LABELS:
        raise argparse.ArgumentTypeError(
            f"{name} is a label of the data itself, not one that tells HA replicas apart: name the external label "
            "whose value differs between the Prometheus servers of the pair (e.g. replica)"
        )
    return name


def duration_seconds(text: str) -> float:
    """A duration flag's seconds (``--settle``), in the duration grammar of ``--since``; a usage error otherwise."""
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def interval_seconds(text: str) -> float:
    """An interval flag's seconds (``--expected-interval``): a duration longer than 0; a usage error otherwise."""
    seconds = duration_seconds(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"an interval must be longer than 0, e.g. 15s or 1s, not {text!r}")
    return seconds


MATCH_HELP = 'label matchers on impact_run_info, e.g. \'{experiment="mobilenet",set="conv32"}\''


def selection_parser() -> argparse.ArgumentParser:
    """Which runs ``runs`` and ``archive`` take."""
    parent = argparse.ArgumentParser(add_help=False)
    runs = parent.add_argument_group("runs")
    runs.add_argument(
        "--match",
        action="append",
        default=[],
        metavar="MATCHERS",
        help=f"{MATCH_HELP}; repeat for runs matching any (default: every run)",
    )
    runs.add_argument(
        "--run-dir",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="a run directory (run.json from track_run, impact-run or ImpactTracker, or an archive), an "
        "experiment-impact-tracker 0.1 log directory, or a directory above them; repeat for more",
    )
    return parent


def carbon_parser() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("carbon (docs/reporting.md)")
    group.add_argument("--carbon-intensity", type=float, metavar="G_PER_KWH", help="grid intensity in gCO2eq/kWh")
    group.add_argument(
        "--region",
        metavar="CODE",
        help="look the intensity up by country (FR), US state (US-CA), Canadian or Chinese province (CA-QC, CN-BJ) "
        "or cloud region (gcp:europe-west1, aws:us-east-1, azure:westeurope); 'impact-report regions' lists them; "
        "it wins over the regions the exporters export (default: each host's region, else the world average)",
    )
    group.add_argument(
        "--carbon-intensity-query",
        metavar="PROMQL",
        help="a Prometheus series of gCO2eq/kWh, integrated against each run's power",
    )
    group.add_argument(
        "--pue",
        type=float,
        help=f"power usage effectiveness of the facility (default: ${carbon.OVERRIDE_PUE_ENV} if set, else "
        f"{carbon.DEFAULT_PUE}, as in Henderson et al.)",
    )
    return parent


def measurement_parser() -> argparse.ArgumentParser:
    """What the reporter is told about how the data was collected."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("measurement")
    group.add_argument(
        "--expected-interval",
        type=interval_seconds,
        metavar="DURATION",
        help="the scrape interval the data should have (e.g. 1s): coverage is computed against it, so data "
        "federated or downsampled to a coarser spacing reads as poorly covered (default: each node's own "
        "median sample spacing)",
    )
    return parent


RUNS_DESCRIPTION = """\
One row per run, computed from its raw samples (docs/reporting.md).

The table fits 100 columns for typical runs: long text is cut with "…", numbers have three
significant figures in a unit chosen per value, and a value a run lacks is left blank.
  run          the run id: whole up to 16 characters, else (a uuid) its first 8 characters,
               more when needed to tell the rows apart
  experiment, set, labels
               as the run was registered; labels as name=value
  start (UTC)  when the run started
  duration     from start to end (to the last sample for a run still active)
  energy       IT energy of every component, before PUE: mJ, J, Wh, kWh or MWh
  CO2eq        kWh x PUE x grid intensity: µg, mg, g, kg or t; the line under the table
               gives the PUE and the intensity
  coverage     the share of the run its samples cover: below 100% Prometheus missed scrapes
               (against --expected-interval when given, else each node's own spacing)
  spacing      (--wide; else a note under the table) how far apart the run's samples are:
               each node's median, the coarsest; peak power is over intervals of it
A run whose figures cannot be computed (no energy samples, say) is listed as "not measured",
with the reason under the table, and the exit status is then 1.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="impact-report",
        description="Turn experiment runs measured by impact-exporter into numbers a paper can cite.",
        epilog="Exit status: 0 success, 1 no matching runs or a run without data, 2 bad usage or Prometheus "
        "unreachable or refusing the query.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    runs = commands.add_parser(
        "runs",
        parents=[prometheus_parser(), selection_parser(), carbon_parser(), measurement_parser()],
        help="one row per run: energy, CO2eq, coverage",
        description=RUNS_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    runs.add_argument(
        "--format",
        choices=["table", "csv", "json"],
        default="table",
        help="table: for reading (above); csv: one row per run at full precision, the same columns on every "
        "machine (cpu/dram/gpu energy in J and their methods, empty where a run has none), one label.<name> "
        "column per label, not_measured with the reason; json: every figure, with hosts and methods "
        "(default: %(default)s)",
    )
    runs.add_argument(
        "--wide",
        action="store_true",
        help="table: nothing cut or shortened: the full run id, every label, the start to the second, energy "
        "per component, how each was measured, and why a run was not measured",
    )
    archive = commands.add_parser(
        "archive",
        parents=[prometheus_parser(), selection_parser()],
        help="save runs' samples and metadata into run directories",
        description="Save each selected run into OUT/<run_id>/ (run.json and samples.csv), so reports can be made "
        "after Prometheus has dropped the data (15 days by default).",
    )
    archive.add_argument("--out", type=Path, required=True, metavar="DIR", help="where the run directories go")
    appendix = commands.add_parser(
        "appendix",
        parents=[prometheus_parser(), carbon_parser(), measurement_parser(), build_parser_flags()],
        help="per-run, summary and comparison appendices in LaTeX/PDF",
        description="Write, for each experiment set, one page per run (<out>/<set>/0.pdf ...) and a summary "
        "(<out>/<set>/summary.pdf), and for each --compare pair the treatment effect of the first set versus the "
        "second (<out>/<A>_v_<B>.pdf), each beside its .tex, a .fragment.tex to \\input{} into a paper, and "
        "<out>/appendix.json with every number printed.",
    )
    appendix.add_argument(
        "--experiment-set-names", nargs="+", required=True, metavar="NAME", help="the sets' names, in order"
    )
    appendix.add_argument(
        "--match",
        action="append",
        default=[],
        metavar="MATCHERS",
        help=f"{MATCH_HELP}; give one per set, in the order of the names",
    )
    appendix.add_argument(
        "--run-dirs",
        action="append",
        nargs="+",
        default=[],
        type=Path,
        metavar="DIR",
        help="the run directories of one set (or experiment-impact-tracker 0.1 log directories, or directories above "
        "them); give the flag once per set, in the order of the names",
    )
    appendix.add_argument(
        "--compare",
        action="append",
        nargs=2,
        default=[],
        metavar=("SET_A", "SET_B"),
        help="compare set A (the treatment) with set B; repeat for more pairs",
    )
    appendix.add_argument("--out", type=Path, default=Path("appendix"), metavar="DIR", help="(default: %(default)s)")
    appendix.set_defaults(usage=appendix)  # so set-name mistakes end in the appendix command's usage error
    regions = commands.add_parser(
        "regions",
        help="the grid regions --region knows, with intensity, gas, year and source",
        description="List the bundled table of grid carbon intensities (reporter/data/carbon_intensity.csv, "
        "docs/reporting.md): every code --region and impact-exporter --carbon.region accept, with its annual "
        "average in g/kWh, whether it counts CO2e or CO2 only, its year and its source.",
    )
    regions.add_argument(
        "search", nargs="?", metavar="TEXT", help="only regions whose code or name contains TEXT, in any case"
    )
    regions.add_argument(
        "--format",
        choices=["table", "csv"],
        default="table",
        help="table: one line per region; csv: every column, the basis too (default: %(default)s)",
    )
    return parser


def build_parser_flags() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--no-pdf", action="store_true", help="write the .tex files only; do not run LuaLaTeX")
    return parent


def prometheus_client(args: argparse.Namespace, url: str | None) -> PrometheusClient:
    """A client for ``url`` (else --prometheus, else the default) with the command line's auth and TLS."""
    token_file = args.bearer_token_file
    token = token_file.read_text().strip() if token_file else os.environ.get("PROMETHEUS_TOKEN")
    basic = args.basic_auth or os.environ.get("PROMETHEUS_BASIC_AUTH")
    user, _, password = basic.partition(":") if basic else ("", "", "")
    return PrometheusClient(
        args.prometheus or url or DEFAULT_PROMETHEUS,
        token=token,
        basic_auth=(user, password) if basic else None,
        ca_bundle=args.ca_bundle,
        insecure=args.insecure,
        timeout=args.timeout,
        headers=dict(args.header),
        allow_partial=args.allow_partial,
        dedup=args.dedup,
    )


def http_header(text: str) -> tuple[str, str]:
    """--header NAME=VALUE as (name, value); argparse turns the error into a usage message."""
    name, equals, value = text.partition("=")
    if not equals or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name.strip()):
        raise argparse.ArgumentTypeError(
            f"expected NAME=VALUE with an HTTP header name, e.g. X-Scope-OrgID=lab, not {text!r}"
        )
    return name.strip(), value.strip()


def run_reader(args: argparse.Namespace, url: str | None) -> PrometheusRuns:
    """Reads runs from ``url`` (as ``prometheus_client`` picks it) with the command line's ``--settle`` and
    ``--replica-label``."""
    return PrometheusRuns(
        prometheus_client(args, url),
        settle_seconds=getattr(args, "settle", DEFAULT_SETTLE_SECONDS),
        replica_labels=args.replica_label,
    )


def time_window(args: argparse.Namespace) -> tuple[float, float]:
    now = time.time()
    end = parse_time(args.end, now=now) if args.end else now
    start = parse_time(args.start, now=now) if args.start else end - parse_duration(args.since)
    if start >= end:
        raise ValueError(f"the window is empty: start {args.start or args.since} is not before end {args.end or 'now'}")
    return start, end


def progress_printer(stream: Any = sys.stderr) -> Callable[[int, int, str], None] | None:
    """A one-line progress display on a terminal; nothing when stderr is a file or a pipe."""
    if not stream.isatty():
        return None

    def show(number: int, total: int, run_id: str) -> None:
        end = "\n" if number == total else ""
        stream.write(f"\rreading run {number}/{total} {run_id[:40]:<40}{end}")
        stream.flush()

    return show


def select_runs(args: argparse.Namespace) -> list[Run]:
    """The runs named by --run-dir, plus those --match finds (every run when neither is given)."""
    runs: list[Run] = []
    if args.run_dir:
        runs += load_run_dirs(args.run_dir, lambda url: run_reader(args, url))
    if args.match or not args.run_dir:
        start, end = args.window
        runs += run_reader(args, None).load(args.match, start, end, progress_printer())
    return loaded(runs)


def loaded(runs: T) -> T:
    """``runs``, with everything the command holds so far out of the cycle collector's way (gc.freeze): the runs
    stay until the command ends, and every collection while their figures and pages are made would walk their
    millions of objects again (a tenth of an appendix of 10,000 runs)."""
    gc.freeze()
    return runs


def interpret(args: argparse.Namespace) -> None:
    """Check what flags alone can tell, before any data is read: ValueError names the flag that is wrong.

    Adds ``args.window`` (start, end) and, for commands that report carbon, ``args.intensity``.
    """
    args.window = time_window(args)
    run_info_selectors(args.match)
    if hasattr(args, "pue"):
        args.pue = carbon.resolve_pue(args.pue, os.environ)
        args.intensity = carbon.resolve_intensity(
            flag_g_per_kwh=args.carbon_intensity, region=args.region, series_query=args.carbon_intensity_query
        )


def figures_for(args: argparse.Namespace, runs: list[Run]) -> list[Listed]:
    """Each run's figures, or why it has none (a FailedRun), so one unusable run does not hide the others.

    A time-varying intensity is read from Prometheus over each run's window.
    """
    computed = runs_figures(runs, args.intensity, args.pue, intensity_reader(args), args.expected_interval)
    return [
        FailedRun(run, str(result)) if isinstance(result, RunDataError) else result
        for run, result in zip(runs, computed, strict=True)
    ]


def intensity_reader(args: argparse.Namespace) -> Callable[[Run], Series] | None:
    """Reads ``--carbon-intensity-query`` over a run's window through one client; None without that flag."""
    if not args.carbon_intensity_query:
        return None
    client = prometheus_client(args, None)
    return lambda run: intensity_series(client, args.carbon_intensity_query, run)


def intensity_series(client: PrometheusClient, query: str, run: Run) -> Series:
    end = run.end_time or time.time()
    step = max(1.0, (end - run.start_time) / 1000)
    found = client.query_range(query, run.start_time - 3600, end, step)
    if len(found) != 1:
        raise RunDataError(
            f"--carbon-intensity-query must return exactly one series over run {run.run_id}, got {len(found)}"
        )
    return found[0]


def uses_world_average(args: argparse.Namespace, listed: Sequence[Listed]) -> bool:
    """Whether the world average counts in any figure: in a run's intensity, or, with no run measured, in the one
    the command line resolved to (hosts' regions would override it)."""
    figures = [item for item in listed if isinstance(item, RunFigures)]
    return any(f.intensity.is_default for f in figures) if figures else args.intensity.is_default


def print_runs(args: argparse.Namespace, listed: list[Listed]) -> None:
    """Print the runs in the chosen format; the world-average note goes to stderr, or into the JSON's "notes"."""
    if args.format == "json":
        notes = [carbon.world_average_note()] if uses_world_average(args, listed) else []
        document = {"runs": [run_json(item) for item in listed], "notes": notes}
        sys.stdout.write(json_text(document))
        return
    if args.format == "csv":
        csv_frame(listed).to_csv(sys.stdout, index=False)
    else:
        sys.stdout.write(runs_table(listed, args.intensity, args.pue, wide=args.wide))
    if uses_world_average(args, listed):
        print(carbon.world_average_note(), file=sys.stderr)


def list_runs(args: argparse.Namespace) -> None:
    """The ``runs`` command: every selected run is listed; RunDataError afterwards if some could not be measured."""
    listed = figures_for(args, select_runs(args))
    print_runs(args, listed)
    failed = [item for item in listed if isinstance(item, FailedRun)]
    if failed:
        raise RunDataError(
            f"{len(failed)} of {len(listed)} runs not measured ({', '.join(f.run.run_id for f in failed)}): "
            "they are listed with the reason"
        )


def archive_runs(args: argparse.Namespace, runs: list[Run]) -> None:
    """Archive every run that has figures; RunDataError afterwards naming those that were not (settling, no
    start): an archive is read for good, so it must not keep a run's samples before they are complete."""
    skipped = [run for run in runs if run.not_measured]
    for run in runs:
        if not run.not_measured:
            path = write_archive(run, args.out / run.run_id)
            print(f"archived {run.run_id} ({len(run.samples)} samples) to {path.parent}")
    if skipped:
        raise RunDataError(f"{len(skipped)} runs not archived: " + "; ".join(run.not_measured for run in skipped))


def appendix_sets(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[tuple[str, list[Run]]]:
    """Each named set with its runs: the i-th name takes the i-th --match or the i-th --run-dirs."""
    names = args.experiment_set_names
    if len(set(names)) != len(names):
        parser.error("--experiment-set-names: each set needs its own name")
    if args.match and args.run_dirs or len(args.match or args.run_dirs) != len(names):
        parser.error(
            f"give one --match per set, or one --run-dirs per set, for the {len(names)} set name(s) "
            f"(got {len(args.match)} --match and {len(args.run_dirs)} --run-dirs)"
        )
    for pair in args.compare:
        for name in pair:
            if name not in names:
                parser.error(f"--compare {name!r}: not one of the set names {names}")
    if args.run_dirs:
        return [
            (name, load_run_dirs(dirs, lambda url: run_reader(args, url)))
            for name, dirs in zip(names, args.run_dirs, strict=True)
        ]
    start, end = args.window
    reader = run_reader(args, None)
    sets = [
        (name, reader.load([match], start, end, progress_printer()))
        for name, match in zip(names, args.match, strict=True)
    ]
    return loaded(sets)


def write_appendices(args: argparse.Namespace, sets: list[tuple[str, list[Run]]]) -> None:
    """Compute every set's and comparison's figures, write the .tex files and appendix.json, build the PDFs."""
    intensity = args.intensity
    series = intensity_reader(args)
    reports = {name: set_report(name, runs, intensity, args.pue, series, args.expected_interval) for name, runs in sets}
    comparisons = [comparison_report(reports[a], reports[b]) for a, b in args.compare]
    build = not args.no_pdf and latex_available()
    for built in write_appendix(args.out, list(reports.values()), comparisons, build=build):
        if built.overfull:
            print(
                f"{args.prog}: warning: {built.pdf}: {len(built.overfull)} line(s) wider than the page; "
                "please report it with the .tex file",
                file=sys.stderr,
            )
    if not args.no_pdf and not build:
        print(f"{args.prog}: wrote the .tex files but no PDF: {LATEX_INSTALL_HINT}", file=sys.stderr)
    if uses_world_average(args, [f for report in reports.values() for f in report.figures]):
        print(carbon.world_average_note(), file=sys.stderr)
    print(f"appendix written to {args.out}/ ({'PDF and ' if build else ''}.tex files, appendix.json)")


def usage_problem(args: argparse.Namespace) -> int | None:
    """EXIT_USAGE after one line on stderr (prefixed with the command's name) if the flags cannot work; None when
    they can."""
    try:
        interpret(args)
    except ValueError as error:
        print(f"{args.prog}: {error}", file=sys.stderr)
        return EXIT_USAGE
    return None


def run_command(prog: str, run: Callable[[], None]) -> int:
    """Run a command's body, turning every user-facing failure into one line on stderr, prefixed with the
    command's name ``prog``, and an exit code."""
    try:
        run()
    except PartialResponse as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return EXIT_DATA
    except (PrometheusError, OSError) as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (RunDataError, LatexError) as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return EXIT_DATA
    return EXIT_OK


def list_regions(search: str | None, output_format: str) -> int:
    """The ``regions`` command: the table's rows whose code or name contain ``search``; EXIT_USAGE with the closest
    codes when none does."""
    rows = [
        row
        for row in carbon.region_table().values()
        if not search or search.strip().lower() in f"{row.region} {row.name}".lower()
    ]
    if not rows:
        try:
            carbon.lookup_region(search or "")
        except ValueError as error:
            print(f"impact-report: no region matches {search!r}; {error}", file=sys.stderr)
        return EXIT_USAGE
    if output_format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(carbon.TABLE_COLUMNS)
        writer.writerows([r.region, r.name, f"{r.g_per_kwh:g}", r.gas, r.basis, r.year, r.source] for r in rows)
        return EXIT_OK
    code_width = max(len(row.region) for row in rows)
    name_width = max(len(row.name) for row in rows)
    for row in rows:
        value = f"{row.g_per_kwh:g} g{row.gas}/kWh"
        print(f"{row.region:<{code_width}}  {value:>15}  {row.year}  {row.name:<{name_width}}  {row.source}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``impact-report``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.prog = parser.prog
    if args.command == "regions":
        return list_regions(args.search, args.format)
    if (problem := usage_problem(args)) is not None:
        return problem
    if args.command == "runs":
        return run_command(args.prog, lambda: list_runs(args))
    if args.command == "archive":
        return run_command(args.prog, lambda: archive_runs(args, select_runs(args)))
    return run_command(args.prog, lambda: write_appendices(args, appendix_sets(args, args.usage)))


def seed_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="create-compute-appendix",
        parents=[prometheus_parser(), carbon_parser(), measurement_parser(), build_parser_flags()],
        description="The original experiment-impact-tracker command: appendices from run directories. "
        "<output_dir>/<set>/0.pdf ... N.pdf and summary.pdf per set, and <set 1>_v_<set 2>.pdf when "
        "--compare_dirs gives a second set. 'impact-report appendix' does the same from Prometheus queries.",
    )
    parser.add_argument(
        "logdirs",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="run directories of the first set: run.json's, or experiment-impact-tracker 0.1's log directories "
        "(impacttracker/), or directories above them",
    )
    parser.add_argument(
        "--experiment_set_names",
        nargs="+",
        required=True,
        metavar="NAME",
        help="the first set's name, and the second's when --compare_dirs is given",
    )
    parser.add_argument(
        "--compare_dirs",
        nargs="+",
        type=Path,
        default=[],
        metavar="DIR",
        help="run directories of a second set, compared with the first",
    )
    parser.add_argument("--output_dir", type=Path, default=Path("."), metavar="DIR", help="(default: the current one)")
    return parser


ORIGINAL_HTML_FLAGS = (
    "--site_spec",
    "--title",
    "--description",
    "--experiment_set_filters",
    "--executive_summary_variables",
)
"""Flags of experiment-impact-tracker 0.1.x's ``create-compute-appendix``, which built an HTML site from a JSON site
spec of regex filters; this command builds LaTeX/PDF appendices from named sets of directories."""


def original_html_flags(argv: Sequence[str]) -> list[str]:
    """The ORIGINAL_HTML_FLAGS among ``argv`` (as ``--flag`` or ``--flag=value``), before the first ``--``."""
    arguments = list(argv)
    arguments = arguments[: arguments.index("--")] if "--" in arguments else arguments
    return [flag for flag in ORIGINAL_HTML_FLAGS if any(a == flag or a.startswith(f"{flag}=") for a in arguments)]


def seed_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``create-compute-appendix``, with the seed's flags."""
    parser = seed_parser()
    argv = sys.argv[1:] if argv is None else argv
    if html := original_html_flags(argv):
        parser.error(
            f"{', '.join(html)}: experiment-impact-tracker 0.1's HTML site is not built any more; this command writes "
            "LaTeX/PDF appendices: give each set's directories, name the sets with --experiment_set_names (a second "
            "set with --compare_dirs) and the output with --output_dir; 'impact-report appendix --match' selects "
            "runs by label instead of regex filters"
        )
    args = parser.parse_args(argv)
    args.prog = parser.prog
    names = args.experiment_set_names
    if args.compare_dirs and len(names) != 2:
        parser.error("--compare_dirs needs two --experiment_set_names: the first set's and the second's")
    if not args.compare_dirs and len(names) != 1:
        parser.error("give one --experiment_set_names, or two with --compare_dirs")
    args.out = args.output_dir
    args.compare = [tuple(names)] if args.compare_dirs else []
    args.match = []
    if (problem := usage_problem(args)) is not None:
        return problem

    def run() -> None:
        def reader(url: str | None) -> PrometheusRuns:
            return run_reader(args, url)

        sets = [(names[0], load_run_dirs(args.logdirs, reader))]
        if args.compare_dirs:
            sets.append((names[1], load_run_dirs(args.compare_dirs, reader)))
        write_appendices(args, sets)

    return run_command(args.prog, run)


CITATION = r"""@misc{henderson2020systematic,
    title={Towards the Systematic Reporting of the Energy and Carbon Footprints of Machine Learning},
    author={Peter Henderson and Jieru Hu and Joshua Romoff and Emma Brunskill and Dan Jurafsky and Joelle Pineau},
    year={2020},
    eprint={2002.05651},
    archivePrefix={arXiv},
    primaryClass={cs.CY}
}"""
COUNTRY_CODE = re.compile(r"[A-Z]{3}")


def statement_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="generate-carbon-impact-statement",
        parents=[prometheus_parser(), carbon_parser()],
        description="The original experiment-impact-tracker command: print a paper's carbon impact statement (LaTeX) "
        "with the energy and CO2eq of every run under the given directories: run directories, archives, and "
        "experiment-impact-tracker 0.1 log directories, whose carbon uses the intensity they recorded unless "
        "--carbon-intensity or --region is given.",
    )


def statement_text(totals: Totals, intensity: carbon.CarbonIntensity) -> str:
    """The statement paragraph (LaTeX) for ``totals``, then the BibTeX entry it cites."""
    sources = [intensity.source] if not intensity.is_default or totals.world_average else []
    if totals.recorded:
        sources.insert(0, "for experiment-impact-tracker 0.1 logs, the region average each recorded")
    return (
        f"This work contributed {totals.kg_co2eq:.3f} kg of $\\text{{CO}}_{{2eq}}$ to the atmosphere and used "
        f"{totals.kwh_pue:.3f} kWh of electricity ({totals.runs} runs, {totals.hours:.3f} hours in all; the energy "
        f"the machines used times a PUE of {totals.pue:g}; carbon intensity: {literal('; '.join(sources))}). This "
        "statement and the carbon accounting were generated using \\emph{experiment-impact-tracker}"
        f"~\\citep{{henderson2020systematic}}.\n\n{CITATION}"
    )


def statement_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``generate-carbon-impact-statement``: 0.1.x's positional country code is accepted and noted."""
    parser = statement_parser()
    parser.add_argument(
        "logdirs", nargs="+", type=Path, metavar="DIR", help="run or log directories, or directories above them"
    )
    args = parser.parse_args(argv)
    args.prog, args.match = parser.prog, []
    last = args.logdirs[-1]
    if len(args.logdirs) > 1 and COUNTRY_CODE.fullmatch(str(last)) and not last.exists():
        args.logdirs.pop()
        print(
            f"{args.prog}: note: {last}: the social cost of carbon per country is not computed (0.1.x downloaded "
            "its table at every run); the statement gives the energy and the CO2eq",
            file=sys.stderr,
        )
    if (problem := usage_problem(args)) is not None:
        return problem

    def run() -> None:
        reader = intensity_reader(args)
        totals = impact_totals(args.logdirs, lambda url: run_reader(args, url), args.intensity, args.pue, reader)
        print(statement_text(totals, args.intensity))
        if totals.world_average:
            print(carbon.world_average_note(), file=sys.stderr)

    return run_command(args.prog, run)
