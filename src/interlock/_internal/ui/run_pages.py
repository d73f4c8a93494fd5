"""Runs as a business owner reads them: what started it, what it looked at, what it changed and where,
what each decision was and why, who approved, what was escalated, and what it cost."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from interlock._internal.gateway.models import Step
from interlock._internal.gateway.runtime import WorkflowRuntime
from interlock._internal.identity.operators import Operator
from interlock._internal.permissions import may_view, visible_workflows
from interlock._internal.service import Interlock
from interlock._internal.ui import words
from interlock._internal.ui.approval_pages import decided_by_text
from interlock.exceptions import NotFound

RUN_STATE_WORDS = {
    "running": "Running",
    "completed": "Completed",
    "failed": "Failed",
    "escalated": "Waiting for a person",
    "stopped": "Stopped",
}


PAGE_SIZE = 50
RUN_STATES = tuple(RUN_STATE_WORDS)


def runs_list(
    interlock: Interlock,
    operator: Operator,
    *,
    workflow: str | None,
    agent: str = "",
    tool: str = "",
    state: str = "",
    text: str = "",
    page: int = 1,
) -> tuple[list[dict[str, Any]], int]:
    """One page of the runs the operator may see (the permission filter is part of the search, so
    pages and counts never include, or skip over, runs they may not see), and the total."""
    names = visible_workflows(interlock, operator)
    if workflow is not None and workflow not in names:
        return [], 0
    runs, total = interlock.runs.search(
        workflows=[workflow] if workflow else names,
        agent=agent or None,
        tool=tool or None,
        state=state or None,
        text=text or None,
        offset=(max(page, 1) - 1) * PAGE_SIZE,
        limit=PAGE_SIZE,
    )
    return [
        {
            "id": r.id,
            "workflow": r.workflow,
            "agent": r.agent_id,
            "environment": r.environment,
            "state": r.state,
            "state_words": RUN_STATE_WORDS.get(r.state, r.state),
            "trigger": trigger_text(r.trigger),
            "started": words.fmt_time(r.started_at),
            "started_iso": words.iso_time(r.started_at),
            "steps": r.steps,
            "cost": words.usd(r.cost_usd),
        }
        for r in runs
        if may_view(operator, r.workflow)
    ], total


def trigger_text(trigger: Any) -> str:
    if trigger is None:
        return "—"
    if isinstance(trigger, Mapping):
        return words.clip(", ".join(f"{k}: {words.value_text(v)}" for k, v in trigger.items()), 160)
    return words.clip(words.value_text(trigger), 160)


VERIFICATION_STATUS_WORDS = {"settled": "Settled by the verifier", "referred": "Sent to a person"}


def _verification_text(step: Step) -> str:
    """A verifier's verdict in the timeline: who, what verdict, on which action."""
    data = step.arguments if isinstance(step.arguments, Mapping) else {}
    who = words.value_text(data.get("verifier", "verifier"))
    verdict = words.value_text(data.get("verdict", "a verdict"))
    model = f" (model {words.value_text(data['model'])})" if "model" in data else ""
    return f"Verifier {who}: {verdict} on {step.tool or 'the request'}{model}"


def _upstream(runtime: WorkflowRuntime | None, tool: str | None) -> Any:
    if runtime is None or tool is None:
        return None
    spec = runtime.manifest.tool(tool)
    return None if spec is None else spec.upstream


def _system(runtime: WorkflowRuntime | None, tool: str | None) -> str | None:
    if runtime is None or tool is None:
        return None
    spec = runtime.manifest.tool(tool)
    return None if spec is None else spec.system


def _reasons(step: Step) -> list[dict[str, str]]:
    if step.decision is None:
        return []
    return [
        {"message": r.message, "code": r.code, "policy_id": r.policy_id or ""} for r in step.decision.reasons
    ]


def _approval_of(step: Step) -> str | None:
    """The approval an executed step carried out (its decision names ``approval:<id>``)."""
    if step.decision is None:
        return None
    for reason in step.decision.reasons:
        if reason.code == "approved" and reason.policy_id and reason.policy_id.startswith("approval:"):
            return reason.policy_id.split(":", 1)[1]
    return None


# The waterfall's scale: bars are drawn in an SVG 1000 units wide, and the thinnest bar stays visible.
WATERFALL_WIDTH = 1000
_MIN_BAR = 4


def waterfall(started_at: float, ended_at: float | None, steps: list[Step]) -> dict[str, Any]:
    """When each step ran, on one time axis from the run's start: a step is recorded when it ends
    and measured in ``duration_ms`` (decisions that execute nothing take no measured time)."""
    spans = []
    for step in steps:
        took = (step.duration_ms or 0.0) / 1000
        end = max(step.created_at, started_at)
        spans.append((step, max(started_at, end - took), end))
    last = max([end for _, _, end in spans] + [ended_at or started_at, started_at])
    total = last - started_at
    scale = WATERFALL_WIDTH / total if total > 0 else 0.0
    rows = []
    for step, start, end in spans:
        x = min(WATERFALL_WIDTH - _MIN_BAR, round((start - started_at) * scale, 1))
        width = max(_MIN_BAR, round((end - start) * scale, 1))
        rows.append(
            {
                "seq": step.seq,
                "kind": "model" if step.kind == "model" else "read" if step.verb == "read" else "write",
                "status": step.status,
                "label": "model call" if step.kind == "model" else step.tool or step.kind,
                "took": words.duration(step.duration_ms),
                "at": f"+{words.duration((start - started_at) * 1000) or '0 ms'}",
                "x": x,
                "width": min(width, WATERFALL_WIDTH - x),
            }
        )
    measured = [s.duration_ms for s in steps if s.duration_ms is not None]
    return {
        "rows": rows,
        "span": words.duration(total * 1000) or "0 ms",
        "busy": words.duration(sum(measured)) if measured else "",
        "width": WATERFALL_WIDTH,
    }


def timeline(interlock: Interlock, operator: Operator, run_id: str) -> dict[str, Any]:
    try:
        view = interlock.runs.view(run_id)
    except NotFound:
        view = None
    if view is None or not may_view(operator, view.workflow):
        raise NotFound(f"no run {run_id!r}", code="unknown_run")
    try:
        runtime: WorkflowRuntime | None = interlock.runtime(view.workflow)
    except NotFound:
        runtime = None
    approvals = {r["id"]: r for r in interlock.approvals.rows_for_run(run_id)}
    handoffs = [h.model_dump() for h in interlock.handoffs.list(run_id=run_id, state=None, limit=1000)]
    by_step = {a["step_id"]: a for a in approvals.values()}

    steps, reads, changes = [], [], []
    carried: dict[str, dict[str, Any]] = {}  # the run's data classes, with the step that brought each
    tools: Counter[str] = Counter()
    for step in view.steps_detail:
        verification = step.kind == "verification"
        model = step.kind == "model" or verification  # neither reaches a system
        text = (
            _verification_text(step)
            if verification
            else f"Model call: {words.value_text((step.arguments or {}).get('model', 'model'))}"
            if model and isinstance(step.arguments, Mapping)
            else "Model call"
            if model
            else words.describe_action(step.verb, step.tool, step.arguments)
        )
        declared = _system(runtime, step.tool)
        system = None if model else declared or words.system_of(step.tool, _upstream(runtime, step.tool))
        brought = list((step.data_classes or {}).get("classes") or [])
        for name in brought:
            carried.setdefault(name, {"name": name, "seq": step.seq, "tool": step.tool or ""})
        binding = step.decision.binding if step.decision is not None else None
        requested = by_step.get(step.id)
        carried_out = approvals.get(_approval_of(step) or "")
        approval = requested or carried_out
        status_words = words.STATUS_WORDS.get(step.status, step.status)
        if step.cached_from is not None:
            status_words = "Cached"
        if verification:
            status_words = VERIFICATION_STATUS_WORDS.get(step.status, step.status)
        if step.status == "pending_approval" and requested is not None and requested["state"] != "pending":
            status_words = "Sent for approval"
        reasons = _reasons(step)
        decision_words = words.DECISION_WORDS.get(step.decision.decision, "") if step.decision else ""
        reasoning = step.reasoning or ""
        if carried_out is not None:
            # The approval line says who approved; the pipeline's own note would repeat it.
            reasons = [r for r in reasons if r["code"] != "approved"]
            decision_words = "Allowed after approval"
            reasoning = "" if reasoning.startswith("approved: ") else reasoning
        entry = {
            "seq": step.seq,
            "time": words.fmt_time(step.created_at),
            "time_iso": words.iso_time(step.created_at),
            "took": words.duration(step.duration_ms),
            "kind": step.kind if model else "read" if step.verb == "read" else "write",
            "reasoning_label": "Verifier's reasoning" if verification else "Agent's reasoning",
            "text": text,
            "tool": step.tool or "",
            "system": system or "",
            "status": step.status,
            "status_words": status_words,
            "decision": step.decision.decision if step.decision else "",
            "decision_words": decision_words,
            "reasons": reasons,
            "arguments": words.argument_items(step.arguments),
            "result": words.argument_items(step.result) if step.status == "executed" else [],
            "error": step.error or "",
            "reasoning": reasoning,
            "evidence": [{"text": str(e), "href": words.safe_link(e)} for e in step.evidence or []],
            "classes_in": brought,
            "cached_from": step.cached_from,
            "binding": binding,
            "approval": None
            if approval is None
            else {
                "id": approval["id"],
                "state": approval["state"],
                "state_words": words.APPROVAL_STATE_WORDS.get(approval["state"], approval["state"]),
                "by": decided_by_text(approval.get("decided_by")),
                "comment": approval.get("comment") or "",
                "carried_out": carried_out is not None,
            },
        }
        steps.append(entry)
        if model:
            continue
        if step.tool and carried_out is None:  # an approved action is the call it asked for
            tools[step.tool] += 1
        if step.status != "executed":
            continue
        if step.verb == "read":
            reads.append({"text": text, "system": system})
        else:
            changes.append(
                {"text": text, "system": system, "result": entry["result"], "approval": entry["approval"]}
            )

    decided = [
        {
            "id": a["id"],
            "text": words.describe_action(a["verb"], a["tool"], a.get("arguments")),
            "state_words": words.APPROVAL_STATE_WORDS.get(a["state"], a["state"]),
            "state": a["state"],
            "by": decided_by_text(a.get("decided_by")),
            "comment": a.get("comment") or "",
        }
        for a in approvals.values()
    ]
    escalations = [
        {
            "message": h["message"],
            "code": h["reason_code"],
            "state": h["state"],
            "by": h.get("resolved_by") or "",
            "when": words.fmt_time(h["created_at"]),
        }
        for h in handoffs
    ]
    return {
        "id": view.id,
        "workflow": view.workflow,
        "version": view.workflow_version,
        "agent": view.agent_id,
        "environment": view.environment,
        "state": view.state,
        "state_words": RUN_STATE_WORDS.get(view.state, view.state),
        "state_reason": view.state_reason or "",
        "trigger": words.argument_items(view.trigger),
        "started_by": view.started_by or f"agent {view.agent_id}",
        "started": words.fmt_time(view.started_at),
        "ended": words.fmt_time(view.ended_at) if view.ended_at else "",
        "cost": words.usd(view.cost_usd),
        "tokens": view.tokens,
        "steps": steps,
        "reads": reads,
        "changes": changes,
        "tools": [{"name": name, "count": n} for name, n in tools.items()],
        "approvals": decided,
        "escalations": escalations,
        "data_classes": list(carried.values()),
        "waterfall": waterfall(view.started_at, view.ended_at, view.steps_detail),
    }


__all__ = ["RUN_STATE_WORDS", "WATERFALL_WIDTH", "runs_list", "timeline", "trigger_text", "waterfall"]
