"""Database rate limits: exact under concurrency, on SQLite and PostgreSQL, across processes."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from interlock import ConfigError, LimitExceeded
from interlock._internal.limits.ratelimit import Limit, RateLimiter
from interlock._internal.manifest.models import ToolSpec
from interlock._internal.settings import DatabaseSettings
from interlock._internal.store import tables as t
from interlock._internal.store.engine import make_engine
from interlock._internal.store.migrate import upgrade

NOW = 1_800_000_030.0  # 30 s into a minute window, 30 s into an hour window's last minute


def _engine(url: str):  # type: ignore[no-untyped-def]
    return make_engine(DatabaseSettings(url=url))


@pytest.fixture
def limiter(db_url: str) -> Iterator[RateLimiter]:
    engine = _engine(db_url)
    upgrade(engine)
    yield RateLimiter(engine)
    engine.dispose()


def _rows(limiter: RateLimiter) -> int:
    with limiter.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(t.rate_limits)).scalar_one())


def test_limit_then_retry_after_then_next_window(limiter) -> None:
    results = [limiter.hit("triage-bot|tickets.search", limit=3, window_s=60, now=NOW) for _ in range(5)]
    assert results[:3] == [None, None, None]
    assert results[3] == pytest.approx(30.0)
    assert results[4] == pytest.approx(30.0)
    assert limiter.hit("triage-bot|tickets.search", limit=3, window_s=60, now=NOW + 29) == pytest.approx(1.0)
    assert limiter.hit("triage-bot|tickets.search", limit=3, window_s=60, now=NOW + 30) is None


def test_keys_scopes_and_window_lengths_are_independent(limiter) -> None:
    assert limiter.hit("a", limit=1, window_s=60, now=NOW) is None
    assert limiter.hit("a", limit=1, window_s=60, now=NOW) is not None
    assert limiter.hit("b", limit=1, window_s=60, now=NOW) is None
    assert limiter.hit("a", limit=1, window_s=60, scope="other", now=NOW) is None
    # A minute window and an hour window may start at the same second; they never share a row.
    assert limiter.hit("a", limit=1, window_s=3600, now=NOW) is None


def test_a_refused_hit_consumes_nothing(limiter) -> None:
    wide = Limit("tool", "tickets.search", 10, 60)
    narrow = Limit("agent_tool", "bot|tickets.search", 1, 60)
    assert limiter.hit_all([wide, narrow], now=NOW) is None
    refused = limiter.hit_all([wide, narrow], now=NOW)
    assert refused is not None
    assert (refused.scope, refused.limit) == ("agent_tool", 1)
    # The wide counter was rolled back with the refusal: 9 more fit, not 8.
    assert [limiter.hit_all([wide], now=NOW) for _ in range(10)].count(None) == 9


def test_check_tool_applies_minute_hour_and_burst_per_tool(limiter) -> None:
    tool = ToolSpec(
        name="tickets.search", verb="read", rate_limit={"per_minute": 3, "per_hour": 4, "burst": 2}
    )
    assert limiter.check_tool("bot-a", tool, now=NOW) is None
    assert limiter.check_tool("bot-b", tool, now=NOW) is None
    burst = limiter.check_tool("bot-c", tool, now=NOW)
    assert burst is not None
    assert (burst.scope, burst.window_s) == ("tool", 1)
    assert limiter.check_tool("bot-b", tool, now=NOW + 1) is None  # per-tool minute: 3 of 3
    minute = limiter.check_tool("bot-c", tool, now=NOW + 2)
    assert minute is not None
    assert (minute.scope, minute.window_s) == ("tool", 60)
    assert minute.retry_after == pytest.approx(28.0)
    assert limiter.check_tool("bot-c", tool, now=NOW + 30) is None  # a new minute, hour: 4 of 4
    hour = limiter.check_tool("bot-d", tool, now=NOW + 31)
    assert hour is not None
    assert hour.window_s == 3600
    err = hour.error()
    assert isinstance(err, LimitExceeded)
    assert err.code == "rate_limited"
    assert err.retry_after == hour.retry_after
    assert "per hour" in err.message
    assert limiter.check_tool("bot-a", ToolSpec(name="free", verb="read"), now=NOW) is None


def test_check_tool_applies_the_per_agent_limit_per_agent(limiter) -> None:
    tool = ToolSpec(name="tickets.get", verb="read", rate_limit={"per_minute": 10, "per_agent_per_minute": 2})
    assert limiter.check_tool("bot-a", tool, now=NOW) is None
    assert limiter.check_tool("bot-a", tool, now=NOW) is None
    mine = limiter.check_tool("bot-a", tool, now=NOW)
    assert mine is not None
    assert (mine.scope, mine.limit) == ("agent_tool", 2)
    assert limiter.check_tool("bot-b", tool, now=NOW) is None  # another agent has its own allowance


def test_workflows_do_not_share_a_tool_name(limiter) -> None:
    tool = ToolSpec(name="tickets.get", verb="read", rate_limit={"per_minute": 1})
    assert limiter.check_tool("a", tool, workflow="w1", now=NOW) is None
    assert limiter.check_tool("b", tool, workflow="w2", now=NOW) is None
    assert limiter.check_tool("c", tool, workflow="w1", now=NOW) is not None


def test_long_keys_are_shortened_without_merging(limiter) -> None:
    long_a, long_b = "x" * 500 + "a", "x" * 500 + "b"
    assert limiter.hit(long_a, limit=1, window_s=60, now=NOW) is None
    assert limiter.hit(long_b, limit=1, window_s=60, now=NOW) is None
    assert limiter.hit(long_a, limit=1, window_s=60, now=NOW) is not None


def test_bad_limits_are_configuration_errors(limiter) -> None:
    with pytest.raises(ConfigError):
        limiter.hit("k", limit=0, window_s=60)
    with pytest.raises(ConfigError):
        limiter.hit("k", limit=1, window_s=0)


def test_old_windows_are_purged(limiter) -> None:
    for i in range(5):
        limiter.hit(f"k{i}", limit=5, window_s=60, now=NOW - 3600)
    assert _rows(limiter) == 5
    assert limiter.purge(now=NOW) == 5
    limiter.hit("fresh", limit=5, window_s=60, now=NOW)
    assert limiter.purge(now=NOW) == 0
    assert _rows(limiter) == 1


def test_purge_happens_by_itself_now_and_then(db_url: str) -> None:
    engine = _engine(db_url)
    upgrade(engine)
    limiter = RateLimiter(engine, purge_every_s=100)
    limiter.hit("old", limit=5, window_s=60, now=NOW - 3600)  # first hit: purges (nothing yet)
    limiter.hit("mid", limit=5, window_s=60, now=NOW - 3550)  # at most once per 100 s: not now
    assert _rows(limiter) == 2
    limiter.hit("new", limit=5, window_s=60, now=NOW)
    assert _rows(limiter) == 1
    engine.dispose()


def test_limit_is_exact_with_eight_threads_on_sqlite(sqlite_url: str) -> None:
    engine = _engine(sqlite_url)
    upgrade(engine)
    limiter = RateLimiter(engine)
    allowed: list[int] = []
    refused: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(25):
            retry = limiter.hit("bot|tool", limit=37, window_s=60, now=NOW)
            with lock:
                if retry is None:
                    allowed.append(1)
                else:
                    refused.append(retry)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(allowed) == 37
    assert len(refused) == 8 * 25 - 37
    assert all(r == pytest.approx(30.0) for r in refused)
    engine.dispose()


def _hammer(url: str, hits: int, barrier: Any, out: Any) -> None:
    engine = _engine(url)
    limiter = RateLimiter(engine)
    limiter.hit("warm-up", limit=1, window_s=60, scope="warm", now=NOW)  # connect before the race
    barrier.wait(60)
    out.put([limiter.hit("bot|tool", limit=53, window_s=3600, now=NOW) for _ in range(hits)])
    engine.dispose()


@pytest.mark.postgres
def test_limit_is_exact_across_two_processes_on_postgres(pg_url: str) -> None:
    engine = _engine(pg_url)
    upgrade(engine)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    out = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(pg_url, 60, barrier, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    flat = [r for chunk in results for r in chunk]
    assert len(flat) == 120
    assert flat.count(None) == 53
    assert all(r is None or r == pytest.approx(3570.0) for r in flat)
    # Both processes got some: they really raced.
    assert all(chunk.count(None) > 0 for chunk in results)
    with engine.connect() as conn:
        count = select(t.rate_limits.c.count).where(t.rate_limits.c.scope == "custom")
        assert conn.execute(count).scalar_one() == 53
    engine.dispose()
