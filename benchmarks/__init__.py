"""Benchmarks of issue #10: exporter overhead, scrape latency, reporter speed and attribution accuracy.

Each module is a script that prints its figures (``python -m benchmarks.<name> --help``);
``python -m benchmarks.run_all`` runs them all with the defaults docs/performance.md quotes.
"""
