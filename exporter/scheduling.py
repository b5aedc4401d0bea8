"""Sharing the interpreter between scrapes and the sampler: a scrape renders first, the sampler yields to it.

CPython runs one thread at a time, and a long sample (1,000 runs) would hand a scrape that arrives meanwhile the
interpreter only in 5 ms turns. The HTTP layer holds :meth:`ScrapesFirst.scrape` while it renders ``/metrics``;
every layer of the sample (the sampler, process-group accounting, the run registry) receives only
:meth:`ScrapesFirst.pause` as a plain callable and calls it between units of work. A sample stretched by a few
milliseconds stays exact: each figure is a difference of counters, and what one interval misses the next one gets.
docs/performance.md has the measurements behind this.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Pause = Callable[[], None]
"""Called by a long computation between units of work: returns at once, or after a scrape has rendered."""


def no_pause() -> None:
    """The pause of a computation that shares the interpreter with no scrape (tests, tools)."""


class ScrapesFirst:
    """Holds the sampler at its next :meth:`pause` while a scrape renders."""

    def __init__(self, longest_pause_seconds: float = 0.5) -> None:
        """A pause ends after ``longest_pause_seconds`` even while scrapes go on, so sampling never stops."""
        self._rendering = 0
        self._done = threading.Condition()
        self._longest_pause = longest_pause_seconds

    @contextmanager
    def scrape(self) -> Iterator[None]:
        """Hold the sampler at its next pause until the block ends."""
        with self._done:
            self._rendering += 1
        try:
            yield
        finally:
            with self._done:
                self._rendering -= 1
                self._done.notify_all()

    def pause(self) -> None:
        """Wait while a scrape renders; return at once otherwise."""
        if self._rendering:  # read without the lock: at worst one pause point is passed or waited at needlessly
            with self._done:
                self._done.wait_for(lambda: not self._rendering, self._longest_pause)
