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
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine

from interlock._internal.audit.chain import iter_events
from interlock._internal.notify.messages import EVENTS, Notice, notice_for
from interlock._internal.notify.outbox import Outbox, Sent
from interlock._internal.notify.targets import Target, ticket_reference
from interlock._internal.store import tables as t
from interlock._internal.store.engine import insert_ignore, reading, transaction

_CURSOR_ID = 1
_d = t.notification_deliveries


def delivery_id(target: str, seq: int) -> str:
    return "ntf_" + hashlib.sha256(f"{target}\n{seq}".encode()).hexdigest()[:32]


class Notifier(Outbox):
    table = t.notification_deliveries
    kind = "notification"

    def __init__(
        self,
        engine: Engine,
        targets: Sequence[Target],
        *,
        public_url: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(engine, **options)
        self.targets = {target.name: target for target in targets}
        self.public_url = public_url

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
        return super().run_once(limit=limit)

    def start(self) -> None:
        if self.enabled:
            self.prime()  # announce what happens from now on, not the log's history
        super().start()

    def _send(self, row: dict[str, Any]) -> Sent:
        target = self.targets.get(row["target"])
        if target is None:
            return Sent(error="the target is no longer configured")
        payload = row["payload"]
        notice = Notice(**{k: payload.get(k) for k in Notice.__dataclass_fields__})
        body, headers = target.request(notice, delivery=row["id"], now=self._clock())
        sent = self._post(target.method, target.url, content=body, headers=headers)
        if sent.error is None and target.kind == "ticket" and sent.body is not None:
            sent.delivered["response"] = ticket_reference(sent.body)
        return sent

    def _describe(self, row: dict[str, Any]) -> str:
        return f"{row['id']} to {row['target']}"

    # ---- reading the record ------------------------------------------------------------------

    def deliveries(self, *, run_id: str | None = None, event_kind: str | None = None) -> list[dict[str, Any]]:
        query = select(_d).order_by(_d.c.event_seq, _d.c.target)
        if run_id is not None:
            query = query.where(_d.c.run_id == run_id)
        if event_kind is not None:
            query = query.where(_d.c.event_kind == event_kind)
        with reading(self.engine) as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def history(
        self,
        *,
        run_id: str | None = None,
        status: str | None = None,
        event_kind: str | None = None,
        target: str | None = None,
        before_seq: int | None = None,
        limit: int = 200,
    ) -> list[Delivery]:
        """Deliveries, newest event first: what was sent where, how often, and how it ended."""
        query = select(_d).order_by(_d.c.event_seq.desc(), _d.c.target).limit(limit)
        for column, value in (
            (_d.c.run_id, run_id),
            (_d.c.status, status),
            (_d.c.event_kind, event_kind),
            (_d.c.target, target),
        ):
            if value is not None:
                query = query.where(column == value)
        if before_seq is not None:
            query = query.where(_d.c.event_seq < before_seq)
        with reading(self.engine) as conn:
            return [Delivery.from_row(dict(r)) for r in conn.execute(query).mappings()]


class Delivery(BaseModel):
    """One notice to one target: the record an operator reads to see who was told what."""

    id: str
    target: str
    kind: str = Field(description="webhook, slack or ticket")
    event: str = Field(description="The audit event's kind, e.g. approval.requested")
    event_seq: int = Field(description="The audit event's sequence number")
    workflow: str | None
    run_id: str | None
    title: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    reference: str | None = Field(description="What a ticket system answered with (its issue key)")
    created_at: float
    delivered_at: float | None
    next_attempt_at: float | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Delivery:
        payload = row["payload"] if isinstance(row["payload"], dict) else {}
        return cls(
            id=row["id"],
            target=row["target"],
            kind=row["kind"],
            event=row["event_kind"],
            event_seq=int(row["event_seq"]),
            workflow=payload.get("workflow"),
            run_id=row["run_id"],
            title=str(payload.get("title") or row["event_kind"]),
            status=row["status"],
            attempts=int(row["attempts"]),
            last_status_code=row["last_status_code"],
            last_error=row["last_error"],
            reference=row["response"],
            created_at=float(row["created_at"]),
            delivered_at=row["delivered_at"],
            next_attempt_at=row["next_attempt_at"],
        )


__all__ = ["Delivery", "Notifier", "delivery_id"]
