"""Who may see and do what: the one place the operator permission rules live.

The HTTP API, the console and the CLI ask these same questions. The ``may_*`` functions answer yes
or no (a page hides a button instead of showing one that fails); the ``require*`` functions raise
:class:`PermissionDenied` naming what was missing. Something an operator holds no role on answers
the same :class:`NotFound` as a typo, so nobody learns which workflows exist from a refusal.

=======================  =====================================================================
action                   who
=======================  =====================================================================
see a workflow           any role on it
decide an approval       a role in the manifest's ``approvals.approver_roles``
see an approval's values a role in the manifest's ``approvals.unmasked_roles`` (each time
unmasked                 is audited; credentials stay masked)
pause a workflow         its owners and admins, and the operators in its ``pause_owners``
pause an agent           admins and owners of the agent's workflow
pause an environment     an admin of every workflow (it stops every workflow's agents there)
resolve a handoff        owners, admins and approvers of the workflow
create an agent          an admin of the workflow
revoke an agent          admins and owners of the agent's workflow
issue or revoke a        admins and owners of the package's workflow
work package
start, promote or abort  admins and owners of the workflow (status: any role on it)
a rollout
=======================  =====================================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from interlock._internal.identity.operators import ROLES, Operator
from interlock.exceptions import NotFound, PermissionDenied

if TYPE_CHECKING:
    from interlock._internal.gateway.runtime import WorkflowRuntime
    from interlock._internal.service import Interlock

ALL_ROLES: tuple[str, ...] = ROLES
PAUSERS: tuple[str, ...] = ("owner", "admin")
AGENT_PAUSERS: tuple[str, ...] = ("admin", "owner")
AGENT_ADMINS: tuple[str, ...] = ("admin", "owner")
AGENT_CREATORS: tuple[str, ...] = ("admin",)
RESOLVERS: tuple[str, ...] = ("owner", "admin", "approver")
PACKAGE_ISSUERS: tuple[str, ...] = ("admin", "owner")
ROLLOUT_MANAGERS: tuple[str, ...] = ("admin", "owner")


def actor(operator: Operator) -> str:
    """How an operator is named in the audit log."""
    return f"operator:{operator.id}"


def has_any_role(operator: Operator, roles: tuple[str, ...], workflow: str | None) -> bool:
    return any(operator.can(role, workflow) for role in roles)


def require_any_role(operator: Operator, roles: tuple[str, ...], workflow: str | None) -> None:
    """:class:`PermissionDenied` unless the operator holds one of ``roles`` for ``workflow``."""
    if not has_any_role(operator, roles, workflow):
        where = f" for workflow {workflow!r}" if workflow is not None else ""
        raise PermissionDenied(
            f"operator {operator.id!r} needs one of the roles {', '.join(roles)}{where}",
            details={"operator_id": operator.id, "roles": list(roles), "workflow": workflow},
        )


def require(allowed: bool, operator: Operator, what: str) -> None:
    if not allowed:
        raise PermissionDenied(
            f"operator {operator.id!r} may not {what}", details={"operator_id": operator.id}
        )


def may_view(operator: Operator, workflow: str | None) -> bool:
    """Any role on the workflow; something not tied to one workflow (``None``) concerns everyone."""
    return workflow is None or has_any_role(operator, ALL_ROLES, workflow)


def visible_workflows(interlock: Interlock, operator: Operator) -> list[str]:
    """Loaded workflows the operator holds any role for, by name."""
    return sorted(rt.name for rt in interlock.workflows if may_view(operator, rt.name))


def runtime_for(interlock: Interlock, operator: Operator, workflow: str) -> WorkflowRuntime:
    """The workflow's runtime if the operator may see it; otherwise the same NotFound as a typo."""
    try:
        runtime = interlock.runtime(workflow)
    except NotFound:
        runtime = None
    if runtime is None or not may_view(operator, workflow):
        raise NotFound(f"no workflow {workflow!r}", code="unknown_workflow")
    return runtime


def may_decide(operator: Operator, runtime: WorkflowRuntime) -> bool:
    return has_any_role(operator, tuple(runtime.manifest.approvals.approver_roles), runtime.name)


def may_unmask(operator: Operator, runtime: WorkflowRuntime) -> bool:
    return has_any_role(operator, tuple(runtime.manifest.approvals.unmasked_roles), runtime.name)


def may_pause_workflow(operator: Operator, runtime: WorkflowRuntime) -> bool:
    if operator.id in runtime.manifest.pause_owners:
        return True
    return has_any_role(operator, PAUSERS, runtime.name)


def may_pause_agent(operator: Operator, workflow: str) -> bool:
    return has_any_role(operator, AGENT_PAUSERS, workflow)


def may_pause_environment(operator: Operator) -> bool:
    return operator.can("admin", None)


def may_resolve(operator: Operator, workflow: str) -> bool:
    return has_any_role(operator, RESOLVERS, workflow)


def may_admin_agents(operator: Operator, workflow: str) -> bool:
    return has_any_role(operator, AGENT_ADMINS, workflow)


__all__ = [
    "AGENT_ADMINS",
    "AGENT_CREATORS",
    "AGENT_PAUSERS",
    "ALL_ROLES",
    "PACKAGE_ISSUERS",
    "PAUSERS",
    "RESOLVERS",
    "ROLLOUT_MANAGERS",
    "actor",
    "has_any_role",
    "may_admin_agents",
    "may_decide",
    "may_pause_agent",
    "may_pause_environment",
    "may_pause_workflow",
    "may_resolve",
    "may_unmask",
    "may_view",
    "require",
    "require_any_role",
    "runtime_for",
    "visible_workflows",
]
