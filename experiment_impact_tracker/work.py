"""Units of work a run reports (samples, steps, tokens), and its energy per unit: what a notebook, a framework
callback and every report print, named and scaled one way everywhere.

J per sample and J per step read in joules; a token costs so little that it reads per 1,000 tokens in Wh, as
language-model energy is usually quoted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class PerUnit:
    """How energy per one unit of work is reported: its key in JSON, its label, and joules -> that figure."""

    key: str
    label: str
    unit: str  # what the figure is in, e.g. "J/sample"
    factor: float  # the figure = joules / count * factor


PER_UNIT: Mapping[str, PerUnit] = {
    "samples": PerUnit("joules_per_sample", "Energy per sample", "J/sample", 1.0),
    "steps": PerUnit("joules_per_step", "Energy per step", "J/step", 1.0),
    "tokens": PerUnit("wh_per_1000_tokens", "Energy per 1,000 tokens", "Wh/1000 tokens", 1000.0 / 3600.0),
}
WORK_UNITS = tuple(PER_UNIT)
"""The units of work the exporter counts (its API refuses others)."""


def energy_per_unit(joules: float, work_units: Mapping[str, float]) -> dict[str, float]:
    """The run's energy per unit of work, keyed by ``PerUnit.key``, for each unit it counted at least one of."""
    return {
        PER_UNIT[unit].key: joules / count * PER_UNIT[unit].factor
        for unit, count in sorted(work_units.items())
        if unit in PER_UNIT and count > 0
    }
