"""``impact-exporter``: command-line flags, start-up checks and the process lifecycle."""

from __future__ import annotations

import argparse
import gc
import grp
import ipaddress
import logging
import math
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType

from prometheus_client.registry import CollectorRegistry

from experiment_impact_tracker.durations import parse_duration
from impact_exporter import __version__
from impact_exporter.api import RunAPI
from impact_exporter.bodies import SharedBodies
from impact_exporter.cgroups import CgroupFS, Operators
from impact_exporter.cloud import METADATA_URL, PROVIDERS, region_code, region_from_metadata
from impact_exporter.collector import ImpactCollector
from impact_exporter.connections import ConnectionLimits, Connections, descriptor_budget
from impact_exporter.groups import ProcessGroups
from impact_exporter.host import read_host_info
from impact_exporter.http import ExporterServer, Listeners, UnixExporterServer
from impact_exporter.ledger import Ledger
from impact_exporter.limits import Limits, add_limit_flags, limits_from_args
from impact_exporter.paths import UnsafePath, check_directory
from impact_exporter.runs import RunRegistry
from impact_exporter.sampler import Sampler
from impact_exporter.scheduling import ScrapesFirst
from impact_exporter.settling import RunSettler
from impact_exporter.sources import SourceError
from impact_exporter.sources.energy import CpuEnergySource
from impact_exporter.sources.nvml import NvmlSource
from impact_exporter.sources.opening import open_cpu_energy, open_gpus
from impact_exporter.sources.procfs import MEMORY_PSS, MEMORY_RSS, ProcFS, parse_status_effective_capabilities
from impact_exporter.store import open_store
from impact_exporter.webconfig import WebConfig, load_web_config

log = logging.getLogger("impact_exporter")

DEFAULT_PORT = 9877
EXIT_OK, EXIT_FAILURE = 0, 1
CAP_SYS_PTRACE = 19  # its bit in the capability sets (linux/capability.h)
EXIT_UNSAFE_PATH = 78
"""A socket or state directory other users could change (EX_CONFIG of sysexits.h: a configuration to fix)."""
GC_FIRST_GENERATION_THRESHOLD = 10_000
"""Net allocations of container objects between two collections of CPython's youngest generation (default 700)."""


@dataclass(frozen=True)
class Settings:
    """The exporter's configuration, validated."""

    listen_host: str
    listen_port: int
    sysfs: Path
    procfs: Path
    sample_interval_seconds: float
    cpu_source: str
    cpu_tdp_watts: float | None
    cpu_idle_fraction: float
    dram_watts_per_gib: float | None
    gpu_source: str
    gpu_devices: tuple[str, ...] | None
    gpu_idle_watts: float | None
    gpu_idle_attribution: str
    log_level: str
    api_socket: Path | None
    api_socket_gid: int | None
    api_token: str | None
    state_dir: Path
    retain_finished_seconds: float
    limits: Limits
    web_config: WebConfig | None = None
    memory: str = MEMORY_RSS
    connection_limits: ConnectionLimits = ConnectionLimits()
    cgroupfs: Path = Path("/sys/fs/cgroup")
    cgroup_operators_gid: int | None = None
    carbon_region: str = ""
    carbon_region_from: str | None = None
    metadata_url: str = METADATA_URL


def build_parser() -> argparse.ArgumentParser:
    """The flags, grouped and named the way Prometheus exporters name theirs."""
    parser = argparse.ArgumentParser(
        prog="impact-exporter",
        description=(
            "Sample CPU package and DRAM energy (RAPL, or an estimate without it) and process CPU time, attribute "
            "the energy to processes "
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
    web.add_argument(
        "--web.config.file",
        dest="web_config_file",
        type=Path,
        metavar="FILE",
        help="TLS and basic auth for that address, in the Prometheus exporter-toolkit's web config format "
        "(tls_server_config, basic_auth_users; docs/deployment.md) (default: none: plain HTTP, no credentials)",
    )
    add_connection_flags(web)
    paths = parser.add_argument_group("paths")
    paths.add_argument(
        "--path.sysfs",
        dest="sysfs",
        type=Path,
        default=Path("/sys"),
        metavar="DIR",
        help="sysfs mount point; RAPL zones are read from DIR/class/powercap (default: %(default)s)",
    )
    paths.add_argument(
        "--path.procfs",
        dest="procfs",
        type=Path,
        default=Path("/proc"),
        metavar="DIR",
        help="procfs mount point; in a container, mount the host's and point here, e.g. /host/proc "
        "(default: %(default)s)",
    )
    paths.add_argument(
        "--path.cgroupfs",
        dest="cgroupfs",
        type=Path,
        default=Path("/sys/fs/cgroup"),
        metavar="DIR",
        help="cgroup mount point, where cgroup runs' processes are read: the unified (v2) hierarchy there or in "
        "DIR/unified, v1 hierarchies in DIR/CONTROLLER (default: %(default)s)",
    )
    cpu = parser.add_argument_group("CPU energy")
    cpu.add_argument(
        "--cpu.source",
        dest="cpu_source",
        choices=["auto", "rapl", "estimate", "none"],
        default="auto",
        help="rapl: read package and DRAM energy from RAPL powercap counters, and fail at start-up if they "
        "cannot be read; estimate: model package power from CPU utilisation and the CPU's TDP (about +-30%%, "
        "see docs/attribution.md); auto: RAPL when readable, else the estimate with a warning; none: measure "
        "no CPU energy, only CPU time (default: %(default)s)",
    )
    cpu.add_argument(
        "--cpu.tdp-watts",
        dest="cpu_tdp_watts",
        type=float,
        metavar="WATTS",
        help="the estimate's TDP of all packages together (default: from a table of CPU models, else 10 W per "
        "logical CPU)",
    )
    cpu.add_argument(
        "--cpu.idle-fraction",
        dest="cpu_idle_fraction",
        type=float,
        default=0.1,
        metavar="FRACTION",
        help="the estimate's idle power as a fraction of the TDP (default: %(default)s)",
    )
    cpu.add_argument(
        "--cpu.dram-watts-per-gib",
        dest="dram_watts_per_gib",
        type=float,
        metavar="WATTS",
        help="the estimate's DRAM power per GiB of used memory (default: DRAM is not estimated)",
    )
    api = parser.add_argument_group("run API")
    api.add_argument(
        "--api.socket",
        dest="api_socket",
        type=Path,
        default=Path("/run/impact-exporter/api.sock"),
        metavar="PATH",
        help="Unix socket through which experiments on this node start and stop runs; the kernel tells the "
        "exporter who the caller is, so users can only register their own processes (default: %(default)s)",
    )
    api.add_argument(
        "--no-api.socket",
        dest="api_socket",
        action="store_const",
        const=None,
        help="serve no Unix socket",
    )
    api.add_argument(
        "--api.socket-group",
        dest="api_socket_group",
        metavar="GROUP",
        help="group that owns the socket (mode 0660), so its members may mark runs (default: the exporter's group)",
    )
    api.add_argument(
        "--api.token-file",
        dest="api_token_file",
        type=Path,
        metavar="FILE",
        help="also serve the run API over TCP on the metrics port, to requests with 'Authorization: Bearer "
        "<the file's content>'; on an address other than loopback only with TLS (--web.config.file); "
        "without this flag the TCP run API is off",
    )
    api.add_argument(
        "--state-dir",
        dest="state_dir",
        type=Path,
        default=Path("/var/lib/impact-exporter"),
        metavar="DIR",
        help="where runs are stored (SQLite), so they survive restarts (default: %(default)s)",
    )
    api.add_argument(
        "--runs.retain-finished",
        dest="retain_finished",
        default="15m",
        metavar="DURATION",
        help="how long finished runs stay in /metrics so Prometheus scrapes their final values; they stay in "
        "the store for --store.retain-finished (default: %(default)s)",
    )
    api.add_argument(
        "--runs.cgroup-operators",
        dest="cgroup_operators",
        metavar="GROUP",
        help="group whose members may, like root, register cgroup runs (every process in a cgroup, e.g. a Slurm "
        "job's) for any user, and read and stop them (default: root only)",
    )
    add_limit_flags(parser)
    gpu = parser.add_argument_group("NVIDIA GPUs")
    gpu.add_argument(
        "--gpu.source",
        dest="gpu_source",
        choices=["auto", "nvml", "none"],
        default="auto",
        help="nvml: read GPUs through NVML and fail at start-up without a driver; auto: NVML when a driver and a "
        "GPU are there, else no GPU metrics; none: no GPU metrics (default: %(default)s)",
    )
    gpu.add_argument(
        "--gpu.devices",
        dest="gpu_devices",
        metavar="LIST",
        help="only these GPUs, as CUDA_VISIBLE_DEVICES lists them: NVML indexes or UUIDs, comma-separated "
        "(default: every GPU)",
    )
    gpu.add_argument(
        "--gpu.idle-watts",
        dest="gpu_idle_watts",
        type=float,
        metavar="WATTS",
        help="a GPU's idle power (default: the lowest power seen with no process on it)",
    )
    gpu.add_argument(
        "--gpu.idle-attribution",
        dest="gpu_idle_attribution",
        choices=["share", "none"],
        default="share",
        help="share: a GPU's idle energy is split among the processes holding it; none: it stays unattributed "
        "(default: %(default)s)",
    )
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument(
        "--sample-interval",
        dest="sample_interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between two reads of every source; scrapes only read the latest sample (default: %(default)s)",
    )
    sampling.add_argument(
        "--collector.memory",
        dest="memory",
        choices=[MEMORY_RSS, MEMORY_PSS],
        default=MEMORY_RSS,
        help="the memory of a run's processes, by which DRAM energy is split: rss, the resident set size from "
        "/proc/<pid>/statm, readable without privileges, counts pages shared between processes once per process; "
        "pss, the proportional set size from /proc/<pid>/smaps_rollup, counts them once in all, but needs "
        "ptrace-read access to every tracked process: CAP_SYS_PTRACE for other users' processes, and in a "
        "container an AppArmor profile that allows it (a process it cannot read counts its RSS) "
        "(default: %(default)s)",
    )
    add_carbon_flags(parser)
    parser.add_argument(
        "--log.level",
        dest="log_level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="only log messages of this level and above (default: %(default)s)",
    )
    parser.add_argument("--version", action="version", version=f"impact-exporter {__version__}")
    return parser


def add_carbon_flags(parser: argparse.ArgumentParser) -> None:
    """Where the host's grid is, exported on impact_host_info{region} for the reporter (exporter/cloud.py)."""
    carbon = parser.add_argument_group("carbon")
    where = carbon.add_mutually_exclusive_group()
    where.add_argument(
        "--carbon.region",
        dest="carbon_region",
        default="",
        metavar="CODE",
        help="the grid region this host draws from, as the reporter's table names it: a country (FR), a "
        "subdivision (US-CA, CA-QC, CN-BJ) or PROVIDER:REGION (aws:us-east-1, gcp:europe-west1, azure:westeurope); "
        "'impact-report regions' lists them; reports use it for this host's energy unless --region or "
        "--carbon-intensity is given there (default: none)",
    )
    where.add_argument(
        "--carbon.region-from",
        dest="carbon_region_from",
        choices=PROVIDERS,
        help="read the region once at start-up from this cloud provider's instance metadata service; on "
        "failure, a warning and no region (default: off)",
    )
    carbon.add_argument(
        "--carbon.metadata-url",
        dest="metadata_url",
        default=METADATA_URL,
        metavar="URL",
        help="where --carbon.region-from finds the instance metadata service (default: %(default)s)",
    )


def add_connection_flags(web: argparse._ArgumentGroup) -> None:
    """The bounds on connections (exporter/connections.py), on both listeners."""
    default = ConnectionLimits()
    web.add_argument(
        "--web.max-connections",
        dest="max_connections",
        type=int,
        default=default.per_listener,
        metavar="N",
        help="open connections each listener (TCP, Unix socket) holds at most: a new one closes the connection "
        "that has waited longest for a request, or waits in the kernel's queue while every one is busy "
        "(default: %(default)s)",
    )
    web.add_argument(
        "--web.max-connections-per-client",
        dest="max_connections_per_client",
        type=int,
        default=default.per_client,
        metavar="N",
        help="open connections one client holds at most on a listener: one address on TCP, one user on the Unix "
        "socket (root is not capped); more are answered 503 (default: %(default)s)",
    )
    for name, help_text, seconds in (
        ("idle", "a kept-alive connection may wait for its next request", default.idle_timeout_seconds),
        ("read", "a request's line, headers and body may take to arrive", default.read_timeout_seconds),
        ("write", "a client may take to read a response", default.write_timeout_seconds),
    ):
        web.add_argument(
            f"--web.{name}-timeout",
            dest=f"{name}_timeout",
            default=f"{seconds:g}s",
            metavar="DURATION",
            help=f"how long {help_text} before the connection is closed (default: %(default)s)",
        )


def connection_limits(args: argparse.Namespace) -> ConnectionLimits:
    """The connection flags, validated; ValueError names the flag."""
    for flag, value in (
        ("--web.max-connections", args.max_connections),
        ("--web.max-connections-per-client", args.max_connections_per_client),
    ):
        if value < 1:
            raise ValueError(f"{flag}={value}: must be at least 1")
    timeouts = {}
    for name in ("idle", "read", "write"):
        seconds = parse_duration(getattr(args, f"{name}_timeout"))
        if not seconds > 0:
            raise ValueError(f"--web.{name}-timeout={getattr(args, f'{name}_timeout')}: must be more than 0")
        timeouts[name] = seconds
    return ConnectionLimits(
        per_listener=args.max_connections,
        per_client=args.max_connections_per_client,
        idle_timeout_seconds=timeouts["idle"],
        read_timeout_seconds=timeouts["read"],
        write_timeout_seconds=timeouts["write"],
    )


def parse_listen_address(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``[IPv6]:PORT`` as (host, port); an empty host binds every interface."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"--web.listen-address={value!r}: expected [HOST]:PORT, for example :{DEFAULT_PORT}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "::", int(port_text)


def read_token(path: Path) -> str:
    """The bearer token in ``path``, stripped of surrounding whitespace."""
    try:
        token = path.read_text().strip()
    except OSError as error:
        raise ValueError(f"--api.token-file={path}: {error.strerror or error}") from error
    if not token:
        raise ValueError(f"--api.token-file={path}: the file is empty")
    return token


def group_id(name: str, flag: str = "--api.socket-group") -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"{flag}={name}: no such group") from None


def parse_settings(argv: Sequence[str] | None) -> Settings:
    """Parse and validate flags; a bad flag ends the program through ``parser.error`` (exit code 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        host, port = parse_listen_address(args.listen_address)
        retain = parse_duration(args.retain_finished)  # raises ValueError naming the accepted forms
        token = read_token(args.api_token_file) if args.api_token_file else None
        gid = group_id(args.api_socket_group) if args.api_socket_group else None
        operators = group_id(args.cgroup_operators, "--runs.cgroup-operators") if args.cgroup_operators else None
        limits = limits_from_args(args)
        web_config = load_web_config(args.web_config_file) if args.web_config_file else None
        connection_caps = connection_limits(args)
        carbon_region = region_code(args.carbon_region) if args.carbon_region else ""
    except ValueError as error:
        parser.error(str(error))
    if token is not None and not is_loopback(host) and (web_config is None or web_config.tls is None):
        parser.error(
            f"--api.token-file: the run API's bearer token would cross the network in clear text on "
            f"{args.listen_address}; serve TLS with --web.config.file (tls_server_config), or listen on loopback "
            f"only, e.g. --web.listen-address=127.0.0.1:{port}"
        )
    if args.gpu_idle_watts is not None and not (math.isfinite(args.gpu_idle_watts) and args.gpu_idle_watts >= 0):
        parser.error(f"--gpu.idle-watts={args.gpu_idle_watts}: must be a number of watts >= 0")
    if not (math.isfinite(args.sample_interval) and 0 < args.sample_interval <= 3600):
        parser.error(f"--sample-interval={args.sample_interval}: must be more than 0 and at most 3600 seconds")
    return Settings(
        listen_host=host,
        listen_port=port,
        sysfs=args.sysfs,
        procfs=args.procfs,
        sample_interval_seconds=args.sample_interval,
        cpu_source=args.cpu_source,
        cpu_tdp_watts=args.cpu_tdp_watts,
        cpu_idle_fraction=args.cpu_idle_fraction,
        dram_watts_per_gib=args.dram_watts_per_gib,
        gpu_source=args.gpu_source,
        gpu_devices=tuple(d.strip() for d in args.gpu_devices.split(",") if d.strip()) if args.gpu_devices else None,
        gpu_idle_watts=args.gpu_idle_watts,
        gpu_idle_attribution=args.gpu_idle_attribution,
        log_level=args.log_level,
        api_socket=args.api_socket,
        api_socket_gid=gid,
        api_token=token,
        state_dir=args.state_dir,
        retain_finished_seconds=retain,
        limits=limits,
        web_config=web_config,
        memory=args.memory,
        connection_limits=connection_caps,
        cgroupfs=args.cgroupfs,
        cgroup_operators_gid=operators,
        carbon_region=carbon_region,
        carbon_region_from=args.carbon_region_from,
        metadata_url=args.metadata_url,
    )


def is_loopback(host: str) -> bool:
    """Whether a listen host reaches only this machine: ``localhost`` or a loopback IP address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def open_energy_source(settings: Settings, procfs: ProcFS) -> CpuEnergySource | None:
    """The CPU energy source ``--cpu.source`` asks for; SourceError when it cannot work on this machine."""
    return open_cpu_energy(
        settings.cpu_source,
        settings.sysfs,
        procfs,
        settings.cpu_tdp_watts,
        settings.cpu_idle_fraction,
        settings.dram_watts_per_gib,
    )


def open_server(
    settings: Settings,
    registry: CollectorRegistry,
    api: RunAPI,
    scrapes: ScrapesFirst,
    connections: Connections | None = None,
    bodies: SharedBodies | None = None,
) -> ExporterServer:
    """The HTTP server bound to the listen address; every interface falls back to IPv4 without IPv6."""
    server_on = partial(
        ExporterServer,
        port=settings.listen_port,
        registry=registry,
        version=__version__,
        api=api,
        token=settings.api_token,
        scrapes=scrapes,
        web_config=settings.web_config,
        connections=connections,
        bodies=bodies,
    )
    try:
        return server_on(settings.listen_host)
    except OSError:
        if settings.listen_host != "::":
            raise
        return server_on("0.0.0.0")


def warn_if_pss_is_unreadable(memory: str) -> None:
    """Warn when --collector.memory=pss cannot read other users' PSS: without CAP_SYS_PTRACE the kernel lets this
    process read the smaps_rollup of its own user's processes only, and the others then count their RSS, so a
    run's share would mix the two silently."""
    if memory != MEMORY_PSS:
        return
    try:
        capabilities = parse_status_effective_capabilities(Path("/proc/self/status").read_text())
    except (OSError, ValueError):
        return
    if not capabilities >> CAP_SYS_PTRACE & 1:
        log.warning(
            "--collector.memory=pss: without CAP_SYS_PTRACE the PSS of other users' processes cannot be read, and "
            "they count their RSS; give the exporter CAP_SYS_PTRACE (docs/deployment.md) or use "
            "--collector.memory=rss"
        )


def open_gpu_source(settings: Settings, nvml: ModuleType | None = None) -> NvmlSource | None:
    """The NVML source ``--gpu.source`` asks for; ``nvml`` replaces the pynvml module (tests inject a fake)."""
    return open_gpus(settings.gpu_source, settings.gpu_devices, nvml)


def host_region(settings: Settings) -> str:
    """The host's grid region: ``--carbon.region``, else read from the cloud's metadata when asked, else ""."""
    if settings.carbon_region_from:
        return region_from_metadata(settings.carbon_region_from, settings.metadata_url)
    return settings.carbon_region


def check_paths(settings: Settings) -> None:
    """Raise UnsafePath for a state or socket directory that other users could change (exporter/paths.py)."""
    check_directory(settings.state_dir, "--state-dir")
    if settings.api_socket is not None:
        check_directory(settings.api_socket.parent, "--api.socket")


def open_connections(limits: ConnectionLimits) -> Connections:
    """The bounds on both listeners' connections, within the descriptors this process may open less a reserve for
    the sampler; a warning when that allows fewer than the per-listener caps."""
    budget = descriptor_budget()
    if budget < 2 * limits.per_listener:
        log.warning(
            "only %d descriptors are left for connections, fewer than 2 x --web.max-connections=%d: raise the "
            "open files limit (LimitNOFILE= in the systemd unit, ulimit -n) or lower --web.max-connections",
            budget,
            limits.per_listener,
        )
    return Connections(limits, budget)


def serve(settings: Settings, nvml: ModuleType | None = None, stop: threading.Event | None = None) -> int:
    """Run the exporter until SIGTERM or SIGINT (or until ``stop`` is set); the exit code says whether start-up
    worked. ``nvml`` replaces the pynvml module, ``stop`` the signal handlers: both let tests run an exporter
    in a thread with a fake NVML."""
    try:
        procfs = ProcFS(settings.procfs, memory=settings.memory)
        warn_if_pss_is_unreadable(settings.memory)
        energy = open_energy_source(settings, procfs)
        gpu = open_gpu_source(settings, nvml)
    except (SourceError, ValueError) as error:
        log.error("%s", error)
        return EXIT_FAILURE
    try:
        check_paths(settings)
        store, store_error = open_store(settings.state_dir)
    except UnsafePath as error:
        log.error("%s", error)
        return EXIT_UNSAFE_PATH
    if store_error:
        log.error("%s; /metrics works, but new runs are refused until then", store_error)
    scrapes = ScrapesFirst()
    ledger = Ledger()
    groups = ProcessGroups(procfs)
    cgroupfs = CgroupFS(settings.cgroupfs)
    runs = RunRegistry(
        procfs,
        store,
        store_error,
        settings.retain_finished_seconds,
        pause=scrapes.pause,
        ledger=ledger,
        groups=groups,
        limits=settings.limits,
        cgroupfs=cgroupfs,
    )
    # The settler's fresh sample looks the sampler up when called, so it can be the sampler's on_sample.
    settler = RunSettler(runs, lambda: sampler.sample_now(), sample_at_start=gpu is not None)
    sampler = Sampler(
        procfs,
        energy=energy,
        ledger=ledger,
        groups=groups,
        interval_seconds=settings.sample_interval_seconds,
        on_sample=settler.after_sample,
        gpu=gpu,
        gpu_idle_watts=settings.gpu_idle_watts,
        gpu_idle_policy=settings.gpu_idle_attribution,
        pause=scrapes.pause,
        cgroupfs=cgroupfs,
    )
    sampler.sample_once()
    registry = CollectorRegistry(auto_describe=True)
    host = read_host_info(settings.procfs, host_region(settings))
    registry.register(ImpactCollector(lambda: sampler.snapshot, host, __version__, runs=runs.runs))
    api = RunAPI(settler, lambda: sampler.snapshot, settings.limits)
    connections = open_connections(settings.connection_limits)
    bodies = SharedBodies(lambda: (sampler.snapshot, *runs.runs()))
    try:
        servers = [open_server(settings, registry, api, scrapes, connections, bodies)]
    except OSError as error:
        log.error(
            "cannot listen on %s:%s: %s; choose another address with --web.listen-address",
            settings.listen_host,
            settings.listen_port,
            error.strerror or error,
        )
        return EXIT_FAILURE
    if settings.api_socket is not None:
        try:
            servers.append(
                UnixExporterServer(
                    settings.api_socket,
                    registry,
                    __version__,
                    api,
                    settings.api_socket_gid,
                    scrapes,
                    connections,
                    bodies,
                    Operators(settings.cgroup_operators_gid),
                )
            )
        except OSError as error:
            log.error(
                "cannot serve the run API on %s: %s; choose another path with --api.socket",
                settings.api_socket,
                error.strerror or error,
            )
    if stop is None:
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    sampler.start()
    listeners = Listeners(servers)
    listeners.start()
    log.info(
        "listening on %s, sampling every %ss",
        ", ".join(server.listen_address for server in servers),
        settings.sample_interval_seconds,
    )
    stop.wait()
    log.info("shutting down")
    listeners.close()
    sampler.stop(timeout=5)
    runs.close()
    if gpu is not None:
        gpu.close()
    return EXIT_OK


def settle_garbage_collector() -> None:
    """Keep CPython's cycle collector from scanning the exporter's long-lived objects again and again.

    The exporter makes no reference cycles as it runs, yet with the default thresholds each sample's burst of
    short-lived objects sets off collections, and every tenth one scans the whole heap, holding every thread (a
    scrape caught in one waits; docs/performance.md has the figures). So what start-up made (modules, classes:
    most of the heap) is frozen out of collection, and the youngest generation is collected after 10,000 net
    allocations instead of 700. Cycles are still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_FIRST_GENERATION_THRESHOLD, *gc.get_threshold()[1:])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``impact-exporter`` and ``python -m impact_exporter``."""
    settings = parse_settings(argv)
    settle_garbage_collector()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    return serve(settings)
