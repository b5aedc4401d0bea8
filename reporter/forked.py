"""Python-bound work over many items, in forked processes that share this one's memory.

A report of 10,000 runs spends most of its time in Python: each run's figures, each page's Jinja rendering.
Threads would take turns on the interpreter; forked processes use the second core. The children inherit the
items (a run's figures hold its samples, too large to send), and only what they compute comes back.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

WORKERS = 2
"""Processes per map: the machines reports run on have a couple of cores to spare, not many."""
FORKED_ITEMS = 200
"""The fewest items worth forking for: fewer are computed here, sooner than processes start."""
_work: tuple[Callable[[Any], Any], Sequence[Any]] | None = None
"""The function and items the children of the current map inherit."""


def forked_map(function: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[function(item) for item in items]``, computed by WORKERS forked processes when there are at least
    FORKED_ITEMS items and the platform forks (here otherwise). ``function`` must not use what a fork cannot
    share, such as an open connection; its results are pickled back."""
    global _work
    if len(items) < FORKED_ITEMS or "fork" not in multiprocessing.get_all_start_methods():
        return [function(item) for item in items]
    _work = (function, items)
    try:
        with ProcessPoolExecutor(max_workers=WORKERS, mp_context=multiprocessing.get_context("fork")) as pool:
            return list(pool.map(_apply, range(len(items)), chunksize=64))
    finally:
        _work = None


def _apply(number: int) -> Any:
    assert _work is not None, "forked_map's children inherit its work"
    function, items = _work
    return function(items[number])
