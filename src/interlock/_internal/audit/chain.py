"""The audit hash chain: append an event inside the caller's transaction, read events back.

Each event is stored as canonical JSON (``body``) of every field that matters::

    {"actor", "data", "kind", "run_id", "seq", "ts", "workflow"}

and chained with ``hash = sha256(prev_hash_hex + body)``; the first event chains to
:data:`GENESIS_HASH`. ``hash_format`` says how the body was canonicalised: 2 is RFC 8785 (every
event written now), 1 the legacy form of logs written before (see ``canonical.py``); the hash rule
is the same for both. docs/audit-format.md specifies all of it for third-party verifiers. The
``audit_head`` row (id 1) holds the tip, ``(seq, hash)`` of the last event. Appending locks that
row, so appends from every thread, process and replica serialize on it: no gaps, no duplicate seq,
no forks. The columns next to ``body`` are copies for indexing; the body is the record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from interlock._internal.audit.canonical import HASH_FORMAT, canonical_json, plain_canonical_text, sha256_hex
from interlock._internal.store.engine import reading, transaction
from interlock._internal.store.hot import Conn
from interlock._internal.store.tables import audit_events, audit_head
from interlock.exceptions import AuditIntegrityError, ConflictError, StorageError

GENESIS_HASH = "0" * 64
HEAD_ID = 1

# Statements are built once and reused, so SQLAlchemy's compiled cache serves every append.
_LOCK_TIP = select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == HEAD_ID).with_for_update()
_INSERT_EVENT = insert(audit_events)
# The seq guard is redundant while the row lock holds; it turns any lapse (a caller on a deferred
# SQLite transaction, a wrong isolation level) into an error instead of a fork.
_ADVANCE_TIP = (
    update(audit_head)
    .where(audit_head.c.id == HEAD_ID, audit_head.c.seq == bindparam("expected_seq"))
    .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)
# On PostgreSQL the event's insert rides in the tip's update (a data-modifying WITH runs to
# completion whether or not it is read): one round trip instead of two per event.
_APPEND_AND_ADVANCE = _ADVANCE_TIP.add_cte(
    insert(audit_events)
    .values({c.name: bindparam(c.name, type_=c.type) for c in audit_events.columns})
    .cte("appended")
)
# SQLite only: the tip this process last wrote, advanced only if it still is the tip (see
# append_event); kept on the engine's dialect object, so it goes with the engine.
_ADVANCE_KNOWN_TIP = (
    update(audit_head)
    .where(
        audit_head.c.id == HEAD_ID,
        audit_head.c.seq == bindparam("expected_seq"),
        audit_head.c.hash == bindparam("expected_hash"),
    )
    .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)
_KNOWN_TIP = "_interlock_audit_tip"
_ANY_EVENT = select(audit_events.c.seq).limit(1)
EVENT_COLUMNS = (
    audit_events.c.seq,
    audit_events.c.ts,
    audit_events.c.kind,
    audit_events.c.actor,
    audit_events.c.workflow,
    audit_events.c.run_id,
    audit_events.c.body,
    audit_events.c.prev_hash,
    audit_events.c.hash,
    audit_events.c.hash_format,
)

# PostgreSQL rejects values longer than the column while SQLite stores them; checking here makes both
# engines refuse the same events.
_LIMITS: dict[str, int | None] = {
    name: getattr(audit_events.c[name].type, "length", None)
    for name in ("kind", "actor", "workflow", "run_id")
}


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One event of the audit chain, as hashed. ``data`` is read back from the hashed body."""

    seq: int
    ts: float
    kind: str
    actor: str | None
    workflow: str | None
    run_id: str | None
    data: dict[str, Any]
    prev_hash: str
    hash: str
    hash_format: int = HASH_FORMAT

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def event_hash(prev_hash: str, body: str) -> str:
    """The chain hash: SHA-256 over the previous hash (64 hex characters) followed by the body."""
    # UTF-8 equals ASCII for a real hash; surrogatepass lets verification hash whatever a tampered
    # row holds instead of crashing on it.
    return sha256_hex(prev_hash.encode("utf-8", "surrogatepass") + body.encode("utf-8", "surrogatepass"))


def append_event(
    conn: Conn,
    *,
    kind: str,
    actor: str | None,
    workflow: str | None = None,
    run_id: str | None = None,
    data: dict[str, Any],
) -> AuditEvent:
    """Append one event inside the caller's open write transaction and return it.

    The event commits or rolls back with the caller's other writes. The chain tip stays locked until
    that transaction ends, so make this the transaction's last write and commit promptly: every other
    appender waits for it. Under PostgreSQL use READ COMMITTED (the default); REPEATABLE READ makes
    concurrent appends fail with serialization errors.

    Raises :class:`StorageError` on database errors or over-long fields, :class:`AuditIntegrityError`
    when the tip record is missing from a non-empty chain, and ``TypeError``/``ValueError`` when
    ``data`` has no canonical JSON form.
    """
    for name, value in (("kind", kind), ("actor", actor), ("workflow", workflow), ("run_id", run_id)):
        limit = _LIMITS[name]
        if value is not None and limit is not None and len(value) > limit:
            raise StorageError(f"audit event {name} has {len(value)} characters; at most {limit} fit")
    sqlite = conn.dialect.name == "sqlite"
    try:
        known: tuple[int, str] | None = conn.dialect.__dict__.get(_KNOWN_TIP) if sqlite else None
        if known is not None:
            # SQLite write transactions hold the database's write lock from their BEGIN, so the tip
            # cannot move under this one: when the tip this process last wrote (seq and hash) is
            # still the tip, the update says so, and the locking read is not needed. Any other
            # writer, a rolled-back append or a tampered row makes it match nothing; then the
            # tip is read as below.
            event, body = _event(kind, actor, workflow, run_id, data, *known)
            moved = conn.execute(
                _ADVANCE_KNOWN_TIP,
                {
                    "expected_seq": known[0],
                    "expected_hash": known[1],
                    "new_seq": event.seq,
                    "new_hash": event.hash,
                },
            )
            if moved.rowcount == 1:
                conn.execute(_INSERT_EVENT, _row(event, body))
                conn.dialect.__dict__[_KNOWN_TIP] = (event.seq, event.hash)
                return event
        tip = conn.execute(_LOCK_TIP).first()
        prev_seq, prev_hash = (int(tip[0]), str(tip[1])) if tip is not None else _seed_tip(conn)
        # Read the clock only once the tip is ours (in _event), so ts never decreases along the
        # chain (within one host's clock).
        event, body = _event(kind, actor, workflow, run_id, data, prev_seq, prev_hash)
        row = _row(event, body)
        advance = {"expected_seq": prev_seq, "new_seq": event.seq, "new_hash": event.hash}
        if conn.dialect.name == "postgresql":
            moved = conn.execute(_APPEND_AND_ADVANCE, {**row, **advance})
        else:
            conn.execute(_INSERT_EVENT, row)
            moved = conn.execute(_ADVANCE_TIP, advance)
        if moved.rowcount != 1:
            raise ConflictError(
                f"audit chain tip moved while appending event {event.seq}; retry the transaction"
            )
    except SQLAlchemyError as exc:
        raise StorageError(f"audit append failed: {exc.__class__.__name__}: {_first_line(exc)}") from exc
    if sqlite:
        conn.dialect.__dict__[_KNOWN_TIP] = (event.seq, event.hash)
    return event


def _event(
    kind: str,
    actor: str | None,
    workflow: str | None,
    run_id: str | None,
    data: dict[str, Any],
    prev_seq: int,
    prev_hash: str,
) -> tuple[AuditEvent, str]:
    """The event that follows ``(prev_seq, prev_hash)``, stamped now and hashed, with its body."""
    seq = prev_seq + 1
    ts = time.time()
    record = {
        "seq": seq,
        "ts": ts,
        "kind": kind,
        "actor": actor,
        "workflow": workflow,
        "run_id": run_id,
        "data": data,
    }
    body = plain_canonical_text(record)
    if body is None:
        body = canonical_json(record).decode("utf-8")
        # Data is returned as hashed (sets sorted, tuples as lists), the same as readers will see
        # it; a record already in that form (nearly every one) is returned as given.
        data = json.loads(body)["data"]
    digest = event_hash(prev_hash, body)
    return AuditEvent(seq, ts, kind, actor, workflow, run_id, data, prev_hash, digest), body


def _row(event: AuditEvent, body: str) -> dict[str, Any]:
    """The stored row of an event: its body (the record, as hashed) and the indexed copies."""
    return {
        "seq": event.seq,
        "ts": event.ts,
        "kind": event.kind,
        "actor": event.actor,
        "workflow": event.workflow,
        "run_id": event.run_id,
        "body": body,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
        "hash_format": HASH_FORMAT,
    }


def append_event_tx(
    engine: Engine,
    *,
    kind: str,
    actor: str | None,
    workflow: str | None = None,
    run_id: str | None = None,
    data: dict[str, Any],
) -> AuditEvent:
    """Append one event in a transaction of its own (for events with no other write to join)."""
    with transaction(engine) as conn:
        return append_event(conn, kind=kind, actor=actor, workflow=workflow, run_id=run_id, data=data)


def _seed_tip(conn: Conn) -> tuple[int, str]:
    """Create the tip record for an empty chain (databases built without migration 0002).

    A missing tip beside existing events is never repaired here: restarting at genesis would fork
    the chain, and adopting the last stored event would bless a truncation.
    """
    # Concurrent first appends on PostgreSQL all get here. DO NOTHING makes the losers wait for the
    # winner's row, and the locking read after it returns whatever tip the winner committed.
    values = {"id": HEAD_ID, "seq": 0, "hash": GENESIS_HASH}
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        conn.execute(postgresql.insert(audit_head).values(values).on_conflict_do_nothing())
    else:
        from sqlalchemy.dialects import sqlite

        conn.execute(sqlite.insert(audit_head).values(values).on_conflict_do_nothing())
    tip = conn.execute(_LOCK_TIP).first()
    if tip is None:  # pragma: no cover - the row was just written or committed by a peer
        raise StorageError("audit chain tip record could not be created")
    # Only now, holding the tip, is "no events yet" a stable answer; the caller's rollback discards
    # the genesis row written above.
    if int(tip[0]) == 0 and conn.execute(_ANY_EVENT).first() is not None:
        raise AuditIntegrityError(
            "the audit chain tip record is missing while events exist; run `interlock audit verify`",
            details={"problem": "deleted"},
        )
    return int(tip[0]), str(tip[1])


def iter_events(
    engine: Engine,
    *,
    run_id: str | None = None,
    kinds: Collection[str] | None = None,
    since_seq: int | None = None,
    batch: int = 1000,
) -> Iterator[AuditEvent]:
    """Yield events in seq order, optionally for one run, some kinds, or after ``since_seq``.

    ``since_seq`` is exclusive, so passing the last seq seen tails the log. Pages are read in short
    transactions and no connection is held while the caller consumes events (on SQLite every
    transaction holds the write lock). Nothing is verified here; use ``verify_chain`` for that.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    query = select(*EVENT_COLUMNS).order_by(audit_events.c.seq).limit(batch)
    if run_id is not None:
        query = query.where(audit_events.c.run_id == run_id)
    if kinds is not None:
        query = query.where(audit_events.c.kind.in_(list(kinds)))
    after = since_seq
    while True:
        page = query if after is None else query.where(audit_events.c.seq > after)
        with reading(engine) as conn:
            rows = conn.execute(page).all()
        for row in rows:
            yield event_from_row(StoredRow._make(row))
        if len(rows) < batch:
            return
        after = int(rows[-1].seq)


class StoredRow(NamedTuple):
    """An ``audit_events`` row as stored, columns in table order."""

    seq: int
    ts: float
    kind: str
    actor: str | None
    workflow: str | None
    run_id: str | None
    body: str
    prev_hash: str
    hash: str
    hash_format: int = HASH_FORMAT


def event_from_row(row: StoredRow) -> AuditEvent:
    """Build an event from a stored row; the row's body must be a JSON object with ``data``."""
    try:
        parsed = json.loads(row.body)
        data = parsed["data"]
        if not isinstance(data, dict):
            raise TypeError("data is not an object")
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditIntegrityError(
            f"audit event {row.seq} has an unreadable body: {exc}",
            details={"seq": int(row.seq), "problem": "altered"},
        ) from exc
    return AuditEvent(
        seq=int(row.seq),
        ts=float(row.ts),
        kind=row.kind,
        actor=row.actor,
        workflow=row.workflow,
        run_id=row.run_id,
        data=data,
        prev_hash=row.prev_hash,
        hash=row.hash,
        hash_format=int(row.hash_format),
    )


def _first_line(exc: SQLAlchemyError) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0][:300] if text else ""


__all__ = [
    "EVENT_COLUMNS",
    "GENESIS_HASH",
    "HEAD_ID",
    "AuditEvent",
    "StoredRow",
    "append_event",
    "append_event_tx",
    "event_from_row",
    "event_hash",
    "iter_events",
]
