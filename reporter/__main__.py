"""``python -m impact_reporter`` and the ``impact-report``, ``create-compute-appendix`` and
``generate-carbon-impact-statement`` commands."""

from experiment_impact_tracker.extras import require_extra

REPORTER_MODULES = ("numpy", "pandas", "scipy", "statsmodels", "jinja2", "wcwidth")
"""What the reporter needs beyond the base install (the [reporter] extra)."""


def main() -> int:
    """Run ``impact-report``, or say which extra to install when it is missing."""
    require_extra("impact-report", "reporter", REPORTER_MODULES)
    from impact_reporter.cli import main as report_main  # only once its dependencies are known to be there

    return report_main()


def seed_main() -> int:
    """Run ``create-compute-appendix``, or say which extra to install when it is missing."""
    require_extra("create-compute-appendix", "reporter", REPORTER_MODULES)
    from impact_reporter.cli import seed_main as appendix_main

    return appendix_main()


def statement_main() -> int:
    """Run ``generate-carbon-impact-statement``, or say which extra to install when it is missing."""
    require_extra("generate-carbon-impact-statement", "reporter", REPORTER_MODULES)
    from impact_reporter.cli import statement_main as print_statement

    return print_statement()


if __name__ == "__main__":
    raise SystemExit(main())
