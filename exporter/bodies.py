"""One ``/metrics`` body per state of the exporter, shared by the scrapes that send it at the same time.

A body can be large (every run's series), and a scrape holds its body until the client has read it. Were each
scrape to render its own, N clients that ask and never read would hold N bodies; here they hold one, as long as
what the body is made from (the sampler's snapshot and the exposed runs) has not changed. Nothing is kept once
no scrape holds the body: the cache refers to it weakly, and forgets the state with it.
"""

from __future__ import annotations

import operator
import threading
import weakref
from collections.abc import Callable, Hashable, Sequence

State = Callable[[], Sequence[object]]
"""The objects a body is made from; a body is reused only while each of them is the very same object."""


class Body:
    """A rendered body; scrapes hold it while they send it."""

    __slots__ = ("__weakref__", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data


class SharedBodies:
    """Rendered bodies by variant (content type, compression), reused while the state they were made from holds."""

    def __init__(self, state: State | None = None) -> None:
        """``state``: what a body is made from (None: nothing is shared, every scrape renders)."""
        self._state = state
        self._lock = threading.Lock()
        self._bodies: dict[Hashable, tuple[Sequence[object], weakref.ref[Body]]] = {}

    def get(self, variant: Hashable, render: Callable[[], bytes]) -> Body:
        """The body of ``variant`` for the current state: one a scrape still holds, or a fresh ``render()``."""
        if self._state is None:
            return Body(render())
        with self._lock:  # a second scrape of a new state waits for the first one's body instead of making its own
            state = self._state()
            made_from, held = self._bodies.get(variant, ((), lambda: None))
            body = held()
            if body is None or not same_objects(made_from, state):
                body = Body(render())
                self._bodies[variant] = (state, weakref.ref(body, self._forget(variant)))
            return body

    def _forget(self, variant: Hashable) -> Callable[[weakref.ref[Body]], None]:
        """A callback for when a body is freed: drop its entry, so that the objects it was made from go too."""

        def forget(freed: weakref.ref[Body]) -> None:
            entry = self._bodies.get(variant)
            if entry is not None and entry[1] is freed:
                self._bodies.pop(variant, None)

        return forget


def same_objects(first: Sequence[object], second: Sequence[object]) -> bool:
    """Whether two sequences hold the very same objects in the same order (identity, not equality)."""
    return len(first) == len(second) and all(map(operator.is_, first, second))
