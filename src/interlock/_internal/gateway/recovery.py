"""Recovery: what happens to a call whose process died, and how a person settles it.

Housekeeping, on every replica, calls :func:`recover_expired`. Each expired lease is claimed by
one conditional UPDATE, so with several replicas exactly one turns it into a final
**outcome unknown**, in one transaction:

- the journal row becomes ``unknown`` (it keeps the exact arguments for a person's retry);
- the reserved cost is counted as spent (it may have happened);
- the step is recorded as ``outcome_unknown`` with the audit event ``action.outcome_unknown``
  (tool, argument hash, upstream key);
- the agent's idempotency key (and an approved action's approval) answers ``outcome_unknown``
  (HTTP 504, code ``outcome_unknown``): definitive until a person resolves it;
- a handoff ``outcome_unknown`` is opened (audit event ``handoff.opened``) and a running run
  is escalated.

A person resolves it (:func:`resolve_unknown`) with one of: ``happened`` (with evidence: the
agent's key then answers ``executed``), ``not_happened`` (the cost is given back; the key
answers ``failed``), or ``retry`` (the call is made again **with the same upstream idempotency
key**, through the execute, output check, redact and record stages). The machine never re-runs a
call on its own.

Approvals claimed for execution whose process died before the call was journaled are released
(nothing reached the upstream) and run again by ``resume_held``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import and_, or_, select, update
from sqlalchemy.engine import Connection, Engine

from interlock._internal.audit.chain import append_event
from interlock._internal.gateway import cache, journal
from interlock._internal.gateway.decide import (
    Checking,
    Intent,
    check_policy,
    check_schema,
    classify_risk,
    run_brakes,
)
from interlock._internal.gateway.execute import Call, check_output, execute, redact_outcome
from interlock._internal.gateway.models import ActionResult, Decision, Reason, Run
from interlock._internal.gateway.records import (
    bump_steps,
    record_outcome,
    safe_redact,
    settle_approval,
    write_step,
)
from interlock._internal.gateway.runtime import WorkflowRuntime
from interlock._internal.gateway.statements import ADD_COST, DONE_IDEMPOTENCY
from interlock._internal.limits import value_limits
from interlock._internal.limits.budgets import Scope, settle
from interlock._internal.manifest.models import Limits
from interlock._internal.runs.state import open_handoff, set_state
from interlock._internal.runs.store import run_from_row
from interlock._internal.store import tables as t
from interlock._internal.store.engine import reading, transaction
from interlock.exceptions import ArgumentsInvalid, ConflictError, NotFound

if TYPE_CHECKING:
    from interlock._internal.gateway.pipeline import Pipeline

log = logging.getLogger("interlock.recovery")

UnknownResolution = Literal["happened", "not_happened", "retry"]
UNKNOWN_CODE = "outcome_unknown"

_E = t.executions


def _expired(now: float) -> Any:
    return or_(
        _E.c.state == "unrecorded",
        and_(_E.c.state == "executing", _E.c.lease_expires_at < now),
    )


def recover_expired(
    engine: Engine,
    *,
    now: float | None = None,
    limit: int = 100,
    runtimes: Callable[[str], WorkflowRuntime] | None = None,
) -> list[str]:
    """Turn every expired lease into a final "outcome unknown" (see the module docstring), and
    release approvals whose claim lapsed before their call was journaled. Returns the step ids
    this replica turned into unknown outcomes. Safe on every replica at once. With ``runtimes``
    (the loaded workflows), a write whose outcome is unknown also makes the cached reads it names
    stale, as a recorded write does."""
    now = time.time() if now is None else now
    with reading(engine) as conn:
        ids = [
            r[0]
            for r in conn.execute(select(_E.c.id).where(_expired(now)).order_by(_E.c.created_at).limit(limit))
        ]
    recovered = [step_id for step_id in ids if _recover_one(engine, step_id, now, runtimes)]
    _release_lapsed_claims(engine, now)
    return recovered


def _recover_one(
    engine: Engine, step_id: str, now: float, runtimes: Callable[[str], WorkflowRuntime] | None = None
) -> bool:
    with transaction(engine) as conn:
        row = (
            conn.execute(
                update(_E)
                .where(_E.c.id == step_id, _expired(now))
                .values(state="unknown", lease_expires_at=None, finished_at=now)
                .returning(_E)
            )
            .mappings()
            .first()
        )
        if row is None:
            return False  # another replica took it, or its process recorded it after all
        run = _run(conn, row["run_id"])
        decision = Decision.model_validate(row["decision"])
        cost = int(row["cost_micros"] or 0)
        # Lock order: the run row, the budget rows, then the audit tip (write_step appends).
        conn.execute(ADD_COST, {"run_id": run.id, "c_cost": cost})
        scopes = _scopes(row["scopes"])
        if scopes:
            settle(conn, scopes, reserved_micros=cost, actual_micros=cost)
        value_limits.settle(conn, step_id, happened=True, now=now)  # may have happened: counted
        _spoil_cache(conn, runtimes, run, row["tool"], row["payload"], now)
        message = (
            f"the call to {row['tool']} was in flight when its process stopped; whether it happened "
            f"is unknown (upstream idempotency key {row['upstream_key']}). A person resolves it."
        )
        reason = Reason(code=UNKNOWN_CODE, message=message)
        result = ActionResult(
            status="outcome_unknown",
            decision=decision.model_copy(update={"reasons": [reason, *decision.reasons]}),
            run_id=run.id,
            step_id=step_id,
            seq=row["seq"],
            error=message,
            approval_id=row["approval_id"],
        )
        _answer(conn, row, result)
        stored_args = safe_redact(row["payload"])
        intent = Intent(tool=row["tool"], arguments=row["payload"], idempotency_key=row["idempotency_key"])
        write_step(
            conn,
            run,
            row["agent_id"],
            intent,
            result.decision,
            "outcome_unknown",
            step_id,
            row["seq"],
            stored_args,
            now,
            error=message,
            cost_micros=cost,
            extra={"upstream_key": row["upstream_key"], "approval": row["approval_id"]},
        )
        open_handoff(
            conn,
            run_id=run.id,
            workflow=run.workflow,
            step_id=step_id,
            tool=row["tool"],
            arguments=stored_args,
            reason=reason,
            actor="interlock",
            escalate=run.state == "running",
        )
    log.warning("call %s (%s) has an unknown outcome; handed to a person", step_id, row["tool"])
    return True


def _spoil_cache(
    conn: Connection,
    runtimes: Callable[[str], WorkflowRuntime] | None,
    run: Run,
    tool: str,
    arguments: Any,
    now: float,
) -> None:
    """The write may have happened: what it would make stale in the read cache is stale."""
    if runtimes is None:
        return
    try:
        runtime = runtimes(run.workflow)
    except NotFound:
        return  # not loaded here; its cached answers expire with their ttl
    cache.invalidate(conn, runtime, run, tool, arguments, now=now)


def _release_lapsed_claims(engine: Engine, now: float) -> None:
    """Approvals claimed by a process that died before journaling their call go back to
    ``approved`` (nothing reached the upstream), for ``resume_held`` to run them."""
    a = t.approvals
    with reading(engine) as conn:
        ids = [
            r[0]
            for r in conn.execute(
                select(a.c.id).where(a.c.execution == "executing", a.c.lease_expires_at < now).limit(100)
            )
        ]
    for approval_id in ids:
        with transaction(engine) as conn:
            if conn.execute(select(_E.c.id).where(_E.c.approval_id == approval_id).limit(1)).first():
                continue  # journaled: the journal's own lease decides
            released = conn.execute(
                update(a)
                .where(a.c.id == approval_id, a.c.execution == "executing", a.c.lease_expires_at < now)
                .values(execution=None, lease_expires_at=None)
            ).rowcount
            if released:
                append_event(
                    conn,
                    kind="approval.claim_released",
                    actor="interlock",
                    data={
                        "approval": approval_id,
                        "reason": "its process stopped before calling the upstream",
                    },
                )


def resolve_unknown(
    p: Pipeline,
    handoff_id: str,
    *,
    action: UnknownResolution,
    actor: str,
    evidence: str | None = None,
    comment: str | None = None,
) -> ActionResult:
    """A person settles an outcome-unknown handoff. Decided once (the handoff and the journal row
    change conditionally). Returns the agent's definitive answer for the action."""
    if action == "happened" and not (evidence or "").strip():
        raise ArgumentsInvalid(
            "'it happened' needs evidence (a reference, a link, what you saw)", field="evidence"
        )
    now = time.time()
    with transaction(p.engine) as conn:
        handoff = _open_handoff(conn, handoff_id)
        row = journal.find(conn, handoff["step_id"])
        if row is None or row["state"] != "unknown":
            raise ConflictError(
                f"the call behind handoff {handoff_id} is not unknown", code="already_decided"
            )
        run = _run(conn, row["run_id"])
        decision = Decision.model_validate(row["decision"])
        resolution = {"action": action, "actor": actor, "evidence": evidence, "comment": comment, "at": now}
        if action == "retry":
            _check_retry(p, run, row)
        new_state = {"happened": "happened", "not_happened": "not_happened", "retry": "executing"}[action]
        values: dict[str, Any] = {"state": new_state, "resolution": resolution}
        retry_id, retry_seq = row["id"], row["seq"]
        if action == "retry":
            spec = p.runtime_for(run)[0].tools[row["tool"]].spec
            # The retry is a step of its own; the journal row follows it (same upstream key).
            retry_seq = bump_steps(conn, run.id)
            retry_id = f"{row['id']}-r{int(row['attempts']) + 1}"
            values.update(
                id=retry_id,
                seq=retry_seq,
                lease_expires_at=now + spec.timeout_s + p.lease_margin_s,
                attempts=_E.c.attempts + 1,
                finished_at=None,
                cost_micros=0,  # counted as spent when it became unknown
                scopes=None,
            )
        else:
            values["payload"] = None
        changed = conn.execute(
            update(_E).where(_E.c.id == row["id"], _E.c.state == "unknown").values(**values)
        ).rowcount
        if not changed:
            raise ConflictError(
                f"the call behind handoff {handoff_id} was already resolved", code="already_decided"
            )
        result = _resolved_result(run, row, decision, action, actor, evidence, comment)
        if action != "retry":
            _settle_resolution(conn, run, row, action, result)
        conn.execute(
            update(t.handoffs)
            .where(t.handoffs.c.id == handoff_id)
            .values(state="resolved", resolved_at=now, resolved_by=actor, resolution=resolution)
        )
        if run.state == "escalated":
            set_state(
                conn,
                run.id,
                "running",
                reason=f"outcome resolved by {actor}: {action}",
                actor=actor,
                workflow=run.workflow,
                data={"handoff": handoff_id, "action": action},
            )
        append_event(
            conn,
            kind="action.outcome_resolved",
            actor=actor,
            workflow=run.workflow,
            run_id=run.id,
            data={
                "handoff": handoff_id,
                "step": row["id"],
                "tool": row["tool"],
                "args_hash": row["args_hash"],
                "upstream_key": row["upstream_key"],
                "resolution": action,
                "evidence": safe_redact(evidence),
                "comment": safe_redact(comment),
            },
        )
    if action != "retry":
        return result
    return _retry(p, run, row, decision, step_id=retry_id, seq=retry_seq)


def _check_retry(p: Pipeline, run: Run, row: Any) -> None:
    """A retry goes through schema, risk, policy and the run brakes again: what is forbidden or
    paused now is not called, whoever asks."""
    runtime = p.runtime_for(run)[0]  # a canary run's version, while its rollout runs
    paused = p.load_run(run.id)[1]
    intent = Intent(tool=row["tool"], arguments=row["payload"])
    c = Checking(runtime, row["agent_id"], run.environment, intent, run.steps, run.tool_calls)
    running = run.model_copy(update={"state": "running"})  # the resolution resumes it
    refused = check_schema(c) or classify_risk(c) or check_policy(c) or run_brakes(c, running, paused)
    if refused is not None and refused.decision.decision != "require_approval":
        reason = refused.decision.reasons[0]
        raise ConflictError(f"cannot retry now: {reason.message}", code=reason.code)


def _retry(p: Pipeline, run: Run, row: Any, decision: Decision, *, step_id: str, seq: int) -> ActionResult:
    """Make the call again with the same upstream key, through the execute, output check, redact
    and record stages. The journal row was re-armed to ``executing`` with a fresh lease, so a
    crash here is recovered like any other call."""
    runtime = p.runtime_for(run)[0]  # a canary run's version, while its rollout runs
    tool = runtime.tools[row["tool"]]
    intent = Intent(
        tool=row["tool"],
        arguments=row["payload"],
        idempotency_key=row["idempotency_key"],
        reasoning=f"retry of {row['id']} after an unknown outcome",
    )
    call = Call(
        run=run.model_copy(update={"state": "running"}),
        agent_id=row["agent_id"],
        intent=intent,
        decision=decision,
        tool=tool,
        runtime=runtime,
        step_id=step_id,
        seq=seq,
        scopes=[],
        cost_micros=0,
        upstream_key=row["upstream_key"],
        approval_id=row["approval_id"],
    )
    outcome = execute(call)
    outcome = check_output(call, outcome)
    outcome = redact_outcome(call, outcome)
    return record_outcome(p.engine, call, outcome, sqlite=p.sqlite, budget_warn_ratio=p.budget_warn_ratio)


def _resolved_result(
    run: Run,
    row: Any,
    decision: Decision,
    action: str,
    actor: str,
    evidence: str | None,
    comment: str | None,
) -> ActionResult:
    if action == "happened":
        reason = Reason(code="outcome_confirmed", message=f"{actor} confirmed it happened: {evidence}"[:500])
        status: Any = "executed"
        error = None
    else:
        why = f": {comment}" if comment else ""
        reason = Reason(code="outcome_denied", message=f"{actor} confirmed it did not happen{why}"[:500])
        status, error = "failed", reason.message
    return ActionResult(
        status=status,
        decision=decision.model_copy(update={"reasons": [reason, *decision.reasons]}),
        run_id=run.id,
        step_id=row["id"],
        seq=row["seq"],
        error=error,
        approval_id=row["approval_id"],
    )


def _settle_resolution(conn: Connection, run: Run, row: Any, action: str, result: ActionResult) -> None:
    cost = int(row["cost_micros"] or 0)
    if action == "not_happened" and cost:
        # Counted as spent when it became unknown; it did not happen, so it is given back.
        conn.execute(ADD_COST, {"run_id": run.id, "c_cost": -cost})
        scopes = _scopes(row["scopes"])
        if scopes:
            settle(conn, scopes, reserved_micros=0, actual_micros=-cost)
    if action == "not_happened":  # counted when it became unknown; it did not happen
        value_limits.give_back(conn, row["id"], now=time.time())
    conn.execute(
        update(t.steps)
        .where(t.steps.c.id == row["id"])
        .values(status=result.status, error=result.error, cost_micros=0 if action == "not_happened" else cost)
    )
    _answer(conn, row, result)


def _answer(conn: Connection, row: Any, result: ActionResult) -> None:
    """The definitive answer to the agent's retry with the same key, and on the approval."""
    if row["approval_id"] is not None:
        settle_approval(
            conn, row["approval_id"], "unknown" if result.status == "outcome_unknown" else "done", result
        )
    elif row["idempotency_key"] is not None:
        conn.execute(
            DONE_IDEMPOTENCY,
            {
                "k_agent": row["agent_id"],
                "k_key": row["idempotency_key"],
                "k_step": row["id"],
                "k_outcome": result.model_dump(mode="json"),
            },
        )


def _open_handoff(conn: Connection, handoff_id: str) -> Any:
    h = (
        conn.execute(select(t.handoffs).where(t.handoffs.c.id == handoff_id).with_for_update())
        .mappings()
        .first()
    )
    if h is None:
        raise NotFound(f"unknown handoff {handoff_id!r}", code="unknown_handoff")
    if h["reason_code"] != UNKNOWN_CODE:
        raise ArgumentsInvalid(
            "happened, not_happened and retry resolve an outcome-unknown handoff; this one is "
            f"{h['reason_code']}: resume, resume_with_arguments or stop",
            field="action",
        )
    if h["state"] != "open":
        raise ConflictError(f"handoff {handoff_id} was already {h['state']}", code="already_decided")
    return h


def _run(conn: Connection, run_id: str) -> Run:
    row = conn.execute(select(t.runs).where(t.runs.c.id == run_id)).mappings().one()
    return run_from_row(row)


def _scopes(raw: Any) -> list[Scope]:
    # Settling needs only the scope's identity; its limits were checked at reservation.
    return [Scope(s[0], s[1], s[2], Limits()) for s in (raw or [])]
