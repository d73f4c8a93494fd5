"""A worker thread says when it waits on something outside the process.

The per-action routes run each action on one of a few worker threads
(:mod:`interlock._internal.api.offload`): more threads would only take turns at the interpreter
lock, which each database statement hands to another runnable thread. But an action may wait a
long time on its upstream tool, or on another run's resource lock, and must not hold up the
actions queued behind it meanwhile. Such waits run in :func:`waiting_outside`: the thread's pool
may then start another thread for the queue, and lets one go once the wait is over.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Pool(Protocol):
    def step_out(self) -> None:
        """The calling thread of the pool starts waiting outside."""

    def step_in(self) -> None:
        """It is back."""


_local = threading.local()


def attach(pool: Pool) -> None:
    """Make ``pool`` the calling thread's (a pool's worker thread calls this once, on starting)."""
    _local.pool = pool


@contextmanager
def waiting_outside() -> Iterator[None]:
    """Tell the calling thread's pool, if it has one, that the block waits outside the process; a
    no-op in any other thread (the library in a program's own threads, an event loop)."""
    pool: Pool | None = getattr(_local, "pool", None)
    if pool is None:
        yield
        return
    pool.step_out()
    try:
        yield
    finally:
        pool.step_in()


__all__ = ["Pool", "attach", "waiting_outside"]
