"""A request's deadline, seen by every wait below it (a database lock, a token session).

Why one deadline and not one timeout per wait: a request that meets a locked database
waits at its first write, and then again at each later one (its refusal's audit record,
say); with a timeout per wait, three waits of ``service.deadline_seconds`` each are three
times the deadline. The API front sets the deadline of each request it runs (from when it
was admitted); the database engine and the session pool bound every wait by what is left
of it, and by at least :data:`FLOOR` so that a request already late can still write what
it owes (its failure, its audit record). Outside a request (the CLI, background threads)
nothing is set and each wait keeps its own timeout.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

FLOOR = 0.5  # seconds a wait gets even once the deadline has passed

_until: ContextVar[float | None] = ContextVar("appliance_deadline", default=None)


@contextmanager
def until(monotonic_deadline: float | None) -> Iterator[None]:
    """Run the block under a deadline (a ``time.monotonic()`` value; None: none)."""
    token = _until.set(monotonic_deadline)
    try:
        yield
    finally:
        _until.reset(token)


def wait_seconds(default: float) -> float:
    """How long the next wait may take: ``default``, or less under a deadline."""
    end = _until.get()
    if end is None:
        return default
    return min(default, max(FLOOR, end - time.monotonic()))


def active() -> bool:
    return _until.get() is not None
