"""Approved actions: executed once, with exactly the approved arguments, back through the pipeline."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from interlock._internal.audit.canonical import hash_value
from interlock._internal.gateway.dataflow import carried_for
from interlock._internal.gateway.decide import Intent, Verdict, evaluate
from interlock._internal.gateway.models import (
    ActionResult,
    Decision,
    Reason,
)
from interlock._internal.gateway.statements import CLAIM_APPROVAL, DONE_IDEMPOTENCY
from interlock._internal.packages import stage as package_stage
from interlock._internal.store import tables as t
from interlock._internal.store.engine import transaction
from interlock.exceptions import (
    ConflictError,
)

if TYPE_CHECKING:
    from interlock._internal.gateway.pipeline import Pipeline


def execute_approved(p: Pipeline, approval_id: str) -> ActionResult | None:
    """Run an approved action once, with exactly the approved arguments.

    Claims the execution atomically (two replicas or two approvers racing run it once), then
    goes through the pipeline again: a paused workflow, agent or environment holds it (None
    is returned and it stays approved, to run on resume); a policy that now forbids it refuses
    it; budgets, caps and locks apply as for any action. The outcome is stored on the approval
    and under the agent's idempotency key, so polling and retrying both see it.
    """
    with transaction(p.engine) as conn:
        claimed = conn.execute(CLAIM_APPROVAL, {"a_id": approval_id}).first()
    if claimed is None:
        return None
    row = claimed._mapping
    run, paused = p._load_run(row["run_id"])
    arguments = row["payload"]
    intent = Intent(
        tool=row["tool"],
        arguments=arguments,
        idempotency_key=row["idempotency_key"],
        reasoning=f"approved: {approval_id}",
    )
    execution = "done"
    try:
        agent = p.agents.lookup(row["agent_id"])
        if agent is None or not agent.record.active:
            # Revoking an agent withdraws what it asked for, approved or not.
            runtime = p._runtime(run.workflow)
            gone = Reason(code="agent_revoked", message=f"agent {row['agent_id']} was revoked")
            denied = Verdict(
                Decision(
                    decision="deny",
                    reasons=[gone],
                    tool=row["tool"],
                    verb=row["verb"],
                    args_hash=row["args_hash"],
                ),
                "denied",
                None,
            )
            result = p._record_without_execution(run, row["agent_id"], intent, denied, runtime)
            result = result.model_copy(update={"approval_id": approval_id})
            set_execution(p, approval_id, "refused", result)
            return result
        if paused is not None:
            set_execution(p, approval_id, "held", None)
            return None
        if hash_value(arguments) != row["args_hash"]:
            raise ConflictError("approved arguments do not match their hash", code="approval_mismatch")
        runtime = p._runtime(run.workflow)
        verdict = evaluate(
            runtime,
            agent_id=row["agent_id"],
            environment=run.environment,
            intent=intent,
            steps=run.steps,
            tool_calls=run.tool_calls,
            carried=carried_for(p.engine, runtime.flow_tools, run.id, intent.tool),
        )
        if run.package_id is not None:  # the work package still bounds what was approved
            verdict = package_stage.gate(p.engine, run.package_id, intent, verdict, now=time.time())
        approved = Reason(
            code="approved", message=f"approved ({approval_id})", policy_id=f"approval:{approval_id}"
        )
        if verdict.decision.decision in ("allow", "require_approval") and verdict.tool is not None:
            decision = verdict.decision.model_copy(
                update={"decision": "allow", "reasons": [approved, *verdict.decision.reasons]}
            )
            if run.state != "running":
                reason = Reason(code="run_not_active", message=f"run is {run.state}")
                result = p._record_without_execution(
                    run,
                    row["agent_id"],
                    intent,
                    p._refusal(Verdict(decision, "denied", verdict.tool), reason, "denied"),
                    runtime,
                )
                execution = "refused"
            else:
                # The approval claim already makes this run once; the agent's idempotency key
                # is answered with the outcome afterwards (see _set_execution).
                once = Intent(tool=intent.tool, arguments=arguments, reasoning=intent.reasoning)
                result = p._execute(
                    run, row["agent_id"], once, Verdict(decision, "executed", verdict.tool), runtime
                )
                execution = "done" if result.status in ("executed", "failed") else "refused"
        else:
            # Policy changed since the request: what is forbidden now is not run.
            result = p._record_without_execution(run, row["agent_id"], intent, verdict, runtime)
            execution = "refused"
    except Exception:
        set_execution(p, approval_id, None, None)
        raise
    result = result.model_copy(update={"approval_id": approval_id})
    set_execution(p, approval_id, execution, result)
    return result


def set_execution(p: Pipeline, approval_id: str, execution: str | None, result: ActionResult | None) -> None:
    values: dict[str, Any] = {"execution": execution}
    if result is not None:
        values["outcome"] = result.model_dump(mode="json")
        values["payload"] = None  # the exact arguments are no longer needed once acted upon
    with transaction(p.engine) as conn:
        conn.execute(update(t.approvals).where(t.approvals.c.id == approval_id).values(**values))
        if result is not None and result.status == "executed":
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
