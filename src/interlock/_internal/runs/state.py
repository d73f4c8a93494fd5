"""Run state changes, in one place: what leaving ``running`` releases, and the audit event."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import update

from interlock._internal.audit.chain import append_event
from interlock._internal.gateway.models import Reason
from interlock._internal.ids import new_id
from interlock._internal.limits.locks import release_run
from interlock._internal.store import tables as t
from interlock._internal.store.hot import Conn

TERMINAL = ("completed", "failed", "stopped")
STATES = ("running", "escalated", *TERMINAL)


def set_state(
    conn: Conn,
    run_id: str,
    state: str,
    *,
    reason: str | None,
    actor: str,
    workflow: str,
    data: dict[str, Any] | None = None,
) -> None:
    if state not in STATES:
        raise ValueError(f"unknown run state {state!r}")
    values: dict[str, Any] = {"state": state, "state_reason": reason}
    values["ended_at"] = time.time() if state in TERMINAL else None
    # RETURNING the run's package costs no extra round trip and puts it in the event.
    package_id = conn.execute(
        update(t.runs).where(t.runs.c.id == run_id).values(**values).returning(t.runs.c.package_id)
    ).scalar()
    if state != "running":
        # Records the run was changing are free for other runs once it stops acting.
        release_run(conn, run_id)
    append_event(
        conn,
        kind=f"run.{state}",
        actor=actor,
        workflow=workflow,
        run_id=run_id,
        data={
            "state": state,
            "reason": reason,
            **(data or {}),
            **({"package": package_id} if package_id is not None else {}),
        },
    )


def open_handoff(
    conn: Conn,
    *,
    run_id: str,
    workflow: str,
    step_id: str | None,
    tool: str | None,
    arguments: Any,
    reason: Reason,
    actor: str,
    escalate: bool = True,
) -> str:
    """Leave a handoff item for a person (audit event ``handoff.opened``) and escalate the run.

    ``escalate=False`` leaves the run's state alone (a run that already ended stays ended)."""
    handoff_id = new_id("hof")
    conn.execute(
        t.handoffs.insert().values(
            id=handoff_id,
            run_id=run_id,
            step_id=step_id,
            workflow=workflow,
            tool=tool,
            arguments=arguments,
            reason_code=reason.code,
            message=reason.message,
            state="open",
            created_at=time.time(),
        )
    )
    if escalate:
        set_state(
            conn,
            run_id,
            "escalated",
            reason=reason.message,
            actor=actor,
            workflow=workflow,
            data={"handoff": handoff_id, "code": reason.code, "step": step_id},
        )
    # Appended after the run row's update: every transaction takes the run row before the audit tip.
    append_event(
        conn,
        kind="handoff.opened",
        actor=actor,
        workflow=workflow,
        run_id=run_id,
        data={"handoff": handoff_id, "code": reason.code, "step": step_id, "tool": tool},
    )
    return handoff_id
