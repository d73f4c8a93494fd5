"""Kill switches as an operator pulls them: checked for who asks, the same from every face.

The HTTP API (``/v1/pauses``), the console and ``interlock pause | resume | pauses`` call these;
:class:`~interlock._internal.service.Interlock` does the writing and the audit events.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from interlock._internal.identity.operators import Operator
from interlock._internal.permissions import (
    actor,
    may_pause_agent,
    may_pause_environment,
    may_pause_workflow,
    may_view,
)
from interlock._internal.service import Interlock
from interlock.exceptions import ArgumentsInvalid, NotFound, PermissionDenied

Scope = Literal["workflow", "agent", "environment"]
SCOPES: tuple[Scope, ...] = ("workflow", "agent", "environment")


class PauseInfo(BaseModel):
    """One active kill switch."""

    scope: Scope
    key: str = Field(description="The workflow, agent or environment name.")
    workflow: str | None = Field(
        default=None, description="The workflow it falls under (an agent's own); none for an environment."
    )
    paused_by: str | None = None
    reason: str | None = None
    since: float | None = Field(default=None, description="Unix time the pause began.")


def known_environments(interlock: Interlock) -> set[str]:
    """Environments a loaded workflow declares or an agent lives in."""
    found = {env for rt in interlock.workflows for env in rt.manifest.environments}
    return found | {record.environment for record in interlock.agents.list()}


def pause_target(interlock: Interlock, operator: Operator, scope: str, key: str) -> str | None:
    """The workflow a pause falls under (``None`` for an environment); :class:`NotFound` when the
    key names nothing the operator can see."""
    if scope == "workflow":
        interlock.runtime(key)
        workflow: str | None = key
    elif scope == "agent":
        found = interlock.agents.lookup(key)
        workflow = None if found is None else found.record.workflow
        if workflow is None or not may_view(operator, workflow):
            raise NotFound(f"unknown agent {key!r}", code="unknown_agent")
    elif scope == "environment":
        known = known_environments(interlock)
        if key not in known:
            raise NotFound(
                f"unknown environment {key!r}; known: {', '.join(sorted(known)) or 'none'}",
                code="unknown_environment",
            )
        return None
    else:
        raise ArgumentsInvalid(
            f"cannot pause a {scope!r}; pause a workflow, agent or environment", field="scope"
        )
    if not may_view(operator, workflow):
        raise NotFound(f"workflow {workflow!r} is not loaded on this server", code="unknown_workflow")
    return workflow


def may_pause(interlock: Interlock, operator: Operator, scope: str, key: str) -> bool:
    workflow = pause_target(interlock, operator, scope, key)
    if scope == "workflow":
        return may_pause_workflow(operator, interlock.runtime(key))
    if scope == "agent":
        assert workflow is not None  # pause_target found the agent's workflow
        return may_pause_agent(operator, workflow)
    return may_pause_environment(operator)  # an environment spans every workflow


def require_pause(interlock: Interlock, operator: Operator, scope: str, key: str) -> None:
    if may_pause(interlock, operator, scope, key):
        return
    who = {
        "workflow": "an owner or admin of the workflow, or one of its pause_owners",
        "agent": "an admin or owner of the agent's workflow",
        "environment": "an admin of every workflow",
    }[scope]
    raise PermissionDenied(
        f"operator {operator.id!r} may not pause or resume {scope} {key!r}: that takes {who}",
        details={"operator_id": operator.id, "scope": scope, "key": key},
    )


def active_pauses(interlock: Interlock, operator: Operator | None = None) -> list[PauseInfo]:
    """Every active pause (those ``operator`` may see, when given), workflows first."""
    agents = {record.id: record.workflow for record in interlock.agents.list()}
    found = []
    for row in interlock.pauses():
        scope, key = row["scope"], row["key"]
        workflow = key if scope == "workflow" else agents.get(key) if scope == "agent" else None
        if operator is not None and not may_view(operator, workflow):
            continue
        found.append(
            PauseInfo(
                scope=scope,
                key=key,
                workflow=workflow,
                paused_by=row.get("paused_by"),
                reason=row.get("reason"),
                since=row.get("created_at"),
            )
        )
    return sorted(found, key=lambda p: (SCOPES.index(p.scope), p.key))


def _current(interlock: Interlock, scope: str, key: str) -> PauseInfo | None:
    return next((p for p in active_pauses(interlock) if p.scope == scope and p.key == key), None)


def pause(
    interlock: Interlock, operator: Operator, scope: str, key: str, *, reason: str
) -> tuple[PauseInfo, bool]:
    """Pause, after checking who asks; ``(pause, True)`` when new, the standing one otherwise."""
    require_pause(interlock, operator, scope, key)
    standing = _current(interlock, scope, key)
    if standing is not None:
        return standing, False
    interlock.pause(scope, key, actor=actor(operator), reason=reason.strip())
    created = _current(interlock, scope, key)
    assert created is not None  # just written; the database would have raised
    return created, True


def resume(interlock: Interlock, operator: Operator, scope: str, key: str) -> PauseInfo:
    """Lift a pause, after checking who asks; return the pause that was lifted."""
    require_pause(interlock, operator, scope, key)
    standing = _current(interlock, scope, key)
    if standing is None:
        raise NotFound(f"{scope} {key!r} is not paused", code="not_paused")
    interlock.resume(scope, key, actor=actor(operator))
    return standing


__all__ = [
    "SCOPES",
    "PauseInfo",
    "Scope",
    "active_pauses",
    "known_environments",
    "may_pause",
    "pause",
    "pause_target",
    "require_pause",
    "resume",
]
