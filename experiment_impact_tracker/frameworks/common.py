"""What every framework callback does: start a run when training starts, labelled from the run's configuration
(model name, seed, the hyper-parameters the user picks), count its steps and samples as units of work, stop it
when training ends, and give the figures each framework then logs through its own logger (so they reach
TensorBoard, MLflow or W&B as the training is configured to log).

The logged figures, under ``prefix`` (default ``impact/``): ``energy_joules`` and ``energy_joules_<component>``,
``kg_co2eq`` (energy x PUE x carbon intensity, docs/reporting.md), the work counted (``samples``, ``steps``,
``tokens``) and energy per unit (``joules_per_sample``, ``joules_per_step``, ``wh_per_1000_tokens``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from experiment_impact_tracker.runs import Run, warn
from experiment_impact_tracker.work import energy_per_unit

DEFAULT_PREFIX = "impact/"


class TrainingRun:
    """One training run as a callback sees it: started at the first training hook, stopped at the last."""

    def __init__(
        self,
        experiment: str,
        *,
        set: str | None = None,  # noqa: A002 (track_run's name)
        labels: Mapping[str, Any] | None = None,
        hyperparameters: Iterable[str] = (),
        carbon_intensity: float | None = None,
        region: str | None = None,
        pue: float | None = None,
        logdir: str | None = None,
        strict: bool = False,
        prefix: str = DEFAULT_PREFIX,
        **start_options: Any,
    ) -> None:
        """``hyperparameters``: names looked up in the run's configuration and added as labels. The carbon
        intensity is ``carbon_intensity`` gCO2eq/kWh, else ``region``'s from the reporter's table, else the world
        average; a bad one raises ValueError here, before training. ``start_options`` go to ``Run.start``."""
        from impact_reporter import carbon

        self.experiment = experiment
        self.set = set
        self.labels = {str(name): str(value) for name, value in (labels or {}).items()}
        self.hyperparameters = tuple(hyperparameters)
        self.intensity = carbon.resolve_intensity(flag_g_per_kwh=carbon_intensity, region=region)
        self.pue = carbon.check_pue(carbon.DEFAULT_PUE if pue is None else pue)
        self.logdir = logdir
        self.strict = strict
        self.prefix = prefix
        self.start_options = start_options
        self.run: Run | None = None

    def start(self, config: Mapping[str, Any], model: str | None = None, seed: Any = None) -> Run:
        """Start the run, labelled with ``model``, ``seed`` and the picked hyper-parameters found in ``config``;
        a picked name missing from it is a warning (an error with ``strict``)."""
        labels = dict(self.labels)
        if model is not None:
            labels.setdefault("model", str(model))
        if seed is not None:
            labels.setdefault("seed", str(seed))
        missing = [name for name in self.hyperparameters if name not in config]
        if missing:
            message = (
                f"hyper-parameter(s) {', '.join(missing)} not in the run's configuration ({', '.join(sorted(config))})"
            )
            if self.strict:
                raise KeyError(message)
            warn(message)
        labels |= {name: str(config[name]) for name in self.hyperparameters if name in config}
        self.run = Run.start(
            self.experiment, set=self.set, labels=labels, logdir=self.logdir, strict=self.strict, **self.start_options
        )
        return self.run

    def add_work(self, samples: int = 0, steps: int = 0, tokens: int = 0) -> None:
        if self.run is not None:
            self.run.add_work(samples=samples, steps=steps, tokens=tokens)

    def stop(self) -> dict[str, float]:
        """Stop the run and return the figures to log (empty for a run that was not tracked)."""
        if self.run is None:
            return {}
        final = self.run.stop() or {}
        return self.figures(final, self.run.work_units)

    def figures(self, final: Mapping[str, Any], work_units: Mapping[str, int]) -> dict[str, float]:
        """The figures to log, named under ``prefix``, from the exporter's final run object and the work counted."""
        from impact_reporter import carbon

        if not final:
            return {}
        energy = {component: float(joules) for component, joules in (final.get("energy_joules") or {}).items()}
        total = sum(energy.values())
        figures = {"energy_joules": total, **{f"energy_joules_{c}": joules for c, joules in sorted(energy.items())}}
        if self.intensity.g_per_kwh is not None:
            figures["kg_co2eq"] = carbon.kg_co2eq_from_joules(total, self.intensity.g_per_kwh, self.pue)
        figures |= {unit: float(count) for unit, count in sorted((final.get("work_units") or work_units).items())}
        figures |= energy_per_unit(total, final.get("work_units") or work_units)
        return {self.prefix + name: value for name, value in figures.items()}


def picked(config: Any) -> dict[str, Any]:
    """A configuration object (a dict, an argparse Namespace, a dataclass, a transformers config) as a dict."""
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    return dict(vars(config))
