"""Rate limits kept in the database, so a limit holds however many replicas serve the agents.

Fixed windows aligned to the epoch: a window of ``window_s`` seconds starting at a multiple of
``window_s``. A hit is one statement,

    INSERT … ON CONFLICT (scope, key, window_s, window_start)
    DO UPDATE SET count = count + 1 WHERE count < :limit RETURNING …

which both SQLite and PostgreSQL run atomically: PostgreSQL locks the conflicting row, SQLite runs
every transaction under ``BEGIN IMMEDIATE``. No row back means the window is full; the
transaction is then rolled back, so a refused hit consumes nothing. Fixed windows admit up to
twice the limit across a window boundary; a tool's ``burst`` (a per-second cap) bounds that.

Replicas compare wall-clock windows, so their clocks must agree (NTP) to about a second.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import TextClause, delete, text
from sqlalchemy.engine import Engine

from interlock._internal.manifest.models import ToolSpec
from interlock._internal.store import tables as t
from interlock._internal.store.engine import transaction
from interlock.exceptions import ConfigError, LimitExceeded, StorageError

log = logging.getLogger("interlock.limits")

MAX_KEY = 400  # the column's width
PURGE_GRACE_S = 60.0  # keep a just-ended window a little, for clocks that lag


@dataclass(frozen=True)
class Limit:
    """At most ``limit`` hits per ``window_s`` seconds for ``(scope, key)``."""

    scope: str
    key: str
    limit: int
    window_s: int


@dataclass(frozen=True)
class RateLimited:
    """The limit that refused a hit, and when the next hit can succeed."""

    scope: str
    key: str
    limit: int
    window_s: int
    retry_after: float

    def error(self) -> LimitExceeded:
        return LimitExceeded(
            f"rate limit {self.limit} per {_window_name(self.window_s)} reached for {self.scope} {self.key}; "
            f"retry in {self.retry_after:.1f}s",
            code="rate_limited",
            retry_after=self.retry_after,
        )


class _Refused(Exception):
    """Unwinds the transaction so a refused multi-limit hit consumes nothing."""

    def __init__(self, refused: RateLimited) -> None:
        super().__init__(refused.key)
        self.refused = refused


class RateLimiter:
    """Database-backed window counters. Thread-safe; share one per engine."""

    def __init__(self, engine: Engine, *, purge_every_s: float = 60.0) -> None:
        self.engine = engine
        self._purge_every_s = purge_every_s
        self._next_purge = 0.0
        self._lock = threading.Lock()
        self._stmts: dict[int, TextClause] = {}
        self._postgres = engine.dialect.name == "postgresql"

    def hit(
        self, key: str, *, limit: int, window_s: int, scope: str = "custom", now: float | None = None
    ) -> float | None:
        """Count one hit. None when allowed; otherwise the seconds until the window resets."""
        refused = self.hit_all([Limit(scope, key, limit, window_s)], now=now)
        return None if refused is None else refused.retry_after

    def hit_all(self, limits: Sequence[Limit], *, now: float | None = None) -> RateLimited | None:
        """Count one hit against every limit, or against none: a refusal rolls them all back.

        All limits go in one multi-row statement: one round trip whatever their number.
        """
        if not limits:
            return None
        now = time.time() if now is None else now
        # One order for every caller, so concurrent transactions never wait on each other in a cycle.
        ordered = sorted(limits, key=lambda lim: (lim.scope, lim.key, lim.window_s))
        rows = [_row(lim, now) for lim in ordered]
        bound = {f"{name}_{i}": value for i, row in enumerate(rows) for name, value in row.items()}
        stmt = self._statement(len(rows))
        refused: RateLimited | None = None
        try:
            with transaction(self.engine) as conn:
                if self._postgres:
                    # A counter is a brake, not a record: if PostgreSQL itself crashes, losing the
                    # last fraction of a second of hits is worth not waiting for a WAL flush on
                    # every call (several times faster). Other sessions still see each commit at once.
                    conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                counted = {(r[0], r[1], r[2]) for r in conn.execute(stmt, bound)}
                if len(counted) < len(rows):
                    full = [
                        RateLimited(
                            lim.scope, lim.key, lim.limit, lim.window_s, row["start"] + lim.window_s - now
                        )
                        for lim, row in zip(ordered, rows, strict=True)
                        if (row["scope"], row["key"], row["window_s"]) not in counted
                    ]
                    raise _Refused(max(full, key=lambda r: r.retry_after))
        except _Refused as exc:
            refused = exc.refused
        self._maybe_purge(now)
        return refused

    def check_tool(
        self, agent_id: str, tool: ToolSpec, *, workflow: str | None = None, now: float | None = None
    ) -> RateLimited | None:
        """Apply a tool's ``rate_limit``: ``per_minute``, ``per_hour`` and ``burst`` (per second) to
        all calls of the tool (scope ``tool``, key ``workflow|tool``), and ``per_agent_per_minute``
        to one agent's calls of it (scope ``agent_tool``, key ``agent|tool``)."""
        spec = tool.rate_limit
        if spec is None:
            return None
        windows = [(n, w) for n, w in ((spec.per_minute, 60), (spec.per_hour, 3600), (spec.burst, 1)) if n]
        tool_key = f"{workflow}|{tool.name}" if workflow else tool.name
        limits = [Limit("tool", tool_key, n, w) for n, w in windows]
        if spec.per_agent_per_minute:
            limits.append(Limit("agent_tool", f"{agent_id}|{tool.name}", spec.per_agent_per_minute, 60))
        if not limits:
            return None
        return self.hit_all(limits, now=now)

    def purge(self, *, now: float | None = None) -> int:
        """Delete windows that ended more than a minute ago; returns how many."""
        now = time.time() if now is None else now
        with transaction(self.engine) as conn:
            result = conn.execute(
                delete(t.rate_limits).where(t.rate_limits.c.expires_at < now - PURGE_GRACE_S)
            )
        return int(result.rowcount or 0)

    # ---- internals ---------------------------------------------------------------------------

    def _statement(self, rows: int) -> TextClause:
        stmt = self._stmts.get(rows)
        if stmt is None:
            # Written out rather than built with insert().values([...]): SQLAlchemy does not cache
            # multi-row VALUES, and compiling it cost ten times the statement itself. The SQL is the
            # same on SQLite and PostgreSQL; identifiers are quoted by the engine's own rules.
            q = self.engine.dialect.identifier_preparer.quote
            table = q(t.rate_limits.name)
            columns = ", ".join(q(column) for column, _ in _COLUMNS)
            values = ", ".join(
                "(" + ", ".join(f":{name}_{i}" for _, name in _COLUMNS) + ")" for i in range(rows)
            )
            scope, key, window_s, window_start, count, max_count = (
                q(c) for c in ("scope", "key", "window_s", "window_start", "count", "max_count")
            )
            stmt = text(
                f"INSERT INTO {table} ({columns}) VALUES {values} "
                f"ON CONFLICT ({scope}, {key}, {window_s}, {window_start}) DO UPDATE "
                f"SET {count} = {table}.{count} + 1, {max_count} = excluded.{max_count} "
                f"WHERE {table}.{count} < excluded.{max_count} "
                f"RETURNING {scope}, {key}, {window_s}"
            )
            self._stmts[rows] = stmt
        return stmt

    def _maybe_purge(self, now: float) -> None:
        # Cheap housekeeping: at most once per purge_every_s per process, never failing a hit.
        with self._lock:
            if now < self._next_purge:
                return
            self._next_purge = now + self._purge_every_s
        try:
            self.purge(now=now)
        except StorageError as exc:
            log.warning("rate-limit purge failed: %s", exc)


# (column, bind name) pairs of one row in the upsert.
_COLUMNS = (
    ("scope", "scope"),
    ("key", "key"),
    ("window_s", "window_s"),
    ("window_start", "start"),
    ("count", "one"),
    ("max_count", "limit"),
    ("expires_at", "expires"),
)


def _row(lim: Limit, now: float) -> dict[str, Any]:
    if lim.limit < 1 or lim.window_s < 1:
        raise ConfigError(f"rate limit for {lim.scope} {lim.key}: limit and window_s must be at least 1")
    if not 0 < len(lim.scope) <= 50:
        raise ConfigError(f"rate limit scope {lim.scope!r} must be 1-50 characters")
    key = lim.key
    if len(key) > MAX_KEY:
        # Truncating alone could merge two keys; the digest keeps them apart.
        key = key[: MAX_KEY - 65] + "#" + hashlib.sha256(key.encode()).hexdigest()
    start = math.floor(now / lim.window_s) * lim.window_s
    return {
        "scope": lim.scope,
        "key": key,
        "window_s": lim.window_s,
        "start": start,
        "limit": lim.limit,
        "expires": float(start + lim.window_s),
        "one": 1,
    }


def _window_name(window_s: int) -> str:
    return {1: "second", 60: "minute", 3600: "hour", 86_400: "day"}.get(window_s, f"{window_s}s")


__all__ = ["Limit", "RateLimited", "RateLimiter"]
