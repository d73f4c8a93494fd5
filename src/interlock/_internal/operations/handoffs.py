"""Handoffs as an operator sees and resolves them: filtered to their workflows, checked for role,
state and arguments before anything moves. The API, the console and ``interlock handoffs`` call
these; :meth:`Interlock.resolve_handoff` does the work, so a handoff resolved anywhere runs the
same way (an edited action goes through the whole pipeline, in the service)."""

from __future__ import annotations

from typing import Any

from interlock._internal.gateway.models import ActionResult
from interlock._internal.identity.operators import Operator
from interlock._internal.permissions import RESOLVERS, actor, may_view, require_any_role
from interlock._internal.runs.handoffs import Handoff, Resolution
from interlock._internal.service import Interlock
from interlock.exceptions import ArgumentsInvalid, ConflictError, NotFound

HANDOFF_STATES = ("open", "resumed", "stopped")


def visible_handoffs(
    interlock: Interlock,
    operator: Operator | None,
    *,
    workflow: str | None = None,
    state: str = "open",
    run_id: str | None = None,
    limit: int = 200,
) -> list[Handoff]:
    """Handoffs, newest first (one run's in order); ``state="all"`` for every state."""
    items = interlock.handoffs.list(
        workflow=workflow, state=None if state == "all" else state, run_id=run_id, limit=limit
    )
    return [h for h in items if operator is None or may_view(operator, h.workflow)]


def visible_handoff(interlock: Interlock, operator: Operator | None, handoff_id: str) -> Handoff:
    handoff = interlock.handoffs.get(handoff_id)
    if operator is not None and not may_view(operator, handoff.workflow):
        raise NotFound(f"unknown handoff {handoff_id!r}", code="unknown_handoff")
    return handoff


def resolve(
    interlock: Interlock,
    operator: Operator,
    handoff_id: str,
    *,
    action: Resolution,
    arguments: Any = None,
    comment: str | None = None,
    evidence: str | None = None,
) -> tuple[Handoff, ActionResult | None]:
    """Resolve a handoff as ``operator``: checked for role, state and arguments before anything moves."""
    handoff = visible_handoff(interlock, operator, handoff_id)
    require_any_role(operator, RESOLVERS, handoff.workflow)
    if handoff.state != "open":
        raise ConflictError(f"handoff {handoff_id} was already {handoff.state}", code="already_decided")
    if action == "resume_with_arguments":
        if handoff.tool is None:
            raise ArgumentsInvalid(
                "this handoff holds no action whose arguments could be edited; resume or stop the run",
                field="action",
            )
        if not isinstance(arguments, dict):
            raise ArgumentsInvalid(
                "resume_with_arguments needs the edited arguments as a JSON object", field="arguments"
            )
        interlock.runtime(handoff.workflow)  # the edited action runs through it: fail before resolving
    elif arguments is not None:
        raise ArgumentsInvalid("arguments go only with resume_with_arguments", field="arguments")
    if evidence is not None and action != "happened":
        raise ArgumentsInvalid("evidence goes only with happened", field="evidence")
    return interlock.resolve_handoff(
        handoff_id,
        action=action,
        actor=actor(operator),
        arguments=arguments,
        comment=comment or None,
        evidence=evidence or None,
    )


__all__ = ["HANDOFF_STATES", "resolve", "visible_handoff", "visible_handoffs"]
