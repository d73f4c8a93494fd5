"""The limits stage: take what an allowed action needs before it runs, all or nothing, and journal
the call in the same transaction."""

from __future__ import annotations

import time

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from interlock._internal.gateway import journal
from interlock._internal.gateway.decide import Intent, Verdict, _Refused
from interlock._internal.gateway.execute import Call
from interlock._internal.gateway.models import ActionStatus, Reason, Run
from interlock._internal.gateway.runtime import WorkflowRuntime
from interlock._internal.gateway.statements import COUNT_REPEATS, INSERT_IDEMPOTENCY, INT_MAX, RESERVE
from interlock._internal.ids import new_id
from interlock._internal.limits import value_limits
from interlock._internal.limits.budgets import BudgetRefused, reserve, scopes_for, usd_to_micros
from interlock._internal.limits.locks import acquire as lock_acquire
from interlock._internal.limits.locks import lock_key
from interlock._internal.limits.ratelimit import RateLimited, RateLimiter
from interlock._internal.limits.stop_rules import check_history
from interlock._internal.packages import stage as package_stage
from interlock._internal.store import tables as t
from interlock._internal.store.hot import Conn, hot_write
from interlock.exceptions import ConflictError, StorageError


def reserve_and_journal(
    engine: Engine,
    run: Run,
    agent_id: str,
    intent: Intent,
    verdict: Verdict,
    runtime: WorkflowRuntime,
    *,
    rate_limiter: RateLimiter | None,
    lease_margin_s: float,
    approval_id: str | None = None,
    claim_key: bool = True,
    cached: bool = False,
) -> Call | Verdict:
    """Take what the action needs before it runs, all or nothing, and journal the call.

    In order: the tool's rate limit, the record's lock (may wait), then in one transaction loop
    detection and the stop rules that read the run's history, the run's step and tool-call caps,
    every budget scope, the agent's idempotency key (unless ``claim_key`` is False: an approved
    action's key already holds its request), and the journal row ``executing`` with its lease and
    the ``execution.started`` audit event. Returns the :class:`Call` to make, or the verdict that
    refused it. A ``cached`` answer (:mod:`.cache`) takes the same limits but costs nothing and
    journals no upstream call, since none is made.
    """
    tool = verdict.tool
    assert tool is not None
    spec = tool.spec
    manifest = runtime.manifest
    decision = verdict.decision
    args_hash = decision.args_hash or ""
    if rate_limiter is not None and spec.rate_limit is not None:
        limited = rate_limiter.check_tool(agent_id, spec, workflow=run.workflow)
        if limited is not None:
            return refusal(verdict, _rate_reason(limited), "limited", retry_after=limited.retry_after)
    key = lock_key(run.workflow, spec, intent.arguments)
    if (
        key is not None
        and spec.lock is not None
        and not lock_acquire(engine, key, run_id=run.id, hold_s=spec.lock.hold_s, wait_s=spec.lock.wait_s)
    ):
        reason = Reason(
            code="conflict",
            message=f"another run is changing {key.split(':', 1)[1]}; waited {spec.lock.wait_s:g}s",
        )
        return refusal(verdict, reason, "denied")
    budget = manifest.budgets.per_run
    cost = 0 if cached else usd_to_micros(spec.cost_usd)
    now = time.time()
    scopes = scopes_for(manifest, run_id=run.id, agent_id=agent_id, now=now)
    params = {
        "run_id": run.id,
        "max_steps": budget.max_steps if budget.max_steps is not None else INT_MAX,
        "max_tool_calls": budget.max_tool_calls if budget.max_tool_calls is not None else INT_MAX,
    }
    step_id = new_id("stp")
    try:
        with hot_write(engine) as conn:
            if budget.max_repeats is not None:
                repeats = conn.execute(
                    COUNT_REPEATS, {"r_run": run.id, "r_tool": spec.name, "r_hash": args_hash}
                ).scalar_one()
                if repeats >= budget.max_repeats:
                    reason = Reason(
                        code="loop_detected",
                        message=f"{spec.name} with these arguments already ran {repeats} times "
                        f"in this run (max_repeats={budget.max_repeats})",
                    )
                    raise _Refused(refusal(verdict, reason, "escalated"))
            history = check_history(conn, manifest, run_id=run.id, tool=spec.name)
            if history is not None:
                raise _Refused(refusal(verdict, history, "escalated"))
            got = conn.execute(RESERVE, params).first()
            if got is None:
                raise _Refused(_refuse_caps(conn, run, runtime, verdict))
            try:
                reserve(conn, scopes, cost_micros=cost)
            except BudgetRefused as exc:
                raise _Refused(refusal(verdict, exc.reason, "limited", stop_run=True)) from None
            holds: tuple[value_limits.Hold, ...] = ()
            if manifest.budgets.value_limits:
                try:
                    holds = value_limits.reserve(
                        conn,
                        manifest,
                        spec,
                        intent.arguments,
                        workflow=run.workflow,
                        agent_id=agent_id,
                        run_id=run.id,
                        step_id=step_id,
                        now=now,
                    )
                except value_limits.ValueRefused as exc:
                    raise _Refused(refusal(verdict, exc.reason, "limited")) from None
            if run.package_id is not None:
                over = package_stage.reserve(
                    conn, run.package_id, spec.name, intent.arguments, cost_micros=cost, now=now
                )
                if over is not None:
                    raise _Refused(refusal(verdict, over, "denied"))
            if intent.idempotency_key is not None and claim_key:
                conn.execute(
                    INSERT_IDEMPOTENCY,
                    {
                        "agent_id": agent_id,
                        "key": intent.idempotency_key,
                        "run_id": run.id,
                        "args_hash": args_hash,
                        "state": "in_flight",
                        "created_at": now,
                    },
                )
            seq = int(got[0])
            upstream = journal.upstream_key(
                workflow=run.workflow,
                agent_id=agent_id,
                run_id=run.id,
                seq=seq,
                args_hash=args_hash,
                idempotency_key=intent.idempotency_key,
                approval_id=approval_id,
            )
            if not cached:
                journal.begin(
                    conn,
                    step_id=step_id,
                    run_id=run.id,
                    workflow=run.workflow,
                    agent_id=agent_id,
                    decision=decision,
                    key=upstream,
                    seq=seq,
                    idempotency_key=intent.idempotency_key,
                    approval_id=approval_id,
                    arguments=intent.arguments,
                    scopes=[(s.scope, s.key, s.period) for s in scopes],
                    cost_micros=cost,
                    lease_s=spec.timeout_s + lease_margin_s,
                    now=now,
                )
    except _Refused as refused:
        return refused.verdict
    except StorageError as exc:
        if isinstance(exc.__cause__, IntegrityError):
            raise ConflictError(
                f"an action with idempotency key {intent.idempotency_key!r} is already in progress",
                code="idempotency_in_flight",
            ) from exc
        raise
    return Call(
        run=run,
        agent_id=agent_id,
        intent=intent,
        decision=decision,
        tool=tool,
        runtime=runtime,
        step_id=step_id,
        seq=seq,
        scopes=scopes,
        cost_micros=cost,
        upstream_key=upstream,
        approval_id=approval_id,
        value_holds=holds,
    )


def refusal(
    verdict: Verdict,
    reason: Reason,
    status: ActionStatus,
    *,
    stop_run: bool = False,
    retry_after: float | None = None,
) -> Verdict:
    """The verdict turned into a refusal for ``reason`` (deny, or escalate for ``escalated``)."""
    kind = "escalate" if status == "escalated" else "deny"
    decision = verdict.decision.model_copy(update={"decision": kind, "reasons": [reason], "policy_ids": []})
    return Verdict(decision, status, verdict.tool, stop_run=stop_run, retry_after=retry_after)


def _refuse_caps(conn: Conn, run: Run, runtime: WorkflowRuntime, verdict: Verdict) -> Verdict:
    budget = runtime.manifest.budgets.per_run
    row = conn.execute(select(t.runs.c.state, t.runs.c.steps).where(t.runs.c.id == run.id)).one()
    if row[0] != "running":
        return refusal(verdict, Reason(code="run_not_active", message=f"run is {row[0]}"), "denied")
    if budget.max_steps is not None and row[1] >= budget.max_steps:
        code, limit = "step_cap_reached", f"max_steps={budget.max_steps}"
    else:
        code, limit = "tool_call_cap_reached", f"max_tool_calls={budget.max_tool_calls}"
    reason = Reason(code=code, message=f"run reached {limit}; the run is stopped")
    return refusal(verdict, reason, "limited", stop_run=True)


def _rate_reason(limited: RateLimited) -> Reason:
    return Reason(code="rate_limited", message=limited.error().message, policy_id=f"rate:{limited.scope}")
