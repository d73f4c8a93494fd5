"""Approvals as evidence: what the audit events say about each approval, held against the tables.

The ``approvals`` and ``approval_votes`` rows are working copies; the hashed events are the record.
Every vote is an event (``approval.voted`` for an approve vote short of the quorum,
``approval.approved`` for the one that reaches it, ``approval.rejected`` for a reject vote), and
every closing names who closed it and the comment. From the events alone this module rebuilds each
approval's state, deciders, comment and votes, and lists where the rows disagree, so a forged
``decided_by`` or ``operator_id`` is caught by ``audit verify`` (against the database) and by
``verify-bundle`` (against the bundle's copies).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_CLOSING = {"approval.approved": "approved", "approval.rejected": "rejected"}
_CLOSING_NO_VOTE = {"approval.cancelled": "cancelled", "approval.expired": "expired"}


@dataclass
class Expected:
    """One approval as its events record it; ``seq`` is the event that last changed it."""

    approval: str
    seq: int
    requested: dict[str, Any] | None = None
    state: str = "pending"
    decided_by: list[str] = field(default_factory=list)
    comment: str | None = None
    votes: dict[str, tuple[str, str | None]] = field(default_factory=dict)


def collect(events: Iterable[tuple[int, str, Mapping[str, Any]]]) -> dict[str, Expected]:
    """Fold ``(seq, kind, data)`` of approval events, in log order, into what each approval must be."""
    found: dict[str, Expected] = {}
    for seq, kind, data in events:
        aid = data.get("approval")
        if not kind.startswith("approval.") or not isinstance(aid, str):
            continue
        ex = found.setdefault(aid, Expected(aid, seq))
        ex.seq = seq
        operator = data.get("operator")
        comment = data.get("comment")
        if kind == "approval.requested":
            ex.requested = dict(data)
        elif kind == "approval.voted" and isinstance(operator, str):
            ex.votes[operator] = (str(data.get("vote", "approve")), comment)
        elif kind in _CLOSING:
            ex.state = _CLOSING[kind]
            ex.comment = comment
            if isinstance(operator, str):
                ex.votes[operator] = ("approve" if kind == "approval.approved" else "reject", comment)
            deciders = data.get("decided_by")
            ex.decided_by = list(deciders) if isinstance(deciders, list) else [operator] if operator else []
        elif kind in _CLOSING_NO_VOTE:
            ex.state = _CLOSING_NO_VOTE[kind]
            ex.comment = comment
            ex.decided_by = [operator] if isinstance(operator, str) else []
    return found


def compare(
    row: Mapping[str, Any], votes: Iterable[Mapping[str, Any]], expected: Expected | None
) -> list[str]:
    """Where an approval row and its vote rows disagree with the events (empty when they agree)."""
    aid = row["id"]
    if expected is None or expected.requested is None:
        return [f"approval {aid}: no approval.requested event records it"]
    problems: list[str] = []
    req = expected.requested
    for name, event_name in (
        ("args_hash", "args_hash"),
        ("step_id", "step"),
        ("tool", "tool"),
        ("quorum", "quorum"),
    ):
        if name in row and event_name in req and row[name] != req[event_name]:
            problems.append(
                f"approval {aid}: {name} reads {row[name]!r} but its events say {req[event_name]!r}"
            )
    if row["state"] != expected.state:
        problems.append(f"approval {aid}: state reads {row['state']!r} but its events say {expected.state!r}")
    if list(row.get("decided_by") or []) != expected.decided_by:
        problems.append(
            f"approval {aid}: decided_by reads {list(row.get('decided_by') or [])!r} "
            f"but its events say {expected.decided_by!r}"
        )
    if (row.get("comment") or None) != (expected.comment or None):
        problems.append(f"approval {aid}: comment differs from its events")
    stored = {v["operator_id"]: (v["vote"], v.get("comment")) for v in votes}
    for operator, (vote, comment) in sorted(stored.items()):
        recorded = expected.votes.get(operator)
        if recorded is None:
            problems.append(
                f"approval {aid}: a {vote} vote by {operator!r} is stored but no event records it"
            )
        elif recorded[0] != vote or (recorded[1] or None) != (comment or None):
            problems.append(f"approval {aid}: the vote by {operator!r} differs from its event")
    for operator in sorted(set(expected.votes) - set(stored)):
        problems.append(f"approval {aid}: the vote by {operator!r} its events record is missing")
    return problems


__all__ = ["Expected", "collect", "compare"]
