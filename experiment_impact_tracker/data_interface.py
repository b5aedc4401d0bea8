"""The original experiment-impact-tracker's ``DataInterface``: totals over the runs under some directories::

    from experiment_impact_tracker.data_interface import DataInterface

    data = DataInterface(["runs/"])
    data.kg_carbon, data.total_power, data.exp_len_hours, data.PUE

As in 0.1.x, every directory is walked for runs, and the figures add up over them: ``total_power`` is kWh times the
PUE (not a power), ``exp_len_hours`` the runs' durations in hours, ``kg_carbon`` kg CO2eq, ``PUE`` the PUE used.
It reads experiment-impact-tracker 0.1's log directories (``impacttracker/``) as 0.1.x computed them, and run
directories as the reporter reads them: archived ones offline, the others from the Prometheus their run.json
names (or ``prometheus=``). The computation is the reporter's (``impact_reporter.legacy.impact_totals``), so this
module needs the ``[reporter]`` extra.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from experiment_impact_tracker.extras import missing_modules
from experiment_impact_tracker.rundir import DEFAULT_PROMETHEUS_URL as DEFAULT_URL
from experiment_impact_tracker.rundir import PROMETHEUS_URL_ENV

_MISSING = missing_modules(("numpy", "pandas", "scipy", "jinja2"))
if _MISSING:
    raise ImportError(
        f"experiment_impact_tracker.data_interface needs {', '.join(_MISSING)}, which the [reporter] extra installs: "
        "pip install 'experiment-impact-tracker[reporter]'"
    )

from impact_reporter.carbon import resolve_intensity, resolve_pue  # noqa: E402 (after the check above)
from impact_reporter.legacy import impact_totals  # noqa: E402
from impact_reporter.prometheus import PrometheusClient  # noqa: E402
from impact_reporter.runs import PrometheusRuns  # noqa: E402


class DataInterface:
    """Totals over every run under ``logdirs`` (old logs and run directories alike).

    ``pue`` defaults to ``$OVERRIDE_PUE``, else 1.58. Carbon uses ``carbon_intensity`` (gCO2eq/kWh) or ``region``
    (a code of the reporter's table) when given; otherwise an old log's own recorded region intensity, as 0.1.x
    did, and the world average (475 gCO2eq/kWh) for runs that recorded none. Raises ``RunDataError`` (from
    ``impact_reporter.runs``) when a directory holds no run or a run cannot be read, with a message saying which.
    """

    def __init__(
        self,
        logdirs: Sequence[str | os.PathLike[str]],
        *,
        pue: float | None = None,
        carbon_intensity: float | None = None,
        region: str | None = None,
        prometheus: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        environ = os.environ if environ is None else environ
        intensity = resolve_intensity(flag_g_per_kwh=carbon_intensity, region=region)
        self.PUE = resolve_pue(pue, environ)

        def reader(url: str | None) -> PrometheusRuns:
            return PrometheusRuns(PrometheusClient(prometheus or environ.get(PROMETHEUS_URL_ENV) or url or DEFAULT_URL))

        totals = impact_totals([Path(d) for d in logdirs], reader, intensity, self.PUE)
        self.kg_carbon = totals.kg_co2eq
        self.total_power = totals.kwh_pue
        self.exp_len_hours = totals.hours
        self.runs = totals.runs
