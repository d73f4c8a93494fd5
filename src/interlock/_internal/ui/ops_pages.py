"""Handoffs and kill switches in the console: what a stop rule handed to a person, and the pauses.

    GET  /handoffs                  open handoffs (filter by workflow, state, run) and the kill switches
    GET  /handoffs/{id}             one handoff, with three forms: resume, edit arguments then resume, stop
    POST /handoffs/{id}             resolve it (``action`` = resume | resume_with_arguments | stop)
    POST /pauses                    pause an agent or an environment (``scope``, ``key``, ``reason``)
    POST /pauses/resume             lift a pause (``scope``, ``key``)

Who may do what is decided by :mod:`interlock._internal.permissions`, the same rules as the API.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from interlock._internal import permissions
from interlock._internal.gateway.runtime import ToolRuntime
from interlock._internal.http_status import status_for
from interlock._internal.identity.operators import Operator
from interlock._internal.operations import handoffs as handoff_ops
from interlock._internal.operations import pauses as pause_ops
from interlock._internal.operations.argument_form import form_fields, parse_form
from interlock._internal.permissions import visible_workflows
from interlock._internal.runs.handoffs import Handoff
from interlock._internal.service import Interlock
from interlock._internal.telemetry.redaction import MASK
from interlock._internal.ui import words
from interlock._internal.ui.approval_pages import live
from interlock._internal.ui.console import (
    Console,
    ConsoleDep,
    IdPath,
    Short,
    SignedDep,
    SignedIn,
    Text,
    base,
    see_other,
)
from interlock._internal.ui.run_pages import RUN_STATE_WORDS
from interlock.exceptions import ArgumentsInvalid, ConflictError, NotFound, PermissionDenied

router = APIRouter()

MAX_ARGUMENTS_CHARS = 20_000
STATE_CHOICES = ("open", "resumed", "stopped", "all")
HANDOFF_STATE_WORDS = {"open": "Waiting for a person", "resumed": "Resumed", "stopped": "Stopped"}
WHY_WORDS = {
    "loop_detected": "The agent kept repeating the same call",
    "missing_data": "Information the action needs is missing",
    "conflicting_records": "Records the agent read disagree",
    "sensitive_category": "It touches a sensitive subject",
    "low_confidence": "The agent was not sure enough",
    "outside_category": "It falls outside the expected categories",
    "sequence_failure": "A step of a sequence failed half-way",
    "outcome_unknown": "A call was cut off: nobody knows if it happened",
}
RESOLUTION_WORDS = {
    "resume": "Resumed",
    "resume_with_arguments": "Resumed with edited arguments",
    "stop": "Stopped",
    "happened": "Confirmed it happened",
    "not_happened": "Confirmed it did not happen",
    "retry": "Retried with the same idempotency key",
}
SCOPE_WORDS = {"workflow": "Workflow", "agent": "Agent", "environment": "Environment"}


def _verb(interlock: Interlock, workflow: str, tool: str | None) -> str | None:
    try:
        spec = interlock.runtime(workflow).manifest.tool(tool) if tool else None
    except NotFound:
        spec = None
    return None if spec is None else spec.verb


def _item(interlock: Interlock, h: Handoff) -> dict[str, Any]:
    return {
        "id": h.id,
        "run_id": h.run_id,
        "workflow": h.workflow,
        "tool": h.tool or "",
        "action": words.describe_action(_verb(interlock, h.workflow, h.tool), h.tool, h.arguments)
        if h.tool
        else "No action held",
        "why": WHY_WORDS.get(h.reason_code, h.reason_code.replace("_", " ").capitalize()),
        "message": h.message,
        "arguments": words.argument_items(h.arguments),
        "details": words.clip("; ".join(f"{k}: {v}" for k, v in words.argument_items(h.arguments)), 200),
        "created": words.fmt_time(h.created_at),
        "created_iso": words.iso_time(h.created_at),
        "age": words.age(h.created_at),
        "state": h.state,
        "state_words": HANDOFF_STATE_WORDS.get(h.state, h.state),
        # Styled like the run it leaves: waiting, running again, or stopped.
        "state_class": {"open": "escalated", "resumed": "running"}.get(h.state, h.state),
    }


def _switches(interlock: Interlock, operator: Operator) -> dict[str, Any]:
    """Active pauses, and the agents and environments this operator may pause or resume."""
    active = pause_ops.active_pauses(interlock, operator)
    paused = {(p.scope, p.key) for p in active}
    agents = [
        {
            "id": r.id,
            "workflow": r.workflow,
            "environment": r.environment,
            "paused": ("agent", r.id) in paused,
        }
        for r in interlock.agents.list()
        if r.status == "active" and any(operator.can(role, r.workflow) for role in permissions.AGENT_PAUSERS)
    ]
    environments = (
        [
            {"name": name, "paused": ("environment", name) in paused}
            for name in sorted(pause_ops.known_environments(interlock))
        ]
        if operator.can("admin", None)
        else []
    )
    return {
        "active": [
            {
                "scope": p.scope,
                "scope_words": SCOPE_WORDS[p.scope],
                "key": p.key,
                "workflow": p.workflow or "",
                "by": p.paused_by or "",
                "reason": p.reason or "",
                "since": words.fmt_time(p.since) if p.since else "",
                "can_resume": _allowed(interlock, operator, p.scope, p.key),
            }
            for p in active
        ],
        "agents": agents,
        "environments": environments,
    }


def _allowed(interlock: Interlock, operator: Operator, scope: str, key: str) -> bool:
    try:
        return pause_ops.may_pause(interlock, operator, scope, key)
    except NotFound:  # a workflow paused in the database but not loaded here
        return False


def _tool(interlock: Interlock, workflow: str, tool: str | None) -> ToolRuntime | None:
    if tool is None:
        return None
    try:
        return interlock.runtime(workflow).tool(tool)
    except NotFound:
        return None


def handoff_page(interlock: Interlock, operator: Operator, handoff_id: str) -> dict[str, Any]:
    h = handoff_ops.visible_handoff(interlock, operator, handoff_id)
    tool = _tool(interlock, h.workflow, h.tool)
    run = interlock.runs.view(h.run_id)
    resolution = h.resolution if isinstance(h.resolution, dict) else {}
    page = {
        **_item(interlock, h),
        "agent": run.agent_id,
        "environment": run.environment,
        "run_state": run.state,
        "run_state_words": RUN_STATE_WORDS.get(run.state, run.state),
        "can_resolve": h.state == "open" and permissions.may_resolve(operator, h.workflow),
        "unknown": h.reason_code == "outcome_unknown",
        "evidence": str(resolution.get("evidence") or ""),
        "arguments_json": json.dumps(h.arguments, indent=2, ensure_ascii=False)
        if h.arguments is not None
        else "{}",
        "masked": MASK in json.dumps(h.arguments, ensure_ascii=False, default=str),
        # The correction form, built from the tool's input schema and filled with the held values.
        "fields": [] if tool is None else form_fields(tool.spec.input_schema, h.arguments),
        "resolved_by": h.resolved_by or "",
        "resolved_at": words.fmt_time(h.resolved_at) if h.resolved_at else "",
        "resolution": RESOLUTION_WORDS.get(str(resolution.get("action")), h.state),
        "comment": str(resolution.get("comment") or ""),
        "edited": None,
    }
    if resolution.get("action") == "resume_with_arguments" and h.resolved_at is not None:
        # The edited action is the first step of this tool the run took after the resolution.
        step = next(
            (
                s
                for s in run.steps_detail
                if s.tool == h.tool and s.created_at >= h.resolved_at and s.kind != "model"
            ),
            None,
        )
        if step is not None:
            page["edited"] = {
                "text": words.describe_action(step.verb, step.tool, step.arguments),
                "status": step.status,
                "status_words": words.STATUS_WORDS.get(step.status, step.status),
                "approval_id": _approval_of(interlock, h.run_id, step.id),
            }
    return page


def _approval_of(interlock: Interlock, run_id: str, step_id: str) -> str:
    return interlock.approvals.id_for_step(run_id, step_id) or ""


# ---- routes -------------------------------------------------------------------------------------


@router.get("/handoffs")
def handoffs(
    request: Request,
    console: ConsoleDep,
    signed: SignedDep,
    workflow: Short = "",
    state: Short = "open",
    run: Short = "",
) -> Response:
    il = console.interlock
    names = visible_workflows(il, signed.operator)
    filters = {
        "workflow": workflow if workflow in names else "",
        "state": state if state in STATE_CHOICES else "open",
        "run": run,
    }
    items = handoff_ops.visible_handoffs(
        il, signed.operator, workflow=filters["workflow"] or None, state=filters["state"], run_id=run or None
    )
    return console.render(
        request,
        "handoffs.html",
        signed=signed,
        nav="handoffs",
        items=[_item(il, h) for h in items],
        filters=filters,
        workflows=names,
        states=STATE_CHOICES,
        switches=_switches(il, signed.operator),
        error="",
        live=live(il, signed.operator),
        refresh_ms=console.refresh_ms,
    )


def _handoff_response(
    request: Request,
    console: Console,
    signed: SignedIn,
    handoff_id: str,
    *,
    error: str = "",
    status_code: int = 200,
    form: dict[str, str] | None = None,
    answers: dict[str, str] | None = None,
    field_errors: dict[str, str] | None = None,
) -> Response:
    page = handoff_page(console.interlock, signed.operator, handoff_id)
    if answers is not None:  # sent back for a correction: the form shows what was typed
        page["fields"] = [replace(f, value=answers.get(f.name, "")) for f in page["fields"]]
    page["field_errors"] = field_errors or {}
    # The first field to correct takes the focus, so the person starts typing where the error is.
    page["first_error"] = next((f.name for f in page["fields"] if f.name in page["field_errors"]), "")
    return console.render(
        request,
        "handoff.html",
        signed=signed,
        nav="handoffs",
        h=page,
        error=error,
        form=form or {"action": "", "arguments": page["arguments_json"], "comment": "", "mode": ""},
        status_code=status_code,
    )


@router.get("/handoffs/{handoff_id}")
def handoff(request: Request, console: ConsoleDep, signed: SignedDep, handoff_id: IdPath) -> Response:
    return _handoff_response(request, console, signed, handoff_id)


async def _answers(request: Request) -> dict[str, str]:
    """The correction form's fields (``arg.<path>``), by argument path."""
    form = await request.form()
    return {
        key[len(ARG_PREFIX) :]: value[:_MAX_FIELD]
        for key, value in form.multi_items()
        if key.startswith(ARG_PREFIX) and isinstance(value, str)
    }


ARG_PREFIX = "arg."
_MAX_FIELD = 20_000


@router.post("/handoffs/{handoff_id}")
def resolve(
    request: Request,
    console: ConsoleDep,
    signed: SignedDep,
    handoff_id: IdPath,
    answers: Annotated[dict[str, str], Depends(_answers)],
    csrf: Text = "",
    action: Text = "",
    arguments: Text = "",
    comment: Text = "",
    evidence: Text = "",
    mode: Text = "",
) -> Response:
    console.check_csrf(signed, csrf)
    found = handoff_ops.visible_handoff(console.interlock, signed.operator, handoff_id)
    if not permissions.may_resolve(signed.operator, found.workflow):
        raise PermissionDenied(
            f"operator {signed.operator.id!r} may not resolve handoffs of {found.workflow}: "
            "that takes an owner, admin or approver of the workflow",
            details={"operator_id": signed.operator.id},
        )
    comment, evidence = comment.strip(), evidence.strip()
    form = {"action": action, "arguments": arguments, "comment": comment, "evidence": evidence, "mode": mode}
    error, edited = "", None
    if action not in RESOLUTION_WORDS:
        error = "Choose resume, resume with edited arguments, or stop."
    elif action == "happened" and not evidence:
        error = "Say what shows it happened (a reference, a link); it is kept in the audit log."
    elif action == "stop" and not comment:
        error = "Say why you stop the run; it is kept with the handoff and in the audit log."
    elif action == "resume_with_arguments" and mode == "form":
        tool = _tool(console.interlock, found.workflow, found.tool)
        if tool is None:
            error = "This handoff holds no action of a loaded tool to correct; resume or stop the run."
        else:
            edited, field_errors = parse_form(tool, answers)
            if field_errors:
                count = len(field_errors)
                fields_need = "field needs" if count == 1 else "fields need"
                return _handoff_response(
                    request,
                    console,
                    signed,
                    handoff_id,
                    error=f"{count} {fields_need} a correction; see below.",
                    status_code=422,
                    form=form,
                    answers=answers,
                    field_errors=field_errors,
                )
    elif action == "resume_with_arguments":
        try:
            edited = json.loads(arguments)
        except ValueError as exc:
            error = f"The arguments are not valid JSON: {exc}"
        else:
            if not isinstance(edited, dict):
                error = 'The arguments must be a JSON object, like {"ticket_id": "T-1001"}.'
    if error:
        return _handoff_response(
            request, console, signed, handoff_id, error=error, status_code=422, form=form
        )
    try:
        handoff_ops.resolve(
            console.interlock,
            signed.operator,
            handoff_id,
            action=action,  # type: ignore[arg-type]  # checked against RESOLUTION_WORDS above
            arguments=edited,
            comment=comment or None,
            evidence=(evidence or None) if action == "happened" else None,
        )
    except (ConflictError, ArgumentsInvalid, NotFound) as exc:
        return _handoff_response(
            request, console, signed, handoff_id, error=exc.message, status_code=status_for(exc), form=form
        )
    return see_other(f"{base(request)}/handoffs/{quote(handoff_id)}")


def _back(request: Request) -> str:
    return f"{base(request)}/handoffs#kill-switches"


@router.post("/pauses")
def pause(
    request: Request,
    console: ConsoleDep,
    signed: SignedDep,
    csrf: Text = "",
    scope: Text = "",
    key: Text = "",
    reason: Text = "",
) -> Response:
    console.check_csrf(signed, csrf)
    if scope not in pause_ops.SCOPES:
        raise ArgumentsInvalid("choose an agent, an environment or a workflow to pause", field="scope")
    if not reason.strip():
        raise ArgumentsInvalid("give a reason for pausing; it goes in the audit log", field="reason")
    pause_ops.pause(console.interlock, signed.operator, scope, key, reason=reason)
    return see_other(_back(request))


@router.post("/pauses/resume")
def resume(
    request: Request,
    console: ConsoleDep,
    signed: SignedDep,
    csrf: Text = "",
    scope: Text = "",
    key: Text = "",
) -> Response:
    console.check_csrf(signed, csrf)
    if scope not in pause_ops.SCOPES:
        raise ArgumentsInvalid("choose an agent, an environment or a workflow to resume", field="scope")
    try:
        pause_ops.resume(console.interlock, signed.operator, scope, key)
    except NotFound as exc:
        if exc.code != "not_paused":
            raise
    return see_other(_back(request))


__all__ = ["HANDOFF_STATE_WORDS", "WHY_WORDS", "handoff_page", "router"]
