"""``impact-exporter``: command-line flags, start-up checks and the process lifecycle."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.registry import CollectorRegistry

from exporter import __version__
from exporter.collector import ImpactCollector
from exporter.host import read_host_info
from exporter.http import ExporterServer
from exporter.sampler import Sampler
from exporter.sources import HardwareNotFound, SourceError
from exporter.sources.procfs import ProcFS
from exporter.sources.rapl import RaplSource

log = logging.getLogger("exporter")

DEFAULT_PORT = 9877
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class Settings:
    """The exporter's configuration, validated."""

    listen_host: str
    listen_port: int
    sysfs: Path
    procfs: Path
    sample_interval_seconds: float
    rapl: bool
    log_level: str


def build_parser() -> argparse.ArgumentParser:
    """The flags, grouped and named the way Prometheus exporters name theirs."""
    parser = argparse.ArgumentParser(
        prog="impact-exporter",
        description=(
            "Sample CPU package and DRAM energy (RAPL) and process CPU time, attribute the energy to processes "
            "and experiment runs, and serve it all as Prometheus metrics."
        ),
        epilog="Metrics are documented in docs/metrics.md; the attribution formula in docs/attribution.md.",
    )
    web = parser.add_argument_group("web")
    web.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=f":{DEFAULT_PORT}",
        metavar="[HOST]:PORT",
        help="address to serve /metrics on; an empty host means every interface (default: %(default)s)",
    )
    paths = parser.add_argument_group("paths")
    paths.add_argument(
        "--path.sysfs", dest="sysfs", type=Path, default=Path("/sys"), metavar="DIR",
        help="sysfs mount point; RAPL zones are read from DIR/class/powercap (default: %(default)s)",
    )
    paths.add_argument(
        "--path.procfs", dest="procfs", type=Path, default=Path("/proc"), metavar="DIR",
        help="procfs mount point; in a container, mount the host's and point here, e.g. /host/proc "
        "(default: %(default)s)",
    )
    collectors = parser.add_argument_group("collectors")
    collectors.add_argument(
        "--collector.rapl", dest="rapl", action=argparse.BooleanOptionalAction, default=True,
        help="read CPU package and DRAM energy from RAPL powercap zones (default: enabled)",
    )
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument(
        "--sample-interval", dest="sample_interval", type=float, default=1.0, metavar="SECONDS",
        help="seconds between two reads of every source; scrapes only read the latest sample "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--log.level", dest="log_level", default="info", choices=["debug", "info", "warning", "error"],
        help="only log messages of this level and above (default: %(default)s)",
    )
    parser.add_argument("--version", action="version", version=f"impact-exporter {__version__}")
    return parser


def parse_listen_address(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``[IPv6]:PORT`` as (host, port); an empty host binds every interface."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"--web.listen-address={value!r}: expected [HOST]:PORT, for example :{DEFAULT_PORT}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "::", int(port_text)


def parse_settings(argv: Sequence[str] | None) -> Settings:
    """Parse and validate flags; a bad flag ends the program through ``parser.error`` (exit code 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        host, port = parse_listen_address(args.listen_address)
    except ValueError as error:
        parser.error(str(error))
    if not (math.isfinite(args.sample_interval) and 0 < args.sample_interval <= 3600):
        parser.error(f"--sample-interval={args.sample_interval}: must be more than 0 and at most 3600 seconds")
    return Settings(
        listen_host=host,
        listen_port=port,
        sysfs=args.sysfs,
        procfs=args.procfs,
        sample_interval_seconds=args.sample_interval,
        rapl=args.rapl,
        log_level=args.log_level,
    )


def open_rapl(settings: Settings) -> RaplSource | None:
    """The RAPL source if enabled and present; raises HardwareUnreadable if present but unreadable."""
    if not settings.rapl:
        return None
    rapl = RaplSource(settings.sysfs)
    try:
        rapl.check_readable()
    except HardwareNotFound as error:
        log.warning("%s; CPU energy will not be measured (pass --no-collector.rapl to silence this)", error)
        return None
    return rapl


def open_server(settings: Settings, registry: CollectorRegistry) -> ExporterServer:
    """The HTTP server bound to the listen address; every interface falls back to IPv4 without IPv6."""
    try:
        return ExporterServer(settings.listen_host, settings.listen_port, registry, __version__)
    except OSError:
        if settings.listen_host != "::":
            raise
        return ExporterServer("0.0.0.0", settings.listen_port, registry, __version__)


def serve(settings: Settings) -> int:
    """Run the exporter until SIGTERM or SIGINT; the exit code says whether start-up worked."""
    try:
        procfs = ProcFS(settings.procfs)
        rapl = open_rapl(settings)
    except SourceError as error:
        log.error("%s", error)
        return EXIT_FAILURE
    sampler = Sampler(procfs, rapl=rapl, interval_seconds=settings.sample_interval_seconds)
    sampler.sample_once()
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ImpactCollector(lambda: sampler.snapshot, read_host_info(settings.procfs), __version__))
    try:
        server = open_server(settings, registry)
    except OSError as error:
        log.error(
            "cannot listen on %s:%s: %s; choose another address with --web.listen-address",
            settings.listen_host, settings.listen_port, error.strerror or error,
        )
        return EXIT_FAILURE
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    sampler.start()
    threading.Thread(target=server.serve_forever, name="impact-http", daemon=True).start()
    log.info("listening on %s, sampling every %ss", server.listen_address, settings.sample_interval_seconds)
    stop.wait()
    log.info("shutting down")
    server.shutdown()
    server.server_close()
    sampler.stop(timeout=5)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``impact-exporter`` and ``python -m exporter``."""
    settings = parse_settings(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    return serve(settings)
