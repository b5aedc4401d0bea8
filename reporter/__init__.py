"""The reporter: reads runs from the Prometheus HTTP API and turns them into paper-ready appendices."""
