"""``impact-run``: run a command as one tracked run, measuring the command's process tree and nothing else.

The command is forked first and held at a gate before it executes; its pid is registered with the exporter,
and only then does it run. So the run covers the command from its first instruction, a command that ends at once
is still registered, and impact-run's own work is never billed to it. The command gets ``IMPACT_RUN_ID``, so
``track_run``/``ImpactTracker`` inside it use this run instead of starting another.

impact-run then only relays: it forwards SIGINT, SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 to the command (except
signals the kernel sent, such as Ctrl-C at a terminal, which reached the command's process group already),
stops the run when the command exits, and exits as the command did.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from experiment_impact_tracker.client import ExporterClient, parse_address
from experiment_impact_tracker.errors import ImpactTrackerError
from experiment_impact_tracker.extras import require_extra
from experiment_impact_tracker.runs import RUN_ID_ENV, Run
from experiment_impact_tracker.standalone import RUN_DIR_ENV, StandaloneOptions

log = logging.getLogger("experiment_impact_tracker")

EXIT_USAGE = 2
EXIT_TRACKING_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
SI_KERNEL = 0x80  # siginfo si_code of signals the kernel sends itself (terminal Ctrl-C, hangup)

EPILOG = f"""\
examples:
  impact-run --experiment mobilenet --set conv32 --label seed=0 -- python train.py --lr 0.1
  IMPACT_EXPORTER=http://node1:9877 IMPACT_EXPORTER_TOKEN=... impact-run --experiment x -- ./job.sh

exit status:
  the command's own exit status, or 128+N when a signal N killed it (as a shell reports it)
  {EXIT_USAGE}    bad usage: no command, a malformed --label
  {EXIT_TRACKING_FAILED}  --strict, and the run could not be registered; or --logdir cannot be written
       (the command did not run; 125 is what env, timeout and nice use for their own failures)
  {EXIT_CANNOT_EXECUTE}  the command was found but cannot be executed
  {EXIT_NOT_FOUND}  the command was not found

environment:
  IMPACT_EXPORTER        the exporter's run API: unix:///path/to/api.sock (default
                         unix:///run/impact-exporter/api.sock) or http://HOST:PORT
  IMPACT_EXPORTER_TOKEN  bearer token for http:// addresses
  IMPACT_RUN_ID          default for --run-id; impact-run sets it for the command
  IMPACT_RUN_DIR         impact-run sets it for the command when it measures it standalone, so that track_run
                         and ImpactTracker inside join that run rather than start a second monitor
  PROMETHEUS_URL         recorded in --logdir's run.json for the reporter (default http://localhost:9090)

Without --strict, an exporter that cannot be reached is one warning line, and a standalone monitor measures the
command (into --logdir, which impact-report and create-compute-appendix then read with no Prometheus); an
exporter that refuses the run is one warning line, and the command runs untracked.
"""


class CommandError(Exception):
    """The command cannot be started; ``code`` is the exit status a shell would give."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_label(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` as (key, value); the value may contain ``=``, the key must not be empty."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    """The flags, in two groups (the run, the exporter); the command comes after ``--``."""
    parser = argparse.ArgumentParser(
        prog="impact-run",
        usage="%(prog)s --experiment NAME [options] -- CMD [ARG ...]",
        description=(
            "Run CMD as one experiment run: impact-exporter measures CMD and its descendants (CPU time, and the "
            "CPU package and DRAM energy attributed to them) from start to exit."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run = parser.add_argument_group("the run")
    run.add_argument("--experiment", required=True, metavar="NAME", help="experiment name, e.g. mobilenet")
    run.add_argument("--set", metavar="S", help="experiment set the run belongs to, e.g. conv32")
    run.add_argument(
        "--label",
        dest="labels",
        action="append",
        type=parse_label,
        default=[],
        metavar="KEY=VALUE",
        help="a label of the run (Prometheus label name rules); repeat for more",
    )
    run.add_argument(
        "--run-id",
        metavar="ID",
        help="join or create the run with this id, e.g. one id for every node of a distributed job "
        "(default: $IMPACT_RUN_ID, else the exporter picks one)",
    )
    run.add_argument(
        "--logdir", type=Path, metavar="DIR", help="write DIR/run.json describing the run, for the reporter"
    )
    exporter = parser.add_argument_group("the exporter")
    exporter.add_argument(
        "--exporter",
        metavar="ADDRESS",
        help="the exporter's run API (default: $IMPACT_EXPORTER, else unix:///run/impact-exporter/api.sock)",
    )
    exporter.add_argument(
        "--strict",
        action="store_true",
        help=f"only an exporter may measure CMD: exit {EXIT_TRACKING_FAILED} when the run cannot be registered, "
        "rather than measure it standalone or run it untracked",
    )
    standalone = parser.add_argument_group(
        "without an exporter",
        "when no exporter answers, a standalone monitor measures CMD with the exporter's own sources (RAPL, else "
        "an estimate; NVIDIA GPUs through NVML) and writes its samples into --logdir",
    )
    standalone.add_argument(
        "--web.listen-address",
        dest="listen_address",
        metavar="[HOST]:PORT",
        help="serve the run's /metrics here while it runs, for a Prometheus to scrape (needs the [exporter] extra)",
    )
    standalone.add_argument(
        "--sample-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between two samples (default: %(default)s)",
    )
    standalone.add_argument(
        "--path.sysfs", dest="sysfs", default="/sys", metavar="DIR", help="sysfs mount point (default: %(default)s)"
    )
    standalone.add_argument(
        "--path.procfs", dest="procfs", default="/proc", metavar="DIR", help="procfs mount point (default: %(default)s)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARG ...]", help="the command to run")
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Flags and the command; usage errors exit 2 through ``parser.error``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given: put it after --, e.g. impact-run --experiment NAME -- python train.py")
    keys = [key for key, _ in args.labels]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        parser.error(f"--label {', '.join(duplicates)} given more than once")
    if args.exporter:
        try:
            parse_address(args.exporter)
        except ImpactTrackerError as error:
            parser.error(f"--exporter: {error}")
    if not (math.isfinite(args.sample_interval) and 0 < args.sample_interval <= 3600):
        parser.error(f"--sample-interval={args.sample_interval}: must be more than 0 and at most 3600 seconds")
    if args.listen_address is not None:
        host, sep, port = args.listen_address.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            parser.error(f"--web.listen-address={args.listen_address!r}: expected [HOST]:PORT, for example :9878")
        require_extra("impact-run --web.listen-address", "exporter", ["prometheus_client"])
    args.command = command
    return args


def resolve_command(name: str, path: str | None = None) -> str:
    """The file to execute for ``name``, looked up in PATH unless it contains a slash (as a shell does)."""
    if "/" not in name:
        found = shutil.which(name, path=path)
        if found is None:
            raise CommandError(EXIT_NOT_FOUND, f"{name}: command not found")
        return found
    if not os.path.exists(name):
        raise CommandError(EXIT_NOT_FOUND, f"{name}: No such file or directory")
    if os.path.isdir(name):
        raise CommandError(EXIT_CANNOT_EXECUTE, f"{name}: Is a directory")
    if not os.access(name, os.X_OK):
        raise CommandError(EXIT_CANNOT_EXECUTE, f"{name}: Permission denied")
    return name


def exit_status(wait_status: int) -> int:
    """The status a shell reports for a child: its exit code, or 128+N when signal N killed it."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


class GatedChild:
    """A forked child that waits before exec'ing the command until ``release`` (or exits 125 on ``abandon``).

    Signals to forward are blocked in the parent before the fork, so none is lost between fork and the
    supervising loop; the child unblocks them and restores default dispositions just before exec.
    """

    def __init__(self, executable: str, argv: list[str], original_mask: set[signal.Signals]) -> None:
        gate_read, self._gate = os.pipe()
        self._errors, error_write = os.pipe()  # close-on-exec: EOF means exec succeeded
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover (runs in the child, which exec's or _exits)
            self._child(gate_read, error_write, executable, argv, original_mask)
        os.close(gate_read)
        os.close(error_write)

    def _child(
        self, gate_read: int, error_write: int, executable: str, argv: list[str], mask: set[signal.Signals]
    ) -> None:  # pragma: no cover
        code = EXIT_TRACKING_FAILED
        try:
            os.close(self._gate)
            os.close(self._errors)
            for signum in (*FORWARDED_SIGNALS, signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(signum, signal.SIG_DFL)  # as subprocess does: Python ignores SIGPIPE and SIGXFSZ
            message = b""
            while chunk := os.read(gate_read, 4096):
                message += chunk
            verb, _, exported = message.decode().partition(" ")
            if verb == "go":
                env = {**os.environ, **json.loads(exported)}
                code = EXIT_CANNOT_EXECUTE
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                os.execve(executable, argv, env)
        except OSError as error:
            os.write(error_write, f"{error.errno or 0} {error.strerror or error}".encode())
        finally:
            os._exit(code)

    def release(self, exported: Mapping[str, str]) -> tuple[int, str] | None:
        """Let the child exec the command, with ``exported`` added to its environment (IMPACT_RUN_ID, and
        IMPACT_RUN_DIR for a standalone run); the exec's (errno, reason) if it failed."""
        os.write(self._gate, f"go {json.dumps(dict(exported))}".encode())
        os.close(self._gate)
        report = b""
        while chunk := os.read(self._errors, 4096):
            report += chunk
        os.close(self._errors)
        if not report:
            return None
        number, _, reason = report.decode(errors="replace").partition(" ")
        return int(number), reason

    def abandon(self) -> int:
        """Tell the child to exit without running the command, and reap it."""
        os.close(self._gate)
        os.close(self._errors)
        return os.waitpid(self.pid, 0)[1]


def supervise(pid: int) -> int:
    """Forward signals to ``pid`` until it exits; its wait status. The signals must be blocked by the caller."""
    waited = {*FORWARDED_SIGNALS, signal.SIGCHLD}
    while True:
        info = signal.sigtimedwait(waited, 1.0)
        if info is None or info.si_signo == signal.SIGCHLD:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            continue
        if info.si_code == SI_KERNEL:
            continue  # the terminal signalled the whole foreground process group, the command included
        try:
            os.kill(pid, info.si_signo)
        except ProcessLookupError:
            pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``impact-run`` and ``python -m experiment_impact_tracker``."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="impact-run: warning: %(message)s", force=True)
    try:
        executable = resolve_command(args.command[0])
    except CommandError as error:
        print(f"impact-run: {error}", file=sys.stderr)
        return error.code
    client = ExporterClient(args.exporter) if args.exporter else None
    relayed = {*FORWARDED_SIGNALS, signal.SIGCHLD}
    original_mask = signal.pthread_sigmask(signal.SIG_BLOCK, relayed)
    try:
        return run_command(args, executable, client, original_mask)
    finally:
        while signal.sigtimedwait(relayed, 0) is not None:
            pass  # arrived after the command exited: too late to forward, and they must not kill us now
        signal.pthread_sigmask(signal.SIG_SETMASK, original_mask)


def exported_environment(run: Run, run_id: str | None) -> dict[str, str]:
    """What the command's environment gets: the run's id (so code inside joins the run), and the directory of a
    standalone run (so code inside joins it rather than start a second monitor, see
    experiment_impact_tracker/standalone.py)."""
    exported = {RUN_ID_ENV: run.run_id or run_id} if run.run_id or run_id else {}
    if run.standalone_run_dir is not None:
        exported[RUN_DIR_ENV] = str(run.standalone_run_dir.resolve())
    return exported


def run_command(
    args: argparse.Namespace, executable: str, client: ExporterClient | None, original_mask: set[signal.Signals]
) -> int:
    """Fork the gated command, register it, let it run, relay signals, stop the run; the exit status."""
    child = GatedChild(executable, args.command, original_mask)
    try:
        run = Run.start(
            args.experiment,
            set=args.set,
            labels=dict(args.labels),
            pid=child.pid,
            run_id=args.run_id,
            logdir=args.logdir,
            strict=args.strict,
            client=client,
            command=args.command,
            standalone=StandaloneOptions(
                sample_interval_seconds=args.sample_interval,
                sysfs=args.sysfs,
                procfs=args.procfs,
                listen_address=args.listen_address,
            ),
        )
    except ImpactTrackerError as error:
        child.abandon()
        print(f"impact-run: not running {args.command[0]} (--strict): {error}", file=sys.stderr)
        return EXIT_TRACKING_FAILED
    except OSError as error:
        child.abandon()
        print(f"impact-run: cannot write {args.logdir}/run.json: {error.strerror or error}", file=sys.stderr)
        return EXIT_TRACKING_FAILED
    except BaseException:
        child.abandon()
        raise
    failed_exec = child.release(exported_environment(run, args.run_id))
    status = supervise(child.pid)
    run.stop(raise_errors=False)
    if failed_exec is not None:
        number, reason = failed_exec
        print(f"impact-run: {args.command[0]}: {reason}", file=sys.stderr)
        return EXIT_NOT_FOUND if number == errno.ENOENT else EXIT_CANNOT_EXECUTE
    return exit_status(status)
