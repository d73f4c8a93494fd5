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
