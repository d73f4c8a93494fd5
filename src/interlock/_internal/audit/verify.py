"""Verify the audit chain: stream every event in seq order and name the first one that is wrong.

An event is good when its seq is the next one (1, 2, 3, …), its ``prev_hash`` is the previous good
event's hash (:data:`GENESIS_HASH` for seq 1), ``sha256(prev_hash + body)`` equals its stored hash, and
its body (the hashed record) is a well-formed event whose seq, ts, kind, actor, workflow and run_id
agree with the columns stored beside it. After the last event, the tip in ``audit_head`` must name
that event's seq and hash.

The first event that is not good is diagnosed; the first matching rule wins. ``r`` is its seq and
"the body's seq" is the position the event was recorded at when it was appended.

1. **deleted** — ``r`` skips ahead: the missing seq is reported.
2. **inserted** — ``r`` is below 1 (nothing precedes genesis).
3. **altered** — the body is not a well-formed event record.
4. **inserted** — event ``r`` is intact, holds the event recorded at ``r - 1``, and chains to the same
   predecessor as the event stored at ``r - 1``: two events claim one place, and the one stored at
   ``r - 1`` is the extra (later events were renumbered to make room for it).
5. Event ``r``'s body was recorded at another position ``s``:

   - **reordered** if following "where the event stored here belongs" from ``r`` leads back to ``r``:
     every event is still present, permuted (rows, or just bodies and hashes, swapped or rotated);
   - otherwise, if the event is intact: **deleted** when ``s > r`` (events were removed and the
     survivors renumbered to close the gap), **inserted** when ``s < r`` (a second event claims a
     place the chain already filled).

6. **inserted** — event ``r + 1`` is intact, holds the event recorded at ``r`` and chains to event
   ``r - 1``: the genuine chain skips ``r``, so ``r`` is the extra.
7. **altered** — the stored hash does not match ``prev_hash + body`` (body, hash or prev_hash edited).
8. **altered** — a column disagrees with the hashed body (e.g. ``actor`` updated in place).
9. The event is intact and in place but chains to the wrong hash:

   - **reordered** if that hash belongs to another stored event (it links to a different event);
   - **altered** otherwise, reported at ``r - 1``: that event was rewritten *and* rehashed, so it
     verifies alone, but event ``r`` was chained to the original. At seq 1 the event itself is
     reported: it does not chain to genesis.

When every event is good, the tip decides: a tip beyond the last event is **deleted** (the tail was
cut off), events beyond the tip are **inserted**, and a tip hash that differs from the last event's is
**altered** (the last event was rewritten and rehashed). A missing tip record beside events is
**deleted** with no seq.

What a hash chain cannot show without signed checkpoints: someone able to rewrite the database can
rebuild every hash from the first altered event to the end and move the tip to match. Checkpoints
signed with the audit key bound that rewrite; this module only proves internal consistency.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple

from sqlalchemy import bindparam, func, select
from sqlalchemy.engine import Connection, Engine

from interlock._internal.audit.canonical import HASH_FORMAT, is_canonical
from interlock._internal.audit.chain import EVENT_COLUMNS, GENESIS_HASH, HEAD_ID, StoredRow, event_hash
from interlock._internal.store.engine import reading
from interlock._internal.store.tables import audit_events, audit_head
from interlock.exceptions import AuditIntegrityError

Problem = Literal["altered", "deleted", "inserted", "reordered"]

# Following displaced events is the only diagnosis step that can touch many rows; it stops here.
_CYCLE_LIMIT = 100_000
_BODY_KEYS = frozenset({"seq", "ts", "kind", "actor", "workflow", "run_id", "data"})
_ROW_AT = select(*EVENT_COLUMNS).where(audit_events.c.seq == bindparam("seq"))
_SEQ_WITH_HASH = (
    select(audit_events.c.seq)
    .where(audit_events.c.hash == bindparam("hash"), audit_events.c.seq != bindparam("not_seq"))
    .order_by(audit_events.c.seq)
    .limit(1)
)
_TIP_WHERE = audit_head.c.id == HEAD_ID
# One statement, so one snapshot on PostgreSQL (READ COMMITTED snapshots per statement).
_END = select(
    select(audit_head.c.seq).where(_TIP_WHERE).scalar_subquery(),
    select(audit_head.c.hash).where(_TIP_WHERE).scalar_subquery(),
    select(func.max(audit_events.c.seq)).scalar_subquery(),
)


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of :func:`verify_chain`.

    ``events`` counts the events that verified (all of them when ``ok``). ``first_bad_seq`` and
    ``problem`` name the first event that did not, ``detail`` says how; ``tip_seq`` and ``tip_hash``
    are the last verified event's.
    """

    ok: bool
    events: int
    first_bad_seq: int | None = None
    problem: Problem | None = None
    detail: str | None = None
    tip_seq: int = 0
    tip_hash: str = GENESIS_HASH
    checkpoints: int = 0
    checkpoint: int | None = None
    approvals: int = 0

    @property
    def message(self) -> str:
        if self.ok:
            extra = ""
            if self.checkpoints or self.approvals:
                extra = f", {self.checkpoints} signed checkpoints and {self.approvals} approvals agree"
            return f"audit chain OK: {self.events} events, tip {self.tip_hash[:12]}{extra}"
        if self.first_bad_seq is None and self.checkpoint is not None:
            return f"checkpoint {self.checkpoint} disagrees ({self.problem}): {self.detail}"
        if self.first_bad_seq is None:
            return f"audit chain broken ({self.problem}): {self.detail}"
        return f"event {self.first_bad_seq} was {self.problem}: {self.detail}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def raise_if_broken(self) -> None:
        """Raise :class:`AuditIntegrityError` (details: this report) unless the chain verified."""
        if not self.ok:
            raise AuditIntegrityError(self.message, details=self.as_dict())


class _Claim(NamedTuple):
    """What the hashed body says about the event."""

    seq: int
    ts: float
    kind: str
    actor: str | None
    workflow: str | None
    run_id: str | None


class _End(NamedTuple):
    """The chain's end as one snapshot saw it: the tip record (if any) and the newest stored seq."""

    tip_seq: int | None
    tip_hash: str | None
    newest: int | None

    @property
    def bound(self) -> int:
        return max(self.tip_seq or 0, self.newest or 0)


class _Finding(NamedTuple):
    problem: Problem
    seq: int | None
    detail: str


def verify_chain(
    engine: Engine,
    *,
    batch: int = 5000,
    progress: Callable[[int], None] | None = None,
    on_event: Callable[[StoredRow], None] | None = None,
) -> VerifyReport:
    """Verify the whole chain, reading ``batch`` events at a time; ``progress`` gets the running count.

    ``on_event`` sees each event that verified, in order (``verify_log`` builds the Merkle tree
    and the approvals' record from them).

    Safe while other processes append: each page is its own short read (no lock is held between
    pages), and the chain is judged against the tip as it stood when the scan first reached the end.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    good = 0
    last: StoredRow | None = None
    end: _End | None = None
    while True:
        rows = _page(engine, last, batch, upto=None if end is None else end.bound)
        for row in rows:
            if not _is_good(row, last):
                with reading(engine) as conn:
                    finding = _diagnose(conn, row, last)
                return _broken(finding, good, last)
            last = row
            good += 1
            if on_event is not None:
                on_event(row)
        if rows and progress is not None:
            progress(good)
        if len(rows) == batch:
            continue
        if end is not None:
            return _judge_tip(end, good, last)
        # The scan reached the end once. Fix the end in one snapshot (tip and newest event together)
        # and verify up to it: events appended from now on are ignored rather than chased forever,
        # and an event beyond the tip cannot be mistaken for one that was being appended.
        with reading(engine) as conn:
            end = _End(*conn.execute(_END).one())
        if end.bound <= (last.seq if last is not None else 0):
            return _judge_tip(end, good, last)


def _page(engine: Engine, last: StoredRow | None, batch: int, *, upto: int | None) -> list[StoredRow]:
    query = select(*EVENT_COLUMNS).order_by(audit_events.c.seq).limit(batch)
    if last is not None:
        query = query.where(audit_events.c.seq > last.seq)
    if upto is not None:
        query = query.where(audit_events.c.seq <= upto)
    with reading(engine) as conn:
        return [StoredRow._make(row) for row in conn.execute(query)]


def _is_good(row: StoredRow, last: StoredRow | None) -> bool:
    expected, want_prev = (last.seq + 1, last.hash) if last is not None else (1, GENESIS_HASH)
    if row.seq != expected or row.prev_hash != want_prev or event_hash(row.prev_hash, row.body) != row.hash:
        return False
    claim = _parse(row.body, row.hash_format)
    return claim is not None and claim.seq == row.seq and _column_mismatch(row, claim) is None


def _parse(body: str, hash_format: int = HASH_FORMAT) -> _Claim | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not is_canonical(body, value, hash_format=hash_format):
        return None
    if not isinstance(value, dict) or value.keys() != _BODY_KEYS or not isinstance(value["data"], dict):
        return None
    seq, ts, kind = value["seq"], value["ts"], value["kind"]
    if type(seq) is not int or type(ts) not in (int, float) or not isinstance(kind, str):
        return None
    names = (value["actor"], value["workflow"], value["run_id"])
    if not all(name is None or isinstance(name, str) for name in names):
        return None
    return _Claim(seq, float(ts), kind, *names)


def _column_mismatch(row: StoredRow, claim: _Claim) -> str | None:
    for name in ("kind", "actor", "workflow", "run_id", "ts"):
        stored, hashed = getattr(row, name), getattr(claim, name)
        if stored != hashed:
            return f"its {name} column reads {stored!r} but the hashed body says {hashed!r}"
    return None


def _intact(row: StoredRow) -> bool:
    return event_hash(row.prev_hash, row.body) == row.hash


def _diagnose(conn: Connection, row: StoredRow, last: StoredRow | None) -> _Finding:
    """Name the problem at ``row``, the first event that is not good (rules in the module docstring)."""
    r = row.seq
    expected, want_prev = (last.seq + 1, last.hash) if last is not None else (1, GENESIS_HASH)
    if r > expected:
        missing = f"event {expected} is" if r == expected + 1 else f"events {expected} to {r - 1} are"
        return _Finding("deleted", expected, f"{missing} missing; the next stored event is {r}")
    if r < expected:
        return _Finding("inserted", r, "it is stored before the first event (seq starts at 1)")
    claim = _parse(row.body, row.hash_format)
    if claim is None:
        return _Finding(
            "altered", r, f"its body is not a well-formed event record in hash format {row.hash_format}"
        )
    intact = _intact(row)
    if (
        intact
        and last is not None
        and claim.seq == last.seq
        and row.prev_hash != want_prev
        and row.prev_hash == last.prev_hash
    ):
        return _Finding(
            "inserted",
            last.seq,
            f"events {last.seq} and {r} both chain to event {last.seq - 1}, and event {r} holds the "
            f"event originally recorded as {last.seq}; later events were renumbered",
        )
    if claim.seq != r:
        if _cycles_back(conn, r, claim.seq):
            return _Finding(
                "reordered", r, f"it holds the event recorded as seq {claim.seq}; events were moved"
            )
        if intact and claim.seq > r:
            return _Finding(
                "deleted",
                r,
                f"the event stored at {r} was recorded as seq {claim.seq}; events were removed and "
                "later ones renumbered to close the gap",
            )
        if intact:
            return _Finding(
                "inserted", r, f"it claims to be event {claim.seq}, a place the chain had already filled"
            )
    successor = _row_at(conn, r + 1)
    if successor is not None and successor.prev_hash == want_prev and _intact(successor):
        successor_claim = _parse(successor.body, successor.hash_format)
        if successor_claim is not None and successor_claim.seq == r:
            return _Finding(
                "inserted",
                r,
                f"event {r + 1} holds the original event {r} and chains to event {r - 1}, skipping it",
            )
    if not intact:
        if event_hash(want_prev, row.body) == row.hash:
            return _Finding("altered", r, "its prev_hash was changed")
        return _Finding("altered", r, "its stored hash does not match its body (body or hash was changed)")
    mismatch = _column_mismatch(row, claim)
    if mismatch is not None:
        return _Finding("altered", r, mismatch)
    if r == 1:
        return _Finding("altered", 1, "it does not chain to the genesis hash")
    other = conn.execute(_SEQ_WITH_HASH, {"hash": row.prev_hash, "not_seq": r}).scalar()
    if other is not None:
        return _Finding("reordered", r, f"it chains to event {other}, not to event {r - 1}")
    return _Finding(
        "altered",
        r - 1,
        f"it verifies alone but event {r} was chained to a different hash: it was rewritten and rehashed",
    )


def _row_at(conn: Connection, seq: int) -> StoredRow | None:
    row = conn.execute(_ROW_AT, {"seq": seq}).first()
    return None if row is None else StoredRow._make(row)


def _cycles_back(conn: Connection, start: int, claimed: int) -> bool:
    """Whether following each displaced event to the place it was recorded at returns to ``start``."""
    seen = {start}
    position = claimed
    for _ in range(_CYCLE_LIMIT):
        if position == start:
            return True
        if position in seen:
            return False
        seen.add(position)
        row = _row_at(conn, position)
        claim = None if row is None else _parse(row.body, row.hash_format)
        if claim is None:
            return False
        position = claim.seq
    return False


def _broken(finding: _Finding, good: int, last: StoredRow | None) -> VerifyReport:
    return VerifyReport(
        ok=False,
        events=good,
        first_bad_seq=finding.seq,
        problem=finding.problem,
        detail=finding.detail,
        tip_seq=last.seq if last is not None else 0,
        tip_hash=last.hash if last is not None else GENESIS_HASH,
    )


def _judge_tip(end: _End, good: int, last: StoredRow | None) -> VerifyReport:
    last_seq, last_hash = (last.seq, last.hash) if last is not None else (0, GENESIS_HASH)
    finding: _Finding | None = None
    if end.tip_seq is None:
        if last is not None:
            finding = _Finding("deleted", None, "the chain tip record is missing")
    elif end.tip_seq > last_seq:
        finding = _Finding(
            "deleted",
            last_seq + 1,
            f"the chain tip records event {end.tip_seq} but the last stored event is {last_seq}: "
            "the tail was removed",
        )
    elif end.tip_seq < last_seq:
        finding = _Finding(
            "inserted", end.tip_seq + 1, f"it is stored after the recorded chain tip (event {end.tip_seq})"
        )
    elif end.tip_hash != last_hash:
        finding = (
            _Finding(
                "altered",
                last_seq,
                "it does not match the hash the chain tip recorded for it: it was rewritten and rehashed",
            )
            if last_seq
            else _Finding("altered", None, "the chain tip record names a hash but no event is stored")
        )
    if finding is not None:
        return _broken(finding, good, last)
    return VerifyReport(ok=True, events=good, tip_seq=last_seq, tip_hash=last_hash)


__all__ = ["Problem", "VerifyReport", "verify_chain"]
