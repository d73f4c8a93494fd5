"""An outbox: deliveries queued in the database, each sent once by whichever replica claims it.

Approval webhooks and notifications share it. Each kind keeps its own table (with at least
``id``, ``status``, ``attempts``, ``next_attempt_at``, ``last_status_code``, ``last_error`` and
``delivered_at``) and says how one row is sent (:meth:`Outbox._send`); the outbox does the rest:

- **claiming** a due row with a conditional UPDATE that pushes ``next_attempt_at`` past the
  attempt and matches the attempt count, so one replica sends it, a replica holding an older read
  never claims it, and a replica that dies mid-attempt leaves it due again;
- **recording** each attempt: delivered, retried with exponential backoff (network errors, 408,
  425, 429 and 5xx) up to ``max_attempts``, or failed;
- **the worker**: one daemon thread per process, woken after something is queued.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import Table, select, update
from sqlalchemy.engine import Engine

from interlock._internal.store.engine import reading, transaction
from interlock.exceptions import ConfigError

RETRYABLE = frozenset({408, 425, 429})
MAX_ERROR_CHARS = 500
BUSY_DELAY_S = 0.05  # after a round that sent something: more may be due at once


@dataclass
class Sent:
    """What one attempt came to: the answer's status code, an error, whether to retry, and any
    further columns to record when it was delivered."""

    status_code: int | None = None
    error: str | None = None
    retry: bool = False
    delivered: dict[str, Any] = field(default_factory=dict)
    body: bytes | None = None  # the answer's body, when it was delivered

    @classmethod
    def from_response(cls, response: httpx.Response) -> Sent:
        code = response.status_code
        if 200 <= code < 300:
            return cls(status_code=code, body=response.content)
        return cls(status_code=code, error=f"HTTP {code}", retry=code >= 500 or code in RETRYABLE)

    @classmethod
    def from_error(cls, exc: httpx.HTTPError) -> Sent:
        return cls(error=f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS], retry=True)


class Outbox(ABC):
    """The claiming, recording and worker thread; subclasses say what a row is and how it is sent."""

    table: Table
    kind: str  # for logs and the thread's name: "webhook", "notification"

    def __init__(
        self,
        engine: Engine,
        *,
        max_attempts: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 300.0,
        timeout_s: float = 10.0,
        poll_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ConfigError(f"{self.kind} max_attempts must be at least 1")
        self.engine = engine
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self._clock = clock
        self._transport = transport
        self._client: httpx.Client | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    # ---- what a subclass says ----------------------------------------------------------------------

    @property
    @abstractmethod
    def enabled(self) -> bool:
        """Whether any target is configured (nothing is queued or sent otherwise)."""

    @abstractmethod
    def _send(self, row: dict[str, Any]) -> Sent:
        """Send one claimed row; network errors come back as a :class:`Sent`, not raised."""

    def _before_round(self) -> None:
        """Queue what is new before each round of the worker (default: nothing)."""
        return

    def _describe(self, row: dict[str, Any]) -> str:
        return str(row["id"])

    # ---- sending what is due -----------------------------------------------------------------------

    def run_once(self, *, limit: int = 50) -> int:
        """Attempt every delivery that is due now; returns how many attempts were made."""
        if not self.enabled:
            return 0
        now = self._clock()
        c = self.table.c
        with reading(self.engine) as conn:
            rows = (
                conn.execute(
                    select(self.table)
                    .where(c.status == "pending", c.next_attempt_at <= now)
                    .order_by(c.next_attempt_at, c.id)
                    .limit(limit)
                )
                .mappings()
                .all()
            )
        attempted = 0
        for row in rows:
            if self._claim(row["id"], attempts=int(row["attempts"]), now=now):
                self._record(dict(row), self._send(dict(row)))
                attempted += 1
        return attempted

    def _claim(self, ident: str, *, attempts: int, now: float) -> bool:
        c = self.table.c
        lease = now + self.timeout_s + 30
        with transaction(self.engine) as conn:
            claimed = conn.execute(
                update(self.table)
                .where(c.id == ident, c.status == "pending", c.attempts == attempts, c.next_attempt_at <= now)
                .values(next_attempt_at=lease)
            ).rowcount
        return claimed == 1

    def _post(self, method: str, url: str, *, content: bytes, headers: dict[str, str]) -> Sent:
        if self._client is None:
            self._client = httpx.Client(
                timeout=self.timeout_s, follow_redirects=False, transport=self._transport
            )
        try:
            return Sent.from_response(self._client.request(method, url, content=content, headers=headers))
        except httpx.HTTPError as exc:
            return Sent.from_error(exc)

    def _record(self, row: dict[str, Any], sent: Sent) -> None:
        attempt = int(row["attempts"]) + 1
        now = self._clock()
        values: dict[str, Any] = {"attempts": attempt, "last_status_code": sent.status_code}
        if sent.error is None:
            values.update(status="delivered", delivered_at=now, next_attempt_at=None, **sent.delivered)
        else:
            values["last_error"] = sent.error
            if sent.retry and attempt < self.max_attempts:
                values["next_attempt_at"] = now + min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
            else:
                values.update(status="failed", next_attempt_at=None)
                logging.getLogger(f"interlock.{self.kind}s").warning(
                    "%s %s failed after %d attempts: %s", self.kind, self._describe(row), attempt, sent.error
                )
        with transaction(self.engine) as conn:
            conn.execute(update(self.table).where(self.table.c.id == row["id"]).values(**values))

    # ---- the worker --------------------------------------------------------------------------------

    def start(self) -> None:
        if not self.enabled:
            return
        with self._lock:
            # Closed is final: an owner that shut down must not find a worker running again.
            if self._closed or (self._thread is not None and self._thread.is_alive()):
                return
            self._stop.clear()
            # A daemon: a process that forgets close() still exits; queued rows wait for the next start.
            self._thread = threading.Thread(target=self._loop, name=f"interlock-{self.kind}s", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Tell the worker something was queued (after the queueing transaction committed)."""
        if self.enabled:
            self.start()
            self._wake.set()

    def close(self, *, timeout_s: float = 5.0) -> None:
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
        self._stop.set()
        self._wake.set()
        if thread is not None:
            thread.join(timeout=timeout_s)
        if self._client is not None:
            self._client.close()
            self._client = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._before_round()
                delay = BUSY_DELAY_S if self.run_once() else self._next_due_in()
            except Exception:  # the worker must outlive a database hiccup
                logging.getLogger(f"interlock.{self.kind}s").exception("%s round failed", self.kind)
                delay = self.poll_s
            self._wake.wait(delay)
            self._wake.clear()

    def _next_due_in(self) -> float:
        c = self.table.c
        with reading(self.engine) as conn:
            due = conn.execute(
                select(c.next_attempt_at).where(c.status == "pending").order_by(c.next_attempt_at).limit(1)
            ).scalar()
        if due is None:
            return self.poll_s
        return min(self.poll_s, max(0.01, float(due) - self._clock()))


__all__ = ["MAX_ERROR_CHARS", "RETRYABLE", "Outbox", "Sent"]
