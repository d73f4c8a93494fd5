"""The record stage: what the pipeline writes — steps, decisions, approval requests, outcomes,
idempotency answers — always redacted, with the audit event in the same transaction."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from interlock._internal.audit.canonical import hash_value, is_json
from interlock._internal.audit.chain import append_event
from interlock._internal.gateway import cache, journal
from interlock._internal.gateway.dataflow import classes_of
from interlock._internal.gateway.decide import Intent, Verdict
from interlock._internal.gateway.models import (
    ActionResult,
    ActionStatus,
    Decision,
    Run,
)
from interlock._internal.gateway.runtime import ToolRuntime, WorkflowRuntime
from interlock._internal.gateway.statements import (
    ADD_COST,
    BUMP_STEPS,
    DONE_IDEMPOTENCY,
    INSERT_DECISION,
    INSERT_IDEMPOTENCY,
    INSERT_STEP,
    RELEASE_IDEMPOTENCY,
)
from interlock._internal.ids import new_id
from interlock._internal.limits import value_limits
from interlock._internal.limits.budgets import DEFAULT_WARN_RATIO, settle, warn_nearly_spent
from interlock._internal.limits.stop_rules import sequence_broken
from interlock._internal.manifest.models import RuleSpec
from interlock._internal.runs.state import open_handoff, set_state
from interlock._internal.store import tables as t
from interlock._internal.store.hot import Conn, hot_write
from interlock._internal.telemetry.redaction import mask_secrets, redact
from interlock.exceptions import StorageError

if TYPE_CHECKING:
    from interlock._internal.gateway.execute import Call, Outcome


def create_approval(
    conn: Conn,
    run: Run,
    agent_id: str,
    intent: Intent,
    decision: Decision,
    tool: ToolRuntime,
    runtime: WorkflowRuntime,
    step_id: str,
    stored_args: Any,
    now: float,
) -> str:
    manifest = runtime.manifest
    rules = rules_by_policy_id(manifest.rules.require_approval, "review")
    matched = [rules[p] for p in decision.policy_ids if p in rules]
    expires = min(
        [r.expires_after_s for r in matched if r.expires_after_s] or [manifest.approvals.expires_after_s]
    )
    quorum = max([r.quorum for r in matched if r.quorum] or [manifest.approvals.quorum])
    approval_id = new_id("apr")
    spec = tool.spec
    # Propose, then verify: a request a verifier covers goes to that agent first. A verifier never
    # judges its own proposals.
    found = manifest.verification.verifier_for(decision.policy_ids) if manifest.verification else None
    verifier = found.agent if found is not None and found.agent != agent_id else None
    package = {
        "action": f"{spec.verb} via {spec.name}",
        "tool": spec.name,
        "verb": spec.verb,
        "description": spec.description,
        "arguments": stored_args,
        "reasoning": safe_redact(intent.reasoning),
        "confidence": intent.confidence,
        "evidence": safe_redact(list(intent.evidence or [])),
        "risk": decision.risk,
        "impact_if_accepted": spec.impact_if_accepted,
        "impact_if_rejected": spec.impact_if_rejected,
        "policy_reasons": [r.model_dump(exclude_none=True) for r in decision.reasons],
        # What the run carries when the person decides: the data this action would move.
        "data_classes": list(decision.data_classes),
        "rules": [r.description for r in matched if r.description],
    }
    if manifest.budgets.value_limits:
        # What is left under each value limit this action counts against, when it was asked.
        left = value_limits.headroom(
            conn,
            manifest,
            spec,
            intent.arguments,
            workflow=run.workflow,
            agent_id=agent_id,
            run_id=run.id,
            now=now,
        )
        if left:
            package["value_limits"] = left
    conn.execute(
        t.approvals.insert().values(
            id=approval_id,
            run_id=run.id,
            step_id=step_id,
            decision_id=step_id,
            workflow=run.workflow,
            agent_id=agent_id,
            tool=spec.name,
            verb=spec.verb,
            args_hash=decision.args_hash,
            arguments=stored_args,
            payload=intent.arguments,
            idempotency_key=intent.idempotency_key,
            state="pending",
            reasons=[r.model_dump() for r in decision.reasons],
            package=package,
            quorum=quorum,
            expires_at=now + expires,
            created_at=now,
            verifier=verifier,
            verification=None if verifier is None else "awaiting",
        )
    )
    append_event(
        conn,
        kind="approval.requested",
        actor=f"agent:{agent_id}",
        workflow=run.workflow,
        run_id=run.id,
        data={
            "approval": approval_id,
            "step": step_id,
            "tool": spec.name,
            "verb": spec.verb,
            "args_hash": decision.args_hash,
            "quorum": quorum,
            "expires_at": now + expires,
            **({"package": run.package_id} if run.package_id is not None else {}),
            **({"verifier": verifier} if verifier is not None else {}),
        },
    )
    return approval_id


def write_step(
    conn: Conn,
    run: Run,
    agent_id: str,
    intent: Intent,
    decision: Decision,
    status: str,
    step_id: str,
    seq: int,
    stored_args: Any,
    now: float,
    *,
    result: Any = None,
    error: str | None = None,
    duration_ms: float | None = None,
    cost_micros: int = 0,
    data_classes: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    cached_from: str | None = None,
) -> None:
    reasons = [r.model_dump() for r in decision.reasons]
    conn.execute(
        INSERT_DECISION,
        {
            "id": step_id,
            "run_id": run.id,
            "step_id": step_id,
            "agent_id": agent_id,
            "workflow": run.workflow,
            "environment": run.environment,
            "tool": decision.tool,
            "verb": decision.verb,
            "decision": decision.decision,
            "reasons": reasons,
            "policy_ids": decision.policy_ids,
            "risk": decision.risk,
            "args_hash": decision.args_hash,
            "arguments": stored_args,
            "manifest_version": decision.manifest_version,
            "policy_version": decision.policy_version,
            "confidence": intent.confidence,
            "binding": decision.binding,
            "data_classes": decision.data_classes or None,
            "created_at": now,
            "package_id": run.package_id,
        },
    )
    conn.execute(
        INSERT_STEP,
        {
            "id": step_id,
            "run_id": run.id,
            "seq": seq,
            "kind": "tool",
            "tool": decision.tool,
            "verb": decision.verb,
            "status": status,
            "decision_id": step_id,
            "args_hash": decision.args_hash,
            "arguments": stored_args,
            "result": result,
            "error": error,
            "reasoning": safe_redact(intent.reasoning),
            "confidence": intent.confidence,
            "evidence": list(intent.evidence) if intent.evidence else None,
            "duration_ms": duration_ms,
            "cost_micros": cost_micros,
            "data_classes": data_classes,
            "created_at": now,
            "cached_from": cached_from,
        },
    )
    data: dict[str, Any] = {
        "step": step_id,
        "seq": seq,
        "tool": decision.tool,
        "verb": decision.verb,
        "args_hash": decision.args_hash,
        "decision": decision.decision,
        "reasons": [r.code for r in decision.reasons],
        "policy_ids": decision.policy_ids,
        "risk": decision.risk,
        "manifest_version": decision.manifest_version,
        "policy_version": decision.policy_version,
        "result_hash": None if result is None else hash_value(result),
        "error": error,
        **({"package": run.package_id} if run.package_id is not None else {}),
        **(extra or {}),
    }
    # Added only when present, so actions on tools without systems keep their event shape.
    if decision.binding is not None:
        data["binding"] = decision.binding
    if data_classes is not None:
        data["data_classes_in"] = data_classes["classes"]
    if cached_from is not None:
        data["cached_from"] = cached_from
    append_event(
        conn,
        kind="action." + status,
        actor=f"agent:{agent_id}",
        workflow=run.workflow,
        run_id=run.id,
        data=data,
    )


def store_outcome(
    conn: Conn,
    agent_id: str,
    intent: Intent,
    run_id: str,
    step_id: str,
    args_hash: str,
    result: ActionResult,
    now: float,
) -> None:
    outcome = result.model_dump(mode="json")
    updated = conn.execute(
        DONE_IDEMPOTENCY,
        {"k_agent": agent_id, "k_key": intent.idempotency_key, "k_step": step_id, "k_outcome": outcome},
    ).rowcount
    if not updated:
        conn.execute(
            INSERT_IDEMPOTENCY,
            {
                "agent_id": agent_id,
                "key": intent.idempotency_key,
                "run_id": run_id,
                "args_hash": args_hash,
                "state": "done",
                "step_id": step_id,
                "outcome": outcome,
                "created_at": now,
            },
        )


def rules_by_policy_id(rules: list[RuleSpec], prefix: str) -> dict[str, RuleSpec]:
    kind = "require_approval" if prefix == "review" else prefix
    return {f"{prefix}:{r.id or f'{kind}[{i}]'}": r for i, r in enumerate(rules)}


def mask_only(value: Any, secrets: tuple[str, ...]) -> Any:
    """The value with only the given secrets masked (what the agent may see of a result)."""
    if not is_json(value):
        return {"unserialisable": type(value).__name__}
    if not secrets:
        return value
    return mask_secrets(value, secrets)


def safe_redact(value: Any, secrets: tuple[str, ...] = ()) -> Any:
    if not is_json(value):
        return {"unserialisable": type(value).__name__}
    return redact(value, extra_secrets=secrets)


def bump_steps(conn: Conn, run_id: str) -> int:
    """Take the run's next step number."""
    return int(conn.execute(BUMP_STEPS, {"run_id": run_id}).scalar_one())


def record_decision(
    engine: Engine,
    run: Run,
    agent_id: str,
    intent: Intent,
    verdict: Verdict,
    runtime: WorkflowRuntime | None,
) -> ActionResult:
    """Record a decision that executes nothing: a denial, an escalation (with its handoff), a
    stopped run, or an approval request (the approval gate), with its step and audit event."""
    decision = verdict.decision
    step_id = new_id("stp")
    approval_id: str | None = None
    stored_args = safe_redact(intent.arguments)
    now = time.time()
    with hot_write(engine) as conn:
        seq = bump_steps(conn, run.id)
        if decision.decision == "require_approval" and runtime is not None and verdict.tool is not None:
            approval_id = create_approval(
                conn, run, agent_id, intent, decision, verdict.tool, runtime, step_id, stored_args, now
            )
        write_step(conn, run, agent_id, intent, decision, verdict.status, step_id, seq, stored_args, now)
        if verdict.status == "escalated":
            open_handoff(
                conn,
                run_id=run.id,
                workflow=run.workflow,
                step_id=step_id,
                tool=decision.tool,
                arguments=stored_args,
                reason=decision.reasons[0],
                actor="interlock",
            )
        elif verdict.stop_run:
            set_state(
                conn,
                run.id,
                "stopped",
                reason=decision.reasons[0].message,
                actor="interlock",
                workflow=run.workflow,
                data={"code": decision.reasons[0].code, "step": step_id},
            )
        result = ActionResult(
            status=verdict.status,
            decision=decision,
            run_id=run.id,
            step_id=step_id,
            seq=seq,
            approval_id=approval_id,
            retry_after=verdict.retry_after,
        )
        if approval_id is not None and intent.idempotency_key is not None:
            store_outcome(conn, agent_id, intent, run.id, step_id, decision.args_hash or "", result, now)
    return result


def record_outcome(
    engine: Engine,
    call: Call,
    outcome: Outcome,
    *,
    sqlite: bool,
    budget_warn_ratio: float = DEFAULT_WARN_RATIO,
) -> ActionResult:
    """Record what the call did: cost settled, the agent's idempotency key answered (or released
    after a failure, so a retry may run again with the same upstream key), the journal closed, the
    step, decision and audit event written, an approval's outcome stored, all in one transaction.

    If that transaction fails, the upstream has acted and nothing says so: the journal row is
    marked executed-unrecorded (best effort; else its lease runs out) and the caller gets
    :class:`StorageError` ``outcome_unrecorded``. The call is never run again by any path."""
    run, intent, decision = call.run, call.intent, call.decision
    error = outcome.error
    status: ActionStatus = "failed" if error else "executed"
    now = time.time()
    result = ActionResult(
        status=status,
        decision=decision,
        run_id=run.id,
        step_id=call.step_id,
        result=outcome.stored_result,
        error=error,
        seq=call.seq,
        approval_id=call.approval_id,
    )
    spent = call.cost_micros if error is None else 0  # a failed call releases its reservation
    try:
        # Lock order in every transaction: the run row, then budget rows, then the audit tip
        # (appended last). Reservations take the same order, so concurrent actions never deadlock.
        # (SQLite locks the whole file per transaction, so there a zero-cost update is skipped.)
        with hot_write(engine) as conn:
            if spent or not sqlite:
                conn.execute(ADD_COST, {"run_id": run.id, "c_cost": spent})
            if call.scopes:
                settle(conn, call.scopes, reserved_micros=call.cost_micros, actual_micros=spent)
                warn_nearly_spent(
                    conn, call.scopes, workflow=run.workflow, run_id=run.id, ratio=budget_warn_ratio
                )
            if call.value_holds:
                value_limits.settle(
                    conn, call.step_id, happened=error is None, now=now, holds=call.value_holds
                )
            if call.approval_id is not None:
                settle_approval(conn, call.approval_id, "done", result)
            elif intent.idempotency_key is not None:
                if error is None:
                    store_outcome(
                        conn,
                        call.agent_id,
                        intent,
                        run.id,
                        call.step_id,
                        decision.args_hash or "",
                        result,
                        now,
                    )
                else:
                    conn.execute(
                        RELEASE_IDEMPOTENCY, {"k_agent": call.agent_id, "k_key": intent.idempotency_key}
                    )
            journal.finish(conn, call.step_id, failed=error is not None, now=now)
            _cache_effects(conn, call, outcome, now)
            write_step(
                conn,
                run,
                call.agent_id,
                intent,
                decision,
                status,
                call.step_id,
                call.seq,
                outcome.stored_args,
                now,
                result=outcome.stored_result,
                error=error,
                duration_ms=outcome.duration_ms,
                cost_micros=spent,
                data_classes=classes_of(call.tool.spec, outcome.result) if error is None else None,
                cached_from=outcome.cached_from,
            )
            if error is not None:
                broken = sequence_broken(conn, call.runtime.manifest, run_id=run.id, tool=call.tool.spec.name)
                if broken is not None:
                    open_handoff(
                        conn,
                        run_id=run.id,
                        workflow=run.workflow,
                        step_id=call.step_id,
                        tool=call.tool.spec.name,
                        arguments=outcome.stored_args,
                        reason=broken,
                        actor="interlock",
                    )
    except Exception as exc:
        journal.mark_unrecorded(engine, call.step_id)
        raise StorageError(
            f"{call.tool.spec.name} was called (upstream key {call.upstream_key}) but its outcome "
            "could not be recorded; it will not be called again. Retry with the same idempotency "
            "key later for the definitive answer, or ask an operator.",
            code="outcome_unrecorded",
            details={"step_id": call.step_id, "upstream_key": call.upstream_key},
        ) from exc
    # The agent gets the tool's answer as the tool gave it, less the injected credential; the
    # database (and an idempotent replay) keeps the redacted form.
    # (Both forms are plain JSON by now; when redaction changed nothing they are equal.)
    if outcome.returned_result is result.result or outcome.returned_result == result.result:
        return result
    return result.model_copy(update={"result": outcome.returned_result})


def _cache_effects(conn: Conn, call: Call, outcome: Outcome, now: float) -> None:
    """A fresh answer of a cached read is kept; a write the manifest names marks what it spoiled
    (failed or not: a failed write may still have changed something upstream)."""
    if outcome.cached:
        return
    tool = call.tool.spec.name
    if outcome.error is None:
        cache.store(
            conn,
            call.runtime,
            call.run,
            tool,
            call.intent.arguments,
            outcome.stored_result,
            step_id=call.step_id,
            fetched_at=now - outcome.duration_ms / 1000,
        )
    cache.invalidate(conn, call.runtime, call.run, tool, call.intent.arguments, now=now)


def settle_approval(conn: Conn, approval_id: str, execution: str | None, result: ActionResult | None) -> None:
    """Store what became of an approved action on the approval, and under the agent's idempotency
    key when it executed (the key still answers ``pending_approval`` until then)."""
    values: dict[str, Any] = {"execution": execution, "lease_expires_at": None}
    if result is not None:
        values["outcome"] = result.model_dump(mode="json")
        values["payload"] = None  # the exact arguments are no longer needed once acted upon
    conn.execute(update(t.approvals).where(t.approvals.c.id == approval_id).values(**values))
    if result is not None:
        row = conn.execute(
            select(t.approvals.c.agent_id, t.approvals.c.idempotency_key).where(
                t.approvals.c.id == approval_id
            )
        ).first()
        if row is not None and row[1] is not None:
            conn.execute(
                DONE_IDEMPOTENCY,
                {
                    "k_agent": row[0],
                    "k_key": row[1],
                    "k_step": result.step_id,
                    "k_outcome": values["outcome"],
                },
            )
