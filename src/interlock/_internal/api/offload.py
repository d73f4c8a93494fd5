"""The per-action routes' blocking call, run on a worker thread for the event loop.

``anyio.to_thread.run_sync`` (what FastAPI uses for a plain ``def`` route) also takes a
capacity-limiter token, opens a cancel scope and yields to the loop once before the call starts;
on a server taking one action at a time that costs about as much CPU again as the hop itself.
:class:`Offload` is the hop alone: a future, a queue, and one ``call_soon_threadsafe`` back.

What it keeps from anyio's: the call sees the caller's context variables; at most
``max_threads`` calls run at once (anyio's default, 40) and the others wait their turn in order;
and a caller cancelled while its call runs (a server that stops) is cancelled only once the
call has returned, so the database is never closed under a pipeline still using it.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import Callable
from contextlib import suppress
from typing import Any, TypeVar

from interlock._internal.gateway import blocking

T = TypeVar("T")

MAX_THREADS = 40  # anyio's default thread limiter, which a plain ``def`` route runs under

_Job = tuple[contextvars.Context, Callable[[], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


class _Uncancellable(asyncio.Future[T]):
    """A future its awaiting task cannot cancel: ``Task.cancel()`` then takes effect when the
    future resolves, as in anyio's shielded wait for a worker thread."""

    def cancel(self, msg: Any | None = None) -> bool:
        return False


class Offload:
    """Worker threads, started as calls need them; :meth:`close` ends them.

    At most ``width`` threads run calls at once, not counting those waiting outside the process
    (:func:`~interlock._internal.gateway.blocking.waiting_outside`: an upstream tool's answer,
    another run's lock); while one waits, another thread may start on the queue. More threads
    than cores only take turns at the interpreter lock, each statement handing it to another, so
    a few threads serve many concurrent requests with half the context switches. Whatever the
    waits, at most ``max_threads`` threads exist."""

    def __init__(self, *, width: int = MAX_THREADS, max_threads: int = MAX_THREADS) -> None:
        self._width = min(width, max_threads)
        self._max = max_threads
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0  # threads waiting for a call that no queued call is promised to
        self._pending = 0  # calls queued with no thread promised to them
        self._outside = 0  # threads of this pool waiting outside the process

    async def run(self, call: Callable[[], T]) -> T:
        """``call()`` on a worker thread; its result, or its exception raised here."""
        loop = asyncio.get_running_loop()
        future: _Uncancellable[T] = _Uncancellable(loop=loop)
        with self._lock:
            start = False
            if self._idle:
                self._idle -= 1
            elif self._room():
                self._threads, start = self._threads + 1, True
            else:
                self._pending += 1
            jobs = self._jobs
        jobs.put((contextvars.copy_context(), call, future, loop))
        if start:
            self._start(jobs)
        return await future

    def _room(self) -> bool:
        """Whether another thread may start (called holding ``_lock``)."""
        return self._threads - self._outside < self._width and self._threads < self._max

    def _start(self, jobs: queue.SimpleQueue[_Job | None]) -> None:
        threading.Thread(target=self._work, args=(jobs,), name="interlock-offload", daemon=True).start()

    def step_out(self) -> None:
        """A call of this pool waits outside: a queued call may have its thread meanwhile."""
        with self._lock:
            self._outside += 1
            jobs = self._jobs
            start = self._pending > 0 and self._room()
            if start:
                self._threads += 1
                self._pending -= 1
        if start:
            self._start(jobs)

    def step_in(self) -> None:
        """The wait is over; the thread finishes its call, then leaves if the pool has too many."""
        with self._lock:
            self._outside -= 1

    def close(self) -> None:
        """End the threads once the calls already queued have run. Calls made afterwards start
        threads afresh."""
        with self._lock:
            jobs, threads = self._jobs, self._threads
            self._jobs, self._threads, self._idle, self._pending = queue.SimpleQueue(), 0, 0, 0
        for _ in range(threads):
            jobs.put(None)

    def _work(self, jobs: queue.SimpleQueue[_Job | None]) -> None:
        blocking.attach(self)
        while (job := jobs.get()) is not None:
            context, call, future, loop = job
            del job
            try:
                result = context.run(call)
            except BaseException as exc:
                _report(loop, future, None, exc)
            else:
                _report(loop, future, result, None)
            # Hold nothing of this call while waiting for the next.
            del context, call, future, loop
            result = None
            with self._lock:
                if jobs is not self._jobs:  # closed since this thread started: None is coming
                    continue
                if self._threads - self._outside > self._width:  # others came back from outside
                    self._threads -= 1
                    return
                if self._pending:  # the next queued call is this thread's
                    self._pending -= 1
                else:
                    self._idle += 1


def _report(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any, exc: BaseException | None
) -> None:
    with suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        loop.call_soon_threadsafe(_resolve, future, result, exc)


def _resolve(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(result)
    else:
        future.set_exception(exc)


__all__ = ["MAX_THREADS", "Offload"]
