"""Back-off of the token endpoint per client id, with state in the database, on SQLite and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from identity_helpers import Clock
from interlock._internal.identity.backoff import TokenBackoff
from interlock._internal.settings import ServerSettings
from interlock._internal.store.tables import token_failures

SETTINGS = ServerSettings(token_failures_allowed=3, token_backoff_s=2.0, token_backoff_max_s=30.0)


@pytest.fixture
def backoff(engine: Engine, clock: Clock) -> TokenBackoff:
    return TokenBackoff(engine, SETTINGS, clock=clock)


def test_blocks_after_the_allowance_and_doubles_up_to_the_cap(backoff: TokenBackoff, clock: Clock) -> None:
    assert backoff.failed("bot") is None
    assert backoff.failed("bot") is None
    assert backoff.blocked("bot") is None
    blocked = backoff.failed("bot")  # the third failure starts a block of token_backoff_s
    assert blocked is not None
    assert (blocked.failures, blocked.retry_after, blocked.retry_after_header) == (3, 2.0, "2")
    assert backoff.blocked("other-bot") is None  # per client id
    clock.advance(1.5)
    still = backoff.blocked("bot")
    assert still is not None
    assert still.retry_after == pytest.approx(0.5)
    assert still.retry_after_header == "1"  # never 0 while blocked
    clock.advance(0.5)
    assert backoff.blocked("bot") is None
    waits = []
    for _ in range(6):
        again = backoff.failed("bot")
        assert again is not None
        waits.append(again.retry_after)
        clock.advance(again.retry_after)
    assert waits == [4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_a_success_clears_the_record(backoff: TokenBackoff, engine: Engine, clock: Clock) -> None:
    for _ in range(3):
        backoff.failed("bot")
    clock.advance(2)
    backoff.succeeded("bot")
    assert backoff.failed("bot") is None  # counting starts again from one
    assert backoff.failed("bot") is None
    assert backoff.failed("bot") is not None


def test_a_streak_starts_afresh_after_a_quiet_spell(backoff: TokenBackoff, clock: Clock) -> None:
    backoff.failed("bot")
    backoff.failed("bot")
    clock.advance(30)
    assert backoff.failed("bot") is None  # the earlier two no longer count
    assert backoff.failed("bot") is None
    assert backoff.failed("bot") is not None


def test_long_client_ids_are_kept_as_a_digest(backoff: TokenBackoff, engine: Engine) -> None:
    long_id = "x" * 1000
    for _ in range(3):
        backoff.failed(long_id)
    assert backoff.blocked(long_id) is not None
    assert backoff.blocked("x" * 999) is None
    with engine.connect() as conn:
        keys = conn.execute(select(token_failures.c.client_id)).scalars().all()
    assert len(keys) == 1
    assert keys[0].startswith("sha256:")


def test_prune_forgets_only_old_records(backoff: TokenBackoff, engine: Engine, clock: Clock) -> None:
    backoff.failed("old")
    clock.advance(31)
    backoff.failed("recent")
    assert backoff.prune() == 1
    with engine.connect() as conn:
        assert conn.execute(select(token_failures.c.client_id)).scalars().all() == ["recent"]


def test_concurrent_failures_are_all_counted(engine: Engine) -> None:
    """Many replicas' worth of threads failing at once: no lost update, one block."""
    backoff = TokenBackoff(
        engine, ServerSettings(token_failures_allowed=40, token_backoff_s=60.0, token_backoff_max_s=600.0)
    )
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _i: backoff.failed("bot"), range(40)))
    blocks = [r for r in results if r is not None]
    assert len(blocks) == 1
    assert blocks[0].failures == 40
    with engine.connect() as conn:
        assert conn.execute(select(func.sum(token_failures.c.failures))).scalar() == 40
