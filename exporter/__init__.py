"""impact-exporter: energy of CPUs, DRAM and GPUs as Prometheus metrics, attributed to processes and runs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("experiment-impact-tracker")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
