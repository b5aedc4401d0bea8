"""impact-exporter: energy of CPUs, DRAM and GPUs as Prometheus metrics, attributed to processes and runs."""


def __getattr__(name: str) -> str:
    """``__version__``, read from the installed metadata on first use: the standalone monitor imports this package
    and must start fast, and importlib.metadata is a tenth of a second of its start."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("experiment-impact-tracker")
    except PackageNotFoundError:  # running from a source tree that was never installed
        value = "0.0.0+unknown"
    globals()["__version__"] = value
    return value
