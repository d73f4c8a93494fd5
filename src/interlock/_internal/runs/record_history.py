"""The history of a record: other actions, in any run, on the same ticket, customer or other key.

A tool's key arguments (``record_keys`` in the manifest, else its ``*_id`` arguments) name the
record an action is about. Steps keep their arguments as canonical JSON text (sorted keys, no
spaces; see ``JSONText``), so ``"ticket_id":"T-1003"`` followed by ``,`` or ``}`` finds the steps
that carry that argument; each match is then checked exactly on its top-level arguments.
Values are compared as stored, that is after redaction, on both sides. With payloads encrypted at
rest (``storage.encryption_key_id``) the text cannot be searched: the latest ``ENCRYPTED_SCAN``
actions of the permitted workflows are decrypted and matched instead, so older history is not
found there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, and_, or_, select, type_coerce
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement

from interlock._internal.store import tables as t
from interlock._internal.store.encryption import keyring_of
from interlock._internal.store.engine import reading

# A record touched more often than this shows its latest actions; the panel says there are more.
MAX_HISTORY = 20
# Matches the LIKE filter lets through that are then found to differ (nested, not top-level).
_OVERSCAN = 4
# With payloads encrypted at rest, how many of the latest actions are read and matched in Python.
ENCRYPTED_SCAN = 5000


@dataclass(frozen=True, slots=True)
class RecordAction:
    """One earlier action on the record, with the approval it asked for (if any)."""

    step_id: str
    run_id: str
    workflow: str
    agent_id: str
    seq: int
    tool: str | None
    verb: str | None
    status: str
    arguments: Any
    created_at: float
    matched: tuple[str, ...]  # the key arguments it shares with the record
    approval_id: str | None
    approval_state: str | None
    decided_by: Any
    comment: str | None
    # For an approved request: what its execution came to (``executed``, ``failed``, ...), told
    # here rather than as a second action.
    outcome: str | None = None


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _fragment(name: str, value: Any) -> str:
    """How ``"name": value`` reads inside the stored JSON text."""
    return json.dumps(name, ensure_ascii=False) + ":" + json.dumps(value, ensure_ascii=False)


def record_history(
    engine: Engine,
    *,
    keys: Mapping[str, Any],
    workflows: Sequence[str],
    exclude_run: str | None = None,
    writes_only: bool = True,
    limit: int = MAX_HISTORY,
) -> tuple[list[RecordAction], bool]:
    """Actions in ``workflows`` (the caller's permitted ones; the filter is in the query) whose
    top-level arguments share a key with ``keys``, newest first; and whether there were more.
    ``writes_only`` leaves out reads (looking at a ticket is not something done to it)."""
    if not keys or not workflows:
        return [], False
    s, r, a = t.steps.c, t.runs.c, t.approvals.c
    where: list[ColumnElement[bool]] = [r.workflow.in_(list(workflows)), s.kind == "tool"]
    # Encrypted at rest, the stored text says nothing: the latest steps are read and matched here.
    encrypted = keyring_of(engine) is not None
    if not encrypted:
        text = type_coerce(s.arguments, String)  # the stored JSON text, compared as text
        matches: list[ColumnElement[bool]] = []
        for name, value in keys.items():
            fragment = _like(_fragment(name, value))
            matches += [
                text.like(f"%{fragment},%", escape="\\"),
                text.like(f"%{fragment}}}%", escape="\\"),
            ]
        where.append(or_(*matches))
    if exclude_run is not None:
        where.append(s.run_id != exclude_run)
    if writes_only:
        where.append(or_(s.verb.is_(None), s.verb != "read"))
    query = (
        select(
            s.id,
            s.run_id,
            s.seq,
            s.tool,
            s.verb,
            s.status,
            s.arguments,
            s.created_at,
            r.workflow,
            r.agent_id,
            a.id.label("approval_id"),
            a.state.label("approval_state"),
            a.decided_by,
            a.comment,
            a.outcome,
        )
        .select_from(
            t.steps.join(t.runs, r.id == s.run_id).outerjoin(
                t.approvals, and_(a.run_id == s.run_id, a.step_id == s.id)
            )
        )
        .where(*where)
        .order_by(s.created_at.desc(), s.id)
        .limit(ENCRYPTED_SCAN if encrypted else (limit + 1) * _OVERSCAN)
    )
    found: list[RecordAction] = []
    with reading(engine) as conn:
        rows = conn.execute(query).mappings().all()
    # An approved action runs as a step of its own; the request's line tells its outcome instead.
    carried_out = {
        str(row["outcome"].get("step_id"))
        for row in rows
        if row["approval_state"] == "approved"
        and isinstance(row["outcome"], dict)
        and row["outcome"].get("step_id") not in (None, row["id"])
    }
    for row in rows:
        if row["id"] in carried_out:
            continue
        arguments = row["arguments"] if isinstance(row["arguments"], dict) else {}
        matched = tuple(k for k, v in keys.items() if k in arguments and arguments[k] == v)
        if not matched:
            continue
        outcome = row["outcome"].get("status") if isinstance(row["outcome"], dict) else None
        found.append(
            RecordAction(
                step_id=row["id"],
                run_id=row["run_id"],
                workflow=row["workflow"],
                agent_id=row["agent_id"],
                seq=row["seq"],
                tool=row["tool"],
                verb=row["verb"],
                status=row["status"],
                arguments=row["arguments"],
                created_at=row["created_at"],
                matched=matched,
                approval_id=row["approval_id"],
                approval_state=row["approval_state"],
                decided_by=row["decided_by"],
                comment=row["comment"],
                outcome=None if outcome is None else str(outcome),
            )
        )
    more = len(found) > limit or (not encrypted and len(rows) == (limit + 1) * _OVERSCAN)
    return found[:limit], more


__all__ = ["ENCRYPTED_SCAN", "MAX_HISTORY", "RecordAction", "record_history"]
