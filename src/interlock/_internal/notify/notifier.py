"""The notifier: reads the audit log for events a person must act on and delivers each one once
to every target that wants it, with retries, each delivery recorded.

Two steps, both safe with any number of replicas on one database:

1. **scan** reads events after the shared cursor (``notification_cursor``) and inserts one
   ``notification_deliveries`` row per (event, target). The row id is derived from both, so
   replicas scanning the same events at once insert one row between them.
2. **deliver** claims a due row with a conditional UPDATE (so one replica sends it), sends it,
   and records the attempt: status code, error, the ticket id an ITSM answered with. Network
   errors, 408, 425, 429 and 5xx are retried with exponential backoff up to ``max_attempts``.

The cursor starts at the log's end when notifications are first primed: enabling them on an old
database does not announce its history.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine

from interlock._internal.audit.chain import iter_events
from interlock._internal.notify.messages import EVENTS, Notice, notice_for
from interlock._internal.notify.targets import Target, ticket_reference
from interlock._internal.store import tables as t
from interlock._internal.store.engine import insert_ignore, reading, transaction
from interlock.exceptions import ConfigError

log = logging.getLogger("interlock.notifications")

_RETRYABLE = frozenset({408, 425, 429})
_CURSOR_ID = 1
_d = t.notification_deliveries


def delivery_id(target: str, seq: int) -> str:
    return "ntf_" + hashlib.sha256(f"{target}\n{seq}".encode()).hexdigest()[:32]


class Notifier:
    def __init__(
        self,
        engine: Engine,
        targets: Sequence[Target],
        *,
        public_url: str | None = None,
        max_attempts: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 300.0,
        timeout_s: float = 10.0,
        poll_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ConfigError("notifications max_attempts must be at least 1")
        self.engine = engine
        self.targets = {target.name: target for target in targets}
        self.public_url = public_url
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

    @property
    def enabled(self) -> bool:
        return bool(self.targets)

    # ---- scanning the audit log -----------------------------------------------------------------

    def prime(self) -> int:
        """Create the shared cursor at the log's current end if there is none; returns the cursor."""
        with transaction(self.engine) as conn:
            current = conn.execute(
                select(t.notification_cursor.c.seq).where(t.notification_cursor.c.id == _CURSOR_ID)
            ).scalar()
            if current is not None:
                return int(current)
            end = int(conn.execute(select(func.coalesce(func.max(t.audit_events.c.seq), 0))).scalar_one())
            insert_ignore(conn, t.notification_cursor, {"id": _CURSOR_ID, "seq": end})
        return end

    def scan(self, *, limit: int = 500) -> int:
        """Queue deliveries for the events after the cursor; returns how many rows were new."""
        if not self.enabled:
            return 0
        cursor = self.prime()
        with reading(self.engine) as conn:
            end = int(conn.execute(select(func.coalesce(func.max(t.audit_events.c.seq), 0))).scalar_one())
        if end <= cursor:
            return 0
        # Every event up to ``end`` is committed: appends hold the chain tip until they commit.
        events = []
        for event in iter_events(self.engine, kinds=tuple(EVENTS), since_seq=cursor, batch=limit):
            if event.seq > end:
                break
            events.append(event)
            if len(events) >= limit:
                end = event.seq
                break
        now = self._clock()
        added = 0
        with transaction(self.engine) as conn:
            for event in events:
                notice = notice_for(event, public_url=self.public_url)
                for target in self.targets.values():
                    if not target.wants(event.kind):
                        continue
                    added += insert_ignore(conn, _d, self._row(target, notice, now))
            conn.execute(
                update(t.notification_cursor)
                .where(t.notification_cursor.c.id == _CURSOR_ID, t.notification_cursor.c.seq < end)
                .values(seq=end)
            )
        return added

    def _row(self, target: Target, notice: Notice, now: float) -> dict[str, Any]:
        return {
            "id": delivery_id(target.name, notice.seq),
            "target": target.name,
            "kind": target.kind,
            "event_seq": notice.seq,
            "event_kind": notice.event,
            "run_id": notice.run_id,
            "payload": notice.as_dict(),
            "status": "pending",
            "attempts": 0,
            "created_at": now,
            "next_attempt_at": now,
        }

    # ---- delivering ------------------------------------------------------------------------------

    def run_once(self, *, limit: int = 50) -> int:
        """Scan, then attempt every delivery that is due; returns how many attempts were made."""
        if not self.enabled:
            return 0
        self.scan()
        now = self._clock()
        with reading(self.engine) as conn:
            rows = (
                conn.execute(
                    select(_d)
                    .where(_d.c.status == "pending", _d.c.next_attempt_at <= now)
                    .order_by(_d.c.next_attempt_at, _d.c.id)
                    .limit(limit)
                )
                .mappings()
                .all()
            )
        attempted = 0
        for row in rows:
            if self._claim(row["id"], attempts=int(row["attempts"]), now=now):
                self._attempt(dict(row))
                attempted += 1
        return attempted

    def _claim(self, ident: str, *, attempts: int, now: float) -> bool:
        # As webhook deliveries: push next_attempt_at past the attempt, matching the attempt count,
        # so one replica sends it and a replica that dies mid-attempt leaves it due again.
        lease = now + self.timeout_s + 30
        with transaction(self.engine) as conn:
            claimed = conn.execute(
                update(_d)
                .where(
                    _d.c.id == ident,
                    _d.c.status == "pending",
                    _d.c.attempts == attempts,
                    _d.c.next_attempt_at <= now,
                )
                .values(next_attempt_at=lease)
            ).rowcount
        return claimed == 1

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                timeout=self.timeout_s, follow_redirects=False, transport=self._transport
            )
        return self._client

    def _attempt(self, row: dict[str, Any]) -> None:
        attempt = int(row["attempts"]) + 1
        target = self.targets.get(row["target"])
        status_code: int | None = None
        error: str | None = None
        reference: str | None = None
        retry = False
        if target is None:
            error = "the target is no longer configured"
        else:
            payload = row["payload"]
            notice = Notice(**{k: payload.get(k) for k in Notice.__dataclass_fields__})
            body, headers = target.request(notice, delivery=row["id"], now=self._clock())
            try:
                response = self._http().request(target.method, target.url, content=body, headers=headers)
                status_code = response.status_code
                if 200 <= status_code < 300:
                    if target.kind == "ticket":
                        reference = ticket_reference(response.content)
                else:
                    error = f"HTTP {status_code}"
                    retry = status_code >= 500 or status_code in _RETRYABLE
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
                retry = True
        now = self._clock()
        values: dict[str, Any] = {"attempts": attempt, "last_status_code": status_code}
        if error is None:
            values.update(status="delivered", delivered_at=now, next_attempt_at=None, response=reference)
        else:
            values["last_error"] = error
            if retry and attempt < self.max_attempts:
                values["next_attempt_at"] = now + min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
            else:
                values.update(status="failed", next_attempt_at=None)
                log.warning(
                    "notification %s to %s failed after %d attempts: %s",
                    row["id"],
                    row["target"],
                    attempt,
                    error,
                )
        with transaction(self.engine) as conn:
            conn.execute(update(_d).where(_d.c.id == row["id"]).values(**values))

    # ---- the worker --------------------------------------------------------------------------

    def start(self) -> None:
        if not self.enabled:
            return
        self.prime()
        with self._lock:
            if self._closed or (self._thread is not None and self._thread.is_alive()):
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="interlock-notifications", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        if self.enabled:
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
            delay = self.poll_s
            try:
                if self.run_once():
                    delay = 0.05  # more may be due right away (a retry, a burst of events)
            except Exception:  # the worker must outlive a database hiccup
                log.exception("notification round failed")
            self._wake.wait(delay)
            self._wake.clear()

    # ---- reading the record ------------------------------------------------------------------

    def deliveries(self, *, run_id: str | None = None, event_kind: str | None = None) -> list[dict[str, Any]]:
        query = select(_d).order_by(_d.c.event_seq, _d.c.target)
        if run_id is not None:
            query = query.where(_d.c.run_id == run_id)
        if event_kind is not None:
            query = query.where(_d.c.event_kind == event_kind)
        with reading(self.engine) as conn:
            return [dict(r) for r in conn.execute(query).mappings()]


__all__ = ["Notifier", "delivery_id"]
