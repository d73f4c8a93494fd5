"""The approvals inbox and the one-page decision package, as plain data for the templates."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from interlock._internal.approvals.models import ApprovalView
from interlock._internal.gateway.models import Reason
from interlock._internal.gateway.runtime import WorkflowRuntime
from interlock._internal.identity.operators import Operator
from interlock._internal.permissions import may_decide, may_unmask, may_view, visible_workflows
from interlock._internal.service import Interlock
from interlock._internal.ui import words
from interlock.exceptions import NotFound

AGE_CHOICES: tuple[tuple[str, str, int | None], ...] = (
    ("", "any age", None),
    ("15m", "older than 15 minutes", 900),
    ("1h", "older than 1 hour", 3600),
    ("4h", "older than 4 hours", 4 * 3600),
    ("24h", "older than 1 day", 86_400),
)
STATE_CHOICES = ("pending", "approved", "rejected", "expired", "cancelled", "all")
TRAITS = ("money", "external", "irreversible", "pii", "bulk", "write")


def decided_by_text(value: Any) -> str:
    """``decided_by`` as stored (a list of operator ids, or one id) in words."""
    if value is None or value == []:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return words.value_text(value)


PAGE_SIZE = 50


def inbox(
    interlock: Interlock,
    operator: Operator,
    *,
    workflow: str | None,
    state: str,
    older_than_s: int | None,
    risk: str | None,
    agent: str = "",
    tool: str = "",
    text: str = "",
    page: int = 1,
) -> tuple[list[dict[str, Any]], int]:
    """One page of the approvals the operator may see, and how many match. The permission filter
    is part of the search, so pages and counts never include, or skip over, what they may not
    see. Pending ones oldest first, so what waited longest is on top."""
    names = visible_workflows(interlock, operator)
    if workflow is not None and workflow not in names:
        return [], 0
    views, total = interlock.approvals.search(
        workflows=[workflow] if workflow else names,
        state=state,
        agent=agent or None,
        tool=tool or None,
        text=text or None,
        risk=risk,
        older_than_s=older_than_s,
        offset=(max(page, 1) - 1) * PAGE_SIZE,
        limit=PAGE_SIZE,
    )
    now = time.time()
    return [
        {
            "id": v.id,
            "workflow": v.workflow,
            "agent": v.agent_id,
            "tool": v.tool,
            "action": words.describe_action(v.verb, v.tool, v.arguments),
            "age": words.age(v.created_at, now),
            "created": words.iso_time(v.created_at),
            "risk": list(v.risk),
            "expires_in": words.expires_in(v.expires_at, now) if v.state == "pending" else "—",
            "state": v.state,
            "state_words": words.APPROVAL_STATE_WORDS.get(v.state, v.state),
        }
        for v in views
        if may_view(operator, v.workflow)
    ], total


def live(interlock: Interlock, operator: Operator) -> dict[str, dict[str, Any]]:
    """What the inbox pages poll: how many approvals wait and handoffs are open on the workflows
    the operator may see, each with a token that changes when the list would."""
    names = visible_workflows(interlock, operator)
    if not names:
        return {"approvals": {"waiting": 0, "version": "0"}, "handoffs": {"waiting": 0, "version": "0"}}
    waiting, version = interlock.approvals.activity(names)
    open_, handed = interlock.handoffs.activity(names)
    return {
        "approvals": {"waiting": waiting, "version": version},
        "handoffs": {"waiting": open_, "version": handed},
    }


def _reasons(items: Iterable[Any]) -> list[dict[str, str]]:
    found = []
    for item in items:
        if isinstance(item, Reason):
            item = item.model_dump()
        if isinstance(item, Mapping):
            found.append(
                {
                    "message": str(item.get("message") or item.get("code") or ""),
                    "code": str(item.get("code") or ""),
                    "policy_id": str(item.get("policy_id") or ""),
                }
            )
    return found


def outcome_of(view: ApprovalView) -> dict[str, Any]:
    """What became of the decision, in words: executed with its result, or why not."""
    outcome = view.outcome
    result: dict[str, Any] = {
        "kind": view.state,
        "headline": "",
        "detail": [],
        "result": [],
        "by": decided_by_text(view.decided_by),
    }
    if view.state == "pending":
        return result
    if view.state == "rejected":
        result["headline"] = "Rejected; nothing was executed."
    elif view.state == "expired":
        result["headline"] = "Expired without a decision; nothing was executed."
    elif view.state == "cancelled":
        result["headline"] = "Cancelled; nothing was executed."
    elif view.execution == "held":
        result["kind"] = "held"
        result["headline"] = "Approved, and held: the workflow, agent or environment is paused."
        result["detail"] = ["It runs once, with exactly the approved arguments, when the pause is lifted."]
    elif outcome is not None and outcome.status == "executed":
        result["kind"] = "executed"
        result["headline"] = "Approved and executed."
        result["result"] = words.argument_items(outcome.result)
    elif outcome is not None:
        result["kind"] = "not_executed"
        status = words.STATUS_WORDS.get(outcome.status, outcome.status).lower()
        result["headline"] = f"Approved, but not executed ({status})."
        reasons = [r["message"] for r in _reasons(outcome.decision.reasons) if r["code"] != "approved"]
        if outcome.error:
            reasons.append(outcome.error)
        result["detail"] = reasons
    else:
        result["headline"] = "Approved; the action is being executed."
    return result


def record_keys(runtime: WorkflowRuntime | None, tool: str, arguments: Any) -> dict[str, Any]:
    """The key arguments of the action (its tool's ``record_keys``, else its ``*_id`` arguments)."""
    spec = None if runtime is None else runtime.manifest.tool(tool)
    if spec is not None:
        return spec.key_arguments(arguments)
    if not isinstance(arguments, Mapping):
        return {}
    return {k: v for k, v in arguments.items() if k.endswith("_id") and isinstance(v, str) and v}


def record_history(
    interlock: Interlock, operator: Operator, view: ApprovalView, runtime: WorkflowRuntime | None
) -> dict[str, Any]:
    """Earlier actions and approvals on the same record, in other runs the operator may see."""
    keys = record_keys(runtime, view.tool, view.arguments)
    found, more = interlock.runs.history(
        keys, workflows=visible_workflows(interlock, operator), exclude_run=view.run_id
    )
    now = time.time()
    return {
        "on": [{"name": k, "value": words.value_text(v)} for k, v in keys.items()],
        "more": more,
        "actions": [
            {
                "text": words.describe_action(f.verb, f.tool, f.arguments),
                "status": words.STATUS_WORDS.get(f.outcome or f.status, f.outcome or f.status)
                if f.approval_state in (None, "pending", "approved")
                else "Not done",
                "status_code": f.outcome or f.status,
                "run_id": f.run_id,
                "workflow": f.workflow,
                "agent": f.agent_id,
                "when": words.fmt_time(f.created_at),
                "when_iso": words.iso_time(f.created_at),
                "age": words.age(f.created_at, now),
                "on": ", ".join(f"{k.replace('_', ' ')} {words.value_text(keys[k])}" for k in f.matched),
                "approval": None
                if f.approval_id is None
                else {
                    "id": f.approval_id,
                    "state": f.approval_state or "",
                    "state_words": words.APPROVAL_STATE_WORDS.get(
                        f.approval_state or "", f.approval_state or ""
                    ),
                    "by": decided_by_text(f.decided_by),
                    "comment": f.comment or "",
                },
            }
            for f in found
        ],
    }


VERIFICATION_WORDS = {
    "awaiting": "The request waits for the verifier's verdict. You may decide it now all the same.",
    "settled": "The verifier settled this request: policy lets it decide requests like this alone.",
    "escalated": "The verifier may not settle this request alone (or asked for a person): you decide.",
}
SETTLE_WORDS = {
    "settle_permitted": "policy lets a verifier settle this alone",
    "settle_forbidden": "policy says a person must decide this",
    "no_settle_rule": "no rule lets a verifier settle this alone",
    "not_granted": "the verifier's roles do not grant the verb verify",
    "escalated_by_verifier": "the verifier asked for a person",
    "model_refused": "the verifier's model is not allowed for its task",
    "policy_error": "policy could not judge it, so a person decides",
}


def verifier_of(view: ApprovalView) -> dict[str, Any] | None:
    """The verifier's part of the package: who, where it stands, its verdict and reasoning."""
    if view.verifier is None:
        return None
    verdict = view.verdict
    return {
        "agent": view.verifier,
        "state": view.verification or "awaiting",
        "words": VERIFICATION_WORDS.get(view.verification or "awaiting", ""),
        "verdict": None
        if verdict is None
        else {
            "verdict": verdict.verdict,
            "reasoning": verdict.reasoning or "",
            "settles": verdict.settles,
            "why": SETTLE_WORDS.get(verdict.code, verdict.code),
            "policy_ids": ", ".join(verdict.policy_ids),
            "model": verdict.model or "",
            "cost": f"{verdict.cost_usd:.4f} USD",
            "at": words.fmt_time(verdict.created_at),
            "args_hash": verdict.args_hash[:12],
        },
    }


def approval_page(interlock: Interlock, operator: Operator, approval_id: str) -> dict[str, Any]:
    view = interlock.approvals.get(approval_id)
    if not may_view(operator, view.workflow):
        raise NotFound(f"no approval {approval_id!r}", code="unknown_approval")
    package = view.package
    arguments = package.arguments if package.arguments is not None else view.arguments
    now = time.time()
    try:
        runtime: WorkflowRuntime | None = interlock.runtime(view.workflow)
    except NotFound:
        runtime = None
    previous = []
    try:
        steps = interlock.runs.view(view.run_id).steps_detail
    except NotFound:
        steps = []
    for step in steps:
        if step.id == view.step_id:
            break
        previous.append(
            {
                "seq": step.seq,
                "text": "Model call"
                if step.kind == "model"
                else "Verifier's verdict"
                if step.kind == "verification"
                else words.describe_action(step.verb, step.tool, step.arguments),
                "status": words.STATUS_WORDS.get(step.status, step.status),
                "status_code": step.status,
            }
        )
    confidence = package.confidence
    voted = any(v.operator_id == operator.id for v in view.votes)
    return {
        "id": view.id,
        "workflow": view.workflow,
        "run_id": view.run_id,
        "agent": view.agent_id,
        "state": view.state,
        "state_words": words.APPROVAL_STATE_WORDS.get(view.state, view.state),
        "action": words.describe_action(view.verb, view.tool, arguments),
        "tool": view.tool,
        "verb": view.verb,
        "description": package.description or "",
        "arguments": words.argument_items(arguments),
        "reasoning": package.reasoning or "",
        "confidence": "" if confidence is None else f"{confidence:.0%}",
        "evidence": [{"text": str(e), "href": words.safe_link(e)} for e in package.evidence],
        "impact_if_accepted": package.impact_if_accepted or "",
        "impact_if_rejected": package.impact_if_rejected or "",
        "risk": [{"trait": r, "words": words.TRAIT_WORDS.get(r, r)} for r in view.risk],
        "policy_reasons": _reasons(package.policy_reasons),
        "rules": list(package.rules),
        "data_classes": list(package.data_classes),
        "value_limits": _value_limits(package),
        "previous": previous,
        "history": record_history(interlock, operator, view, runtime),
        "requested": words.fmt_time(view.created_at),
        "requested_iso": words.iso_time(view.created_at),
        "age": words.age(view.created_at, now),
        "expires": words.fmt_time(view.expires_at),
        "expires_in": words.expires_in(view.expires_at, now),
        "quorum": view.quorum,
        "votes": [
            {"operator": v.operator_id, "vote": v.vote, "comment": v.comment or ""} for v in view.votes
        ],
        "decided_at": words.fmt_time(view.decided_at),
        "comment": view.comment or "",
        "outcome": outcome_of(view),
        "verifier": verifier_of(view),
        "masked": interlock.approvals.masked_fields(view.id) if view.state == "pending" else [],
        "can_unmask": view.state == "pending" and runtime is not None and may_unmask(operator, runtime),
        "unmasked": False,
        "can_decide": view.state == "pending"
        and runtime is not None
        and may_decide(operator, runtime)
        and not voted,
    }


def _value_limits(package: Any) -> list[dict[str, Any]]:
    """What is left under each value limit the action counts against, as the package recorded it
    when the action was asked (the limit is checked again, atomically, when it executes)."""
    extra = package.model_extra or {}
    out = []
    for item in extra.get("value_limits") or []:
        if not isinstance(item, dict):
            continue
        unit = f" {item.get('unit')}" if item.get("unit") else ""

        def amount(key: str, unit: str = unit, item: dict[str, Any] = item) -> str:
            value = item.get(key)
            return f"{value:,.2f}".rstrip("0").rstrip(".") + unit if isinstance(value, int | float) else "?"

        out.append(
            {
                "id": str(item.get("id", "")),
                "limit": str(item.get("limit", "")),
                "description": str(item.get("description") or ""),
                "scope": str(item.get("scope", "")),
                "period": str(item.get("period", "")),
                "max": amount("max"),
                "used": amount("used"),
                "headroom": amount("headroom"),
                "amount": amount("amount"),
                "fits": bool(item.get("fits")),
            }
        )
    return out


def with_unmasked(page: dict[str, Any], arguments: dict[str, Any]) -> dict[str, Any]:
    """The approval page showing ``arguments`` (from ``ApprovalService.unmask``) instead of the
    stored, masked ones."""
    return {
        **page,
        "action": words.describe_action(page["verb"], page["tool"], arguments),
        "arguments": words.argument_items(arguments),
        "unmasked": True,
    }


__all__ = [
    "AGE_CHOICES",
    "PAGE_SIZE",
    "STATE_CHOICES",
    "TRAITS",
    "approval_page",
    "decided_by_text",
    "inbox",
    "live",
    "outcome_of",
    "record_history",
    "record_keys",
    "verifier_of",
    "with_unmasked",
]
