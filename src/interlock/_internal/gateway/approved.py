"""Approved actions: executed once, with exactly the approved arguments, through the same stages.

The claim is a conditional update (two replicas or two approvers racing run it once) that takes a
lease; the call itself is then journaled like any other (:mod:`.journal`), so from there an
approved action that dies mid-call becomes "outcome unknown" for a person, never "not started".
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from interlock._internal.audit.canonical import hash_value
from interlock._internal.gateway.dataflow import carried_for
from interlock._internal.gateway.decide import (
    Checking,
    Intent,
    Verdict,
    check_policy,
    check_schema,
    check_stop_rules,
    classify_risk,
    run_brakes,
)
from interlock._internal.gateway.models import ActionResult, Decision, Reason
from interlock._internal.gateway.records import record_decision, settle_approval
from interlock._internal.gateway.statements import CLAIM_APPROVAL
from interlock._internal.packages import stage as package_stage
from interlock._internal.store.engine import transaction
from interlock.exceptions import ConflictError, StorageError

if TYPE_CHECKING:
    from interlock._internal.gateway.pipeline import Pipeline

# The claim's lease covers the checks and the reservation before the call is journaled (the
# journal row then holds a lease of its own, the tool's timeout plus the margin).
CLAIM_LEASE_S = 60.0


def execute_approved(p: Pipeline, approval_id: str) -> ActionResult | None:
    """Run an approved action once, with exactly the approved arguments.

    Claims the execution atomically, then goes through the pipeline's stages again: a paused
    workflow, agent or environment holds it (None is returned and it stays approved, to run on
    resume); a policy that now forbids it refuses it; budgets, caps and locks apply as for any
    action. The outcome is stored on the approval and under the agent's idempotency key, in the
    transaction that records it, so polling and retrying both see it.

    An error before the call is journaled releases the claim (nothing reached the upstream, so
    it may run later); an error after it never does: the journal's lease turns it into "outcome
    unknown" for a person.
    """
    lease = time.time() + p.lease_margin_s + CLAIM_LEASE_S
    with transaction(p.engine) as conn:
        claimed = conn.execute(CLAIM_APPROVAL, {"a_id": approval_id, "a_lease": lease}).first()
    if claimed is None:
        return None
    row = claimed._mapping
    try:
        return _carry_out(p, approval_id, row)
    except (StorageError, ConflictError) as exc:
        if exc.code not in ("outcome_unrecorded", "already_executed"):
            _release(p, approval_id)
        raise
    except Exception:
        _release(p, approval_id)
        raise


def _carry_out(p: Pipeline, approval_id: str, row: Any) -> ActionResult | None:
    run, paused = p.load_run(row["run_id"])
    agent_id = row["agent_id"]
    arguments = row["payload"]
    intent = Intent(
        tool=row["tool"],
        arguments=arguments,
        idempotency_key=row["idempotency_key"],
        reasoning=f"approved: {approval_id}",
    )
    runtime = p.runtime_for(run)[0]  # a canary run's approved action is judged by its version
    agent = p.agents.lookup(agent_id)
    if agent is None or not agent.record.active:
        # Revoking an agent withdraws what it asked for, approved or not.
        gone = Reason(code="agent_revoked", message=f"agent {agent_id} was revoked")
        decision = Decision(
            decision="deny", reasons=[gone], tool=row["tool"], verb=row["verb"], args_hash=row["args_hash"]
        )
        denied = Verdict(decision, "denied", None)
        return _refused(p, approval_id, record_decision(p.engine, run, agent_id, intent, denied, runtime))
    if paused is not None:
        with transaction(p.engine) as conn:
            settle_approval(conn, approval_id, "held", None)
        return None
    if hash_value(arguments) != row["args_hash"]:
        raise ConflictError("approved arguments do not match their hash", code="approval_mismatch")
    carried = carried_for(p.engine, runtime.flow_tools, run.id, intent.tool)
    c = Checking(runtime, agent_id, run.environment, intent, run.steps, run.tool_calls, carried)
    verdict = (
        check_schema(c)
        or classify_risk(c)
        or check_policy(c)
        or run_brakes(c, run, paused)
        or check_stop_rules(c)
        or c.verdict()
    )
    if run.package_id is not None:  # the work package still bounds what was approved
        verdict = package_stage.gate(p.engine, run.package_id, intent, verdict, now=time.time())
    if verdict.decision.decision not in ("allow", "require_approval") or verdict.tool is None:
        # Policy changed since the request, or the run stopped: what is refused now is not run.
        return _refused(p, approval_id, record_decision(p.engine, run, agent_id, intent, verdict, runtime))
    approved = Reason(
        code="approved", message=f"approved ({approval_id})", policy_id=f"approval:{approval_id}"
    )
    decision = verdict.decision.model_copy(
        update={"decision": "allow", "reasons": [approved, *verdict.decision.reasons]}
    )
    result = p.carry_out(
        run, agent_id, intent, Verdict(decision, "executed", verdict.tool), runtime, approval_id=approval_id
    )
    if result.status in ("executed", "failed"):
        return result  # the approval was settled in the outcome's transaction
    return _refused(p, approval_id, result)


def _refused(p: Pipeline, approval_id: str, result: ActionResult) -> ActionResult:
    result = result.model_copy(update={"approval_id": approval_id})
    with transaction(p.engine) as conn:
        settle_approval(conn, approval_id, "refused", result)
    return result


def _release(p: Pipeline, approval_id: str) -> None:
    """Give the claim back: nothing was journaled, so nothing reached the upstream."""
    with transaction(p.engine) as conn:
        settle_approval(conn, approval_id, None, None)
