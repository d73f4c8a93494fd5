"""Leader leases, on SQLite and PostgreSQL: one holder at a time, renewal, takeover after expiry,
release; and housekeeping run by one process of several sharing a database."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.engine import Engine

from conftest import Harness
from identity_helpers import Clock
from interlock._internal.store import tables as t
from interlock._internal.store.leases import LeaderLease


def holders(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [(r.name, r.holder) for r in conn.execute(select(t.leader_leases))]


def test_one_holder_at_a_time_until_its_lease_expires(engine: Engine, clock: Clock) -> None:
    a = LeaderLease(engine, "duty", ttl_s=10, holder="a", clock=clock)
    b = LeaderLease(engine, "duty", ttl_s=10, holder="b", clock=clock)
    assert a.hold()
    assert not b.hold()
    clock.advance(9)
    assert a.hold()  # renewed: ten more seconds from now
    clock.advance(9)
    assert not b.hold()
    clock.advance(2)  # a stopped renewing eleven seconds ago
    assert b.hold()
    assert not a.hold()
    assert holders(engine) == [("duty", "b")]


def test_leases_of_different_names_are_independent(engine: Engine, clock: Clock) -> None:
    assert LeaderLease(engine, "one", ttl_s=10, holder="a", clock=clock).hold()
    assert LeaderLease(engine, "two", ttl_s=10, holder="b", clock=clock).hold()
    assert sorted(holders(engine)) == [("one", "a"), ("two", "b")]


def test_release_hands_over_at_once_and_only_by_the_holder(engine: Engine, clock: Clock) -> None:
    a = LeaderLease(engine, "duty", ttl_s=10, holder="a", clock=clock)
    b = LeaderLease(engine, "duty", ttl_s=10, holder="b", clock=clock)
    assert a.hold()
    b.release()  # not b's to give up
    assert holders(engine) == [("duty", "a")]
    a.release()
    assert holders(engine) == []
    assert b.hold()


def test_housekeeping_runs_in_one_process_of_several(db_url: str) -> None:
    from interlock import Interlock, Settings
    from interlock._internal.api.housekeeping import housekeeping

    first = Harness(db_url)  # two processes' worth of Interlock on one database
    second = Interlock(Settings(database={"url": db_url}))
    ticks = {"first": 0, "second": 0}

    def counter(name: str) -> Callable[[], None]:
        def on_tick() -> None:
            ticks[name] += 1

        return on_tick

    async def both() -> None:
        async with (
            housekeeping(first.il, every_s=0.05, lease_s=60, on_tick=counter("first"))(),
            housekeeping(second, every_s=0.05, lease_s=60, on_tick=counter("second"))(),
        ):
            for _ in range(600):  # generous: the machine may be loaded
                await asyncio.sleep(0.05)
                if sum(ticks.values()) >= 10:
                    break

    try:
        asyncio.run(both())
        assert sum(ticks.values()) >= 10, ticks
        assert min(ticks.values()) == 0, ticks  # one leader; the other never ran the jobs
        assert holders(first.il.engine) == []  # released on shutdown
    finally:
        first.close()
        second.close()
