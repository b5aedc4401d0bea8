"""``python -m impact_exporter`` and the ``impact-exporter`` command."""

from experiment_impact_tracker.extras import require_extra

EXPORTER_MODULES = ("prometheus_client",)
"""What the exporter needs beyond the base install (the [exporter] extra)."""


def main() -> int:
    """Run the exporter, or say which extra to install when it is missing."""
    require_extra("impact-exporter", "exporter", EXPORTER_MODULES)
    from impact_exporter.cli import main as exporter_main  # only once its dependencies are known to be there

    return exporter_main()


if __name__ == "__main__":
    raise SystemExit(main())
