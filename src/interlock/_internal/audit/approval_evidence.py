"""Approvals as evidence: what the audit events say about each approval, held against the tables.

The ``approvals`` and ``approval_votes`` rows are working copies; the hashed events are the record.
Every vote is an event (``approval.voted`` for an approve vote short of the quorum,
``approval.approved`` for the one that reaches it, ``approval.rejected`` for a reject vote), and
every closing names who closed it and the comment. From the events alone this module rebuilds each
approval's state, deciders, comment and votes, and lists where the rows disagree, so a forged
``decided_by`` or ``operator_id`` is caught by ``audit verify`` (against the database) and by
``verify-bundle`` (against the bundle's copies).

A verifier agent's verdict is evidence too: ``verification.verdict`` records the verifier, the
verdict, the argument hash it judged and whether it settled the approval, and the
``approval_verdicts`` row and the approval's ``verifier`` and ``verification`` are held to it.
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
    verdict: dict[str, Any] | None = None  # the verification.verdict event's data


VERDICT_KIND = "verification.verdict"
# What a verdict row must say as its event does.
_VERDICT_FIELDS = ("verifier", "verdict", "args_hash", "settles", "code", "cost_micros")


def collect(events: Iterable[tuple[int, str, Mapping[str, Any]]]) -> dict[str, Expected]:
    """Fold ``(seq, kind, data)`` of approval events, in log order, into what each approval must be."""
    found: dict[str, Expected] = {}
    for seq, kind, data in events:
        aid = data.get("approval")
        if not (kind.startswith("approval.") or kind == VERDICT_KIND) or not isinstance(aid, str):
            continue
        ex = found.setdefault(aid, Expected(aid, seq))
        ex.seq = seq
        operator = data.get("operator")
        comment = data.get("comment")
        if kind == "approval.requested":
            ex.requested = dict(data)
        elif kind == VERDICT_KIND:
            ex.verdict = dict(data)
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
    row: Mapping[str, Any],
    votes: Iterable[Mapping[str, Any]],
    expected: Expected | None,
    verdict: Mapping[str, Any] | None = None,
    *,
    verdicts_carried: bool = True,
) -> list[str]:
    """Where an approval row, its vote rows and its verifier's verdict row disagree with the events
    (empty when they agree)."""
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
    return problems + (_compare_verdict(row, verdict, expected) if verdicts_carried else [])


def _compare_verdict(
    row: Mapping[str, Any], verdict: Mapping[str, Any] | None, expected: Expected
) -> list[str]:
    aid = row["id"]
    requested = expected.requested or {}
    problems: list[str] = []
    if "verifier" in row and (row.get("verifier") or None) != (requested.get("verifier") or None):
        problems.append(
            f"approval {aid}: verifier reads {row.get('verifier')!r} but its events say "
            f"{requested.get('verifier')!r}"
        )
    event = expected.verdict
    if verdict is None and event is not None:
        problems.append(
            f"approval {aid}: the verdict by {event.get('verifier')!r} its events record is missing"
        )
    elif verdict is not None and event is None:
        problems.append(f"approval {aid}: a verdict is stored but no event records it")
    elif verdict is not None and event is not None:
        for name in _VERDICT_FIELDS:
            if verdict.get(name) != event.get(name):
                problems.append(f"approval {aid}: the verdict's {name} differs from its event")
    if "verification" in row and row.get("verifier") is not None:
        state = "awaiting" if event is None else "settled" if event.get("settles") else "escalated"
        if row.get("verification") != state:
            problems.append(
                f"approval {aid}: verification reads {row.get('verification')!r} but its events say {state!r}"
            )
    return problems


__all__ = ["VERDICT_KIND", "Expected", "collect", "compare"]
