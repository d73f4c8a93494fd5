"""What the pipeline writes: steps, decisions, approval requests, idempotency outcomes — always
redacted, always inside the caller's transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection

from interlock._internal.audit.canonical import canonical_json, hash_value
from interlock._internal.audit.chain import append_event
from interlock._internal.gateway.decide import Intent
from interlock._internal.gateway.models import (
    ActionResult,
    Decision,
    Run,
)
from interlock._internal.gateway.runtime import ToolRuntime, WorkflowRuntime
from interlock._internal.gateway.statements import (
    DONE_IDEMPOTENCY,
    INSERT_DECISION,
    INSERT_IDEMPOTENCY,
    INSERT_STEP,
)
from interlock._internal.ids import new_id
from interlock._internal.manifest.models import RuleSpec
from interlock._internal.store import tables as t
from interlock._internal.telemetry.redaction import mask_secrets, redact


def create_approval(
    conn: Connection,
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
        },
    )
    return approval_id


def write_step(
    conn: Connection,
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
    }
    # Added only when present, so actions on tools without systems keep their event shape.
    if decision.binding is not None:
        data["binding"] = decision.binding
    if data_classes is not None:
        data["data_classes_in"] = data_classes["classes"]
    append_event(
        conn,
        kind="action." + status,
        actor=f"agent:{agent_id}",
        workflow=run.workflow,
        run_id=run.id,
        data=data,
    )


def store_outcome(
    conn: Connection,
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
    try:
        canonical_json(value)
    except (TypeError, ValueError):
        return {"unserialisable": type(value).__name__}
    if not secrets:
        return value
    return mask_secrets(value, secrets)


def safe_redact(value: Any, secrets: tuple[str, ...] = ()) -> Any:
    try:
        canonical_json(value)
    except (TypeError, ValueError):
        return {"unserialisable": type(value).__name__}
    return redact(value, extra_secrets=secrets)
