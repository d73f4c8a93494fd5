"""Who may see and do what in the console. The same rules as the HTTP API, asked as yes/no questions
so pages can hide a button instead of showing one that fails."""

from __future__ import annotations

from interlock._internal.gateway.runtime import WorkflowRuntime
from interlock._internal.identity.operators import ROLES, Operator
from interlock._internal.service import Interlock
from interlock.exceptions import NotFound, PermissionDenied

AGENT_ADMINS = ("admin", "owner")
PAUSERS = ("owner", "admin")


def may_view(operator: Operator, workflow: str) -> bool:
    return any(operator.can(role, workflow) for role in ROLES)


def visible_workflows(interlock: Interlock, operator: Operator) -> list[str]:
    """Loaded workflows the operator holds any role for, by name."""
    return sorted(rt.name for rt in interlock.workflows if may_view(operator, rt.name))


def runtime_for(interlock: Interlock, operator: Operator, workflow: str) -> WorkflowRuntime:
    """The workflow's runtime if the operator may see it; otherwise the same NotFound as a typo, so
    the console does not confirm which workflows exist to people who hold no role on them."""
    try:
        runtime = interlock.runtime(workflow)
    except NotFound:
        runtime = None
    if runtime is None or not may_view(operator, workflow):
        raise NotFound(f"no workflow {workflow!r}", code="unknown_workflow")
    return runtime


def may_decide(operator: Operator, runtime: WorkflowRuntime) -> bool:
    return any(operator.can(role, runtime.name) for role in runtime.manifest.approvals.approver_roles)


def may_pause(operator: Operator, runtime: WorkflowRuntime) -> bool:
    if operator.id in runtime.manifest.pause_owners:
        return True
    return any(operator.can(role, runtime.name) for role in PAUSERS)


def may_admin_agents(operator: Operator, workflow: str) -> bool:
    return any(operator.can(role, workflow) for role in AGENT_ADMINS)


def require(allowed: bool, operator: Operator, what: str) -> None:
    if not allowed:
        raise PermissionDenied(
            f"operator {operator.id!r} may not {what}", details={"operator_id": operator.id}
        )


__all__ = [
    "AGENT_ADMINS",
    "PAUSERS",
    "may_admin_agents",
    "may_decide",
    "may_pause",
    "may_view",
    "require",
    "runtime_for",
    "visible_workflows",
]
