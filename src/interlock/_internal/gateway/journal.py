"""The execution journal: every upstream call is written down, with an audit event, before it leaves.

A call's life in the ``executions`` table::

    executing ──(outcome recorded)──────────────▶ done | failed
        │ └───(recording failed after the call)─▶ unrecorded ─┐
        └─────(lease expired: process died)───────────────────┴▶ unknown ──(a person)──▶ happened
                                                                        │                not_happened
                                                                        └─(retry now)──▶ executing

``begin`` runs inside the reservation's transaction, so a call is journaled (``execution.started``
names the tool, the argument hash and the upstream idempotency key) exactly when its budget is
reserved and its idempotency key claimed; if that transaction does not commit, nothing is called.
The upstream key is derived from the action, never drawn at random, and is unique in the journal:
no path (a retry, a second replica, housekeeping re-running an approval) can start a second call
for the same action. The one exception is a person's "retry now" on an unknown outcome, which
re-arms the same row and so sends the same key again.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.engine import Engine

from interlock._internal.audit.chain import append_event
from interlock._internal.gateway.models import Decision
from interlock._internal.store import tables as t
from interlock._internal.store.engine import transaction
from interlock._internal.store.hot import Conn, InsertIgnore
from interlock.exceptions import ConflictError

log = logging.getLogger("interlock.journal")

KEY_PREFIX = "il1-"

_E = t.executions
_INSERT = InsertIgnore(_E)
FINISH = (
    update(_E)
    .where(_E.c.id == bindparam("e_id"), _E.c.state == "executing")
    .values(state=bindparam("e_state"), payload=None, lease_expires_at=None, finished_at=bindparam("e_now"))
)
# A failed call's row may be taken again by the agent's retry with the same key (the failure
# released the agent's idempotency key); the upstream then sees the same key again.
REARM_FAILED = (
    update(_E)
    .where(_E.c.upstream_key == bindparam("e_key"), _E.c.state == "failed")
    .values(
        id=bindparam("e_id"),
        run_id=bindparam("e_run"),
        seq=bindparam("e_seq"),
        state="executing",
        attempts=_E.c.attempts + 1,
        decision=bindparam("e_decision"),
        payload=bindparam("e_payload"),
        scopes=bindparam("e_scopes"),
        cost_micros=bindparam("e_cost"),
        lease_expires_at=bindparam("e_lease"),
        finished_at=None,
    )
)


def upstream_key(
    *,
    workflow: str,
    agent_id: str,
    run_id: str,
    seq: int,
    args_hash: str,
    idempotency_key: str | None = None,
    approval_id: str | None = None,
) -> str:
    """The idempotency key the upstream sees, derived from the action so that every retry, every
    replica and the approved execution of a request carry the same one.

    With the agent's idempotency key: (workflow, agent, key), the identity of the action across
    retries and approvals. Otherwise an approved action's approval (with the approved arguments'
    hash), else the run's step sequence number, which the reservation hands out once.
    """
    parts: tuple[str, ...]
    if idempotency_key is not None:
        parts = ("agent", workflow, agent_id, idempotency_key)
    elif approval_id is not None:
        parts = ("approval", workflow, approval_id, args_hash)
    else:
        parts = ("step", workflow, run_id, str(seq), args_hash)
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()
    return KEY_PREFIX + digest[:40]


def begin(
    conn: Conn,
    *,
    step_id: str,
    run_id: str,
    workflow: str,
    agent_id: str,
    decision: Decision,
    key: str,
    seq: int,
    idempotency_key: str | None,
    approval_id: str | None,
    arguments: Any,
    scopes: list[tuple[str, str, str]],
    cost_micros: int,
    lease_s: float,
    now: float,
) -> None:
    """Journal a call as ``executing`` with its lease, and its audit event, in the caller's
    reservation transaction (call it last there: the audit append takes the chain tip).

    Raises :class:`ConflictError` (``already_executed``) when the same action already has a
    call that is not a failed one: it is in flight, done, or its outcome is unknown."""
    lease = now + lease_s
    tool = decision.tool or ""
    args_hash = decision.args_hash or ""
    decision_json = decision.model_dump(mode="json")
    fresh = _INSERT.run(
        conn,
        {
            "id": step_id,
            "run_id": run_id,
            "workflow": workflow,
            "agent_id": agent_id,
            "tool": tool,
            "args_hash": args_hash,
            "upstream_key": key,
            "idempotency_key": idempotency_key,
            "approval_id": approval_id,
            "seq": seq,
            "state": "executing",
            "attempts": 1,
            "decision": decision_json,
            "payload": arguments,
            "scopes": [list(s) for s in scopes] or None,
            "cost_micros": cost_micros,
            "lease_expires_at": lease,
            "resolution": None,
            "created_at": now,
            "finished_at": None,
        },
    )
    if not fresh:
        rearmed = conn.execute(
            REARM_FAILED,
            {
                "e_key": key,
                "e_id": step_id,
                "e_run": run_id,
                "e_seq": seq,
                "e_decision": decision_json,
                "e_payload": arguments,
                "e_scopes": [list(s) for s in scopes] or None,
                "e_cost": cost_micros,
                "e_lease": lease,
            },
        ).rowcount
        if not rearmed:
            raise ConflictError(
                "this action already has an upstream call that did not fail (in flight, done, or "
                "with an unknown outcome); it is not called again",
                code="already_executed",
                details={"upstream_key": key},
            )
    append_event(
        conn,
        kind="execution.started",
        actor=f"agent:{agent_id}",
        workflow=workflow,
        run_id=run_id,
        data={
            "step": step_id,
            "seq": seq,
            "tool": tool,
            "verb": decision.verb,
            "args_hash": args_hash,
            "upstream_key": key,
            "approval": approval_id,
            "lease_expires_at": lease,
            **({"package": decision.package_id} if decision.package_id is not None else {}),
        },
    )


def finish(conn: Conn, step_id: str, *, failed: bool, now: float) -> None:
    """Close a journaled call with its recorded outcome (in the outcome's transaction)."""
    conn.execute(FINISH, {"e_id": step_id, "e_state": "failed" if failed else "done", "e_now": now})


def mark_unrecorded(engine: Engine, step_id: str) -> None:
    """The upstream answered but its outcome could not be stored: say so, best effort, in a
    transaction of its own. Whether or not this write lands, the call is never "not started":
    the row stays ``executing`` until its lease expires and housekeeping makes it ``unknown``."""
    try:
        with transaction(engine) as conn:
            conn.execute(
                update(_E).where(_E.c.id == step_id, _E.c.state == "executing").values(state="unrecorded")
            )
    except Exception:  # the database is failing; the lease covers this
        log.warning("could not mark call %s as executed-unrecorded", step_id, exc_info=True)


def find(conn: Conn, step_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(_E).where(_E.c.id == step_id)).mappings().first()
    return dict(row) if row is not None else None


def in_flight_for_approval(conn: Conn, approval_id: str) -> bool:
    """True when an approved action's call was journaled (it may have reached the upstream)."""
    return (
        conn.execute(select(_E.c.id).where(and_(_E.c.approval_id == approval_id)).limit(1)).first()
        is not None
    )
