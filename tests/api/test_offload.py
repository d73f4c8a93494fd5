"""The per-action routes' thread hop (``api/offload.py``) keeps what anyio's gave them: results
and errors come back, context variables go along, a bound on threads, and a cancelled caller
waits for its call to return."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from interlock._internal.api.offload import Offload
from interlock._internal.gateway.blocking import waiting_outside

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


def test_results_errors_and_context_come_back() -> None:
    offload = Offload()

    def boom() -> None:
        raise KeyError("gone")

    async def main() -> None:
        WHO.set("caller")
        assert await offload.run(lambda: 41 + 1) == 42
        assert await offload.run(WHO.get) == "caller"
        assert await offload.run(threading.current_thread) is not threading.current_thread()
        with pytest.raises(KeyError, match="gone"):
            await offload.run(boom)

    asyncio.run(main())
    offload.close()


def test_at_most_max_threads_calls_run_at_once_and_all_run() -> None:
    offload = Offload(max_threads=2)
    lock = threading.Lock()
    running = 0
    most = 0

    def call(i: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return i

    async def main() -> list[int]:
        return list(await asyncio.gather(*(offload.run(lambda i=i: call(i)) for i in range(8))))

    assert asyncio.run(main()) == list(range(8))
    assert most == 2
    offload.close()


def test_a_cancelled_caller_waits_for_its_call_to_return() -> None:
    offload = Offload()
    release = threading.Event()
    finished: list[str] = []

    def call() -> str:
        release.wait(5)
        finished.append("call")
        return "done"

    async def main() -> None:
        task = asyncio.create_task(offload.run(call))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done()  # still waiting for the call, as anyio's shielded hop does
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished == ["call"]

    asyncio.run(main())
    offload.close()


def test_close_ends_the_threads_and_a_later_call_starts_afresh() -> None:
    offload = Offload()

    async def some() -> None:
        await asyncio.gather(*(offload.run(lambda: time.sleep(0.01)) for _ in range(3)))

    before = set(threading.enumerate())
    asyncio.run(some())
    workers = [t for t in threading.enumerate() if t.name == "interlock-offload" and t not in before]
    assert 1 <= len(workers) <= 3
    offload.close()
    for t in workers:
        t.join(5)
        assert not t.is_alive()
    assert asyncio.run(asyncio.wait_for(offload.run(lambda: "again"), 5)) == "again"
    offload.close()


def test_width_threads_run_calls_and_a_call_waiting_outside_lets_another_start() -> None:
    offload = Offload(width=2)
    lock = threading.Lock()
    running = 0
    most = 0
    waiting_together = threading.Barrier(4, timeout=10)

    def call(i: int, *, wait_outside: bool) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        if wait_outside:
            with waiting_outside():  # four calls wait here together, on a pool two wide
                waiting_together.wait()
        return i

    async def main() -> tuple[list[int], list[int]]:
        plain = await asyncio.gather(
            *(offload.run(lambda i=i: call(i, wait_outside=False)) for i in range(8))
        )
        out = await asyncio.gather(*(offload.run(lambda i=i: call(i, wait_outside=True)) for i in range(4)))
        return list(plain), list(out)

    assert asyncio.run(main()) == (list(range(8)), list(range(4)))
    assert most == 2
    deadline = time.monotonic() + 10
    while offload._threads > 2 and time.monotonic() < deadline:  # each leaves after its answer
        time.sleep(0.01)
    assert offload._threads <= 2  # the extra threads left once the waits were over
    offload.close()
    with waiting_outside():  # outside any pool (the library in a program's own thread): a no-op
        pass
