"""Back-off for the token endpoint: repeated wrong secrets for one client id get 429, not answers.

The count lives in the database (``token_failures``), so every replica sees the same one and an
attacker gains nothing by spreading guesses over them. After ``server.token_failures_allowed``
failures the client id is blocked for ``server.token_backoff_s``; every further failure (once the
block has passed) doubles the block, up to ``server.token_backoff_max_s``. While blocked, requests
are refused before the secret is checked, so they are neither answered nor counted. A correct
secret once the block has passed clears the record. A streak of failures (``first_at`` is its
first) starts afresh once ``token_backoff_max_s`` has passed since it began and since its last
block ended.

Client ids are kept as sent when they fit the column and as a SHA-256 digest when they do not, so
long made-up ids cannot widen the table; housekeeping prunes rows nobody has used for a while.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from interlock._internal.settings import ServerSettings
from interlock._internal.store.engine import reading, transaction
from interlock._internal.store.tables import token_failures

_KEY_CHARS: int = getattr(token_failures.c.client_id.type, "length", None) or 200


@dataclass(frozen=True, slots=True)
class Blocked:
    """The client id is refused for ``retry_after`` more seconds."""

    client_id: str
    failures: int
    retry_after: float

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` in whole seconds (RFC 9110 §10.2.3), never 0 while blocked."""
        return str(max(1, math.ceil(self.retry_after)))


class TokenBackoff:
    """Failed client-credential attempts per client id, shared by every replica."""

    def __init__(
        self, engine: Engine, settings: ServerSettings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._engine = engine
        self._allowed = settings.token_failures_allowed
        self._base = settings.token_backoff_s
        self._max = settings.token_backoff_max_s
        self._clock = clock

    def blocked(self, client_id: str) -> Blocked | None:
        """Whether ``client_id`` is in a back-off now (one indexed read)."""
        now = self._clock()
        with reading(self._engine) as conn:
            row = conn.execute(
                select(token_failures.c.failures, token_failures.c.blocked_until).where(
                    token_failures.c.client_id == _key(client_id)
                )
            ).first()
        if row is None or float(row.blocked_until) <= now:
            return None
        return Blocked(client_id, int(row.failures), float(row.blocked_until) - now)

    def failed(self, client_id: str) -> Blocked | None:
        """Count one failure; return the back-off it starts, if it starts one.

        Atomic across replicas: the row is created if missing and then updated under its lock
        (``SELECT … FOR UPDATE`` on PostgreSQL, the write lock on SQLite).
        """
        now = self._clock()
        key = _key(client_id)
        with transaction(self._engine) as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            conn.execute(
                dialect.insert(token_failures)
                .values(client_id=key, failures=0, first_at=now, blocked_until=0.0)
                .on_conflict_do_nothing()
            )
            row = conn.execute(
                select(token_failures.c.failures, token_failures.c.first_at, token_failures.c.blocked_until)
                .where(token_failures.c.client_id == key)
                .with_for_update()
            ).one()
            failures, first_at, until = int(row.failures), float(row.first_at), float(row.blocked_until)
            if until > now:
                # Another replica blocked it a moment ago: this attempt was already refused there.
                return Blocked(client_id, failures, until - now)
            quiet_since = max(first_at, until)
            if failures and now - quiet_since >= self._max:
                failures, first_at = 0, now
            failures += 1
            blocked_until = until
            if failures >= self._allowed:
                blocked_until = now + self.block_for(failures)
            conn.execute(
                update(token_failures)
                .where(token_failures.c.client_id == key)
                .values(failures=failures, first_at=first_at, blocked_until=blocked_until)
            )
        if blocked_until > now:
            return Blocked(client_id, failures, blocked_until - now)
        return None

    def block_for(self, failures: int) -> float:
        """How long the ``failures``-th failure blocks (0 below the allowance)."""
        if failures < self._allowed:
            return 0.0
        doublings = min(failures - self._allowed, 64)
        return float(min(self._max, self._base * 2.0**doublings))

    def succeeded(self, client_id: str) -> None:
        """A correct secret: forget the failures (a no-op read when there were none)."""
        key = _key(client_id)
        with reading(self._engine) as conn:
            known = conn.execute(
                select(token_failures.c.client_id).where(token_failures.c.client_id == key)
            ).first()
        if known is not None:
            with transaction(self._engine) as conn:
                conn.execute(delete(token_failures).where(token_failures.c.client_id == key))

    def prune(self) -> int:
        """Drop records with no block in force and no failure for ``token_backoff_max_s``."""
        cutoff = self._clock() - self._max
        with transaction(self._engine) as conn:
            gone = conn.execute(
                delete(token_failures).where(
                    token_failures.c.blocked_until < cutoff, token_failures.c.first_at < cutoff
                )
            ).rowcount
        return int(gone or 0)


def _key(client_id: str) -> str:
    if len(client_id) <= _KEY_CHARS:
        return client_id
    return "sha256:" + hashlib.sha256(client_id.encode("utf-8", "surrogatepass")).hexdigest()


__all__ = ["Blocked", "TokenBackoff"]
