"""Work over many items in forked processes (impact_reporter.forked): the same results, in order, computed in
other processes, with the runs' samples kept here."""

from __future__ import annotations

import dataclasses
import os

import pytest

from impact_reporter import forked
from impact_reporter.energy import RunFigures, run_figures, runs_figures
from impact_reporter.runs import RunDataError
from tests.reporter.test_energy import FLAT, constant_power_run, make_run


def test_forked_map_gives_every_result_in_order_from_other_processes() -> None:
    numbers = list(range(forked.FORKED_ITEMS + 50))
    here = os.getpid()
    results = forked.forked_map(lambda number: (number * number, os.getpid()), numbers)
    assert [square for square, _ in results] == [number * number for number in numbers]
    assert here not in {pid for _, pid in results}, "the items were computed in forked processes"


def test_forked_map_of_few_items_computes_them_here() -> None:
    here = os.getpid()
    assert forked.forked_map(lambda _: os.getpid(), [1, 2, 3]) == [here] * 3


def test_an_error_in_a_forked_process_reaches_the_caller() -> None:
    def fails_on_seven(number: int) -> int:
        if number == 7:
            raise ValueError("seven")
        return number

    with pytest.raises(ValueError, match="seven"):
        forked.forked_map(fails_on_seven, list(range(forked.FORKED_ITEMS)))


def test_figures_from_forked_processes_equal_those_computed_here_and_keep_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Runs of 1 to 30 W, and one without samples (not measured): the figures computed in forked processes are
    those computed here, each with its own run (samples included) and its error for the unmeasured one."""
    monkeypatch.setattr(forked, "FORKED_ITEMS", 2)
    runs = [
        dataclasses.replace(make_run(constant_power_run(watts, 0.0, 20.0, 0.5, 30.0), end=20.0), run_id=f"r{watts}")
        for watts in range(1, 31)
    ]
    runs.append(dataclasses.replace(runs[0], run_id="empty", samples=runs[0].samples.iloc[:0]))
    computed = runs_figures(runs, FLAT, pue=1.2)
    for run, result in zip(runs[:-1], computed, strict=False):
        assert isinstance(result, RunFigures)
        assert result.run is run
        here = run_figures(run, FLAT, pue=1.2)
        assert result.total_joules == here.total_joules
        assert result.peak_power_watts == here.peak_power_watts
        assert result.coverage == here.coverage
        assert result.power.table().equals(here.power.table())
    assert isinstance(computed[-1], RunDataError) and "no energy samples" in str(computed[-1])
