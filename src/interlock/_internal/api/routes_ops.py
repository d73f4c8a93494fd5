"""Kill switches below the workflow and handoffs, over HTTP, and the rules the CLI and console share.

=====================================  ========================  ==========================================
route                                  who                       notes
=====================================  ========================  ==========================================
``GET    /v1/pauses``                  operator (any role)       active pauses: workflow, agent, environment
``POST   /v1/pauses``                  see below                 ``{scope, key, reason}``; 201 when new, 200
                                                                 when already paused (kept as it was)
``DELETE /v1/pauses/{scope}/{key}``    see below                 lifts it; 404 ``not_paused`` if it was not
``GET    /v1/handoffs``                operator (any role)       ``?workflow=&state=`` (open by default;
                                                                 resumed, stopped or all)
``GET    /v1/handoffs/{id}``           operator (any role)
``POST   /v1/handoffs/{id}/resolve``   owner, admin or approver  ``{action, arguments?, comment?}``
=====================================  ========================  ==========================================

Who may pause or resume: a workflow, its owners and admins and the operators in its ``pause_owners``
(as ``/v1/workflows/{name}/pause``); an agent, the admins and owners of the agent's workflow; an
environment, an admin of every workflow, because it stops every workflow's agents there.

Workflows, agents and handoffs the caller holds no role on answer 404, like a typo. Resolving
with ``resume_with_arguments`` sends the held action, with the edited arguments, through the whole
pipeline; its result comes back next to the handoff.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from interlock._internal.api.deps import ALL_ROLES, InterlockDep, OperatorDep, actor, require_any_role
from interlock._internal.api.schemas import NamePath, WorkflowQuery, error_responses
from interlock._internal.gateway.models import ActionResult
from interlock._internal.identity.operators import Operator
from interlock._internal.runs.handoffs import Handoff, Resolution
from interlock._internal.service import Interlock
from interlock._internal.store import tables as t
from interlock._internal.store.engine import reading
from interlock.exceptions import ArgumentsInvalid, ConflictError, NotFound, PermissionDenied

Scope = Literal["workflow", "agent", "environment"]
SCOPES: tuple[Scope, ...] = ("workflow", "agent", "environment")
HANDOFF_STATES = ("open", "resumed", "stopped")
PAUSERS = ("owner", "admin")
AGENT_PAUSERS = ("admin", "owner")
RESOLVERS = ("owner", "admin", "approver")
MAX_REASON_CHARS = 1000

_NO_NUL = r"^[^\x00]*$"
# At least one visible character, so "why" is never blank; no NUL (PostgreSQL text refuses it).
_SOME_TEXT = r"^[^\x00]*[^\x00\s][^\x00]*$"


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


class PauseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: Scope
    key: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_.\-]{0,127}$", description="What to pause.")
    reason: str = Field(
        min_length=1,
        max_length=MAX_REASON_CHARS,
        pattern=_SOME_TEXT,
        description="Why; kept in the audit log.",
    )


class ResolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Resolution = Field(
        description="resume: the run goes on; resume_with_arguments: the held action runs again, through "
        "the whole pipeline, with `arguments`; stop: the run ends."
    )
    arguments: dict[str, Any] | None = Field(
        default=None, description="The edited arguments; only (and always) with resume_with_arguments."
    )
    comment: str | None = Field(default=None, max_length=2000, pattern=_NO_NUL)


class HandoffResolved(BaseModel):
    handoff: Handoff
    action_result: ActionResult | None = Field(
        default=None, description="With resume_with_arguments: what became of the edited action."
    )


# ---- who may do what (the CLI and the console ask the same questions) ---------------------------


def may_view(operator: Operator, workflow: str | None) -> bool:
    """Any role on the workflow; an environment (``None``) concerns every operator."""
    return workflow is None or any(operator.can(role, workflow) for role in ALL_ROLES)


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
        if operator.id in interlock.runtime(key).manifest.pause_owners:
            return True
        return any(operator.can(role, workflow) for role in PAUSERS)
    if scope == "agent":
        return any(operator.can(role, workflow) for role in AGENT_PAUSERS)
    return operator.can("admin", None)  # an environment spans every workflow


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
    rows = interlock.pauses()
    agents = {record.id: record.workflow for record in interlock.agents.list()}
    with reading(interlock.engine) as conn:
        since = {
            r.name: r.updated_at
            for r in conn.execute(
                select(t.workflows.c.name, t.workflows.c.updated_at).where(t.workflows.c.paused.is_(True))
            )
        }
    found = []
    for row in rows:
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
                since=since.get(key) if scope == "workflow" else row.get("created_at"),
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


def visible_handoffs(
    interlock: Interlock,
    operator: Operator | None,
    *,
    workflow: str | None = None,
    state: str = "open",
    run_id: str | None = None,
    limit: int = 200,
) -> list[Handoff]:
    """Handoffs, newest first; ``state="all"`` for every state."""
    if run_id is not None:
        query = select(t.handoffs).where(t.handoffs.c.run_id == run_id).order_by(t.handoffs.c.created_at)
        if state != "all":
            query = query.where(t.handoffs.c.state == state)
        with reading(interlock.engine) as conn:
            items = [Handoff(**row) for row in conn.execute(query.limit(limit)).mappings()]
    else:
        items = interlock.handoffs.list(
            workflow=workflow, state=None if state == "all" else state, limit=limit
        )
    return [h for h in items if operator is None or may_view(operator, h.workflow)]


def visible_handoff(interlock: Interlock, operator: Operator | None, handoff_id: str) -> Handoff:
    handoff = interlock.handoffs.get(handoff_id)
    if operator is not None and not may_view(operator, handoff.workflow):
        raise NotFound(f"unknown handoff {handoff_id!r}", code="unknown_handoff")
    return handoff


def may_resolve(operator: Operator, workflow: str) -> bool:
    return any(operator.can(role, workflow) for role in RESOLVERS)


def resolve(
    interlock: Interlock,
    operator: Operator,
    handoff_id: str,
    *,
    action: Resolution,
    arguments: Any = None,
    comment: str | None = None,
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
    return interlock.resolve_handoff(
        handoff_id, action=action, actor=actor(operator), arguments=arguments, comment=comment or None
    )


# ---- routes -------------------------------------------------------------------------------------

router = APIRouter(prefix="/v1")

ScopePath = Annotated[Scope, Path(description="workflow, agent or environment.")]
HandoffIdPath = Annotated[str, Path(pattern=r"^[^\x00]{1,200}$", description="A handoff id.")]
HandoffStateQuery = Annotated[
    str,
    Query(
        pattern=r"^(open|resumed|stopped|all)$",
        description="Only handoffs in this state; 'all' for every state.",
    ),
]
_READ_ERRORS = error_responses(401, 404, 422)
_WRITE_ERRORS = error_responses(400, 401, 403, 404, 409, 422)


@router.get("/pauses", response_model=list[PauseInfo], tags=["kill switches"], responses=_READ_ERRORS)
def list_pauses(operator: OperatorDep, interlock: InterlockDep) -> list[PauseInfo]:
    """Every active pause the operator can see: who paused what, why, and since when."""
    return active_pauses(interlock, operator)


@router.post(
    "/pauses",
    status_code=201,
    response_model=PauseInfo,
    tags=["kill switches"],
    responses={
        200: {"model": PauseInfo, "description": "It was already paused; unchanged."},
        **_WRITE_ERRORS,
    },
)
def create_pause(
    body: PauseRequest, response: Response, operator: OperatorDep, interlock: InterlockDep
) -> PauseInfo:
    """Pause a workflow, an agent or an environment: its next action anywhere is denied, and
    approved actions are held, until resumed."""
    info, created = pause(interlock, operator, body.scope, body.key, reason=body.reason)
    if not created:
        response.status_code = 200
    return info


@router.delete(
    "/pauses/{scope}/{key}", response_model=PauseInfo, tags=["kill switches"], responses=_WRITE_ERRORS
)
def delete_pause(
    scope: ScopePath, key: NamePath, operator: OperatorDep, interlock: InterlockDep
) -> PauseInfo:
    """Lift a pause (same people as pausing); held approved actions run. Returns the lifted pause."""
    return resume(interlock, operator, scope, key)


@router.get("/handoffs", response_model=list[Handoff], tags=["handoffs"], responses=_READ_ERRORS)
def list_handoffs(
    operator: OperatorDep,
    interlock: InterlockDep,
    workflow: WorkflowQuery = None,
    state: HandoffStateQuery = "open",
    limit: Annotated[int, Query(ge=1, le=500)] = 200,
) -> list[Handoff]:
    """Runs a stop rule handed to a person, on the workflows the operator holds a role for."""
    return visible_handoffs(interlock, operator, workflow=workflow, state=state, limit=limit)


@router.get("/handoffs/{handoff_id}", response_model=Handoff, tags=["handoffs"], responses=_READ_ERRORS)
def get_handoff(handoff_id: HandoffIdPath, operator: OperatorDep, interlock: InterlockDep) -> Handoff:
    """One handoff: the run, the held action and its (redacted) arguments, why, and how it ended."""
    return visible_handoff(interlock, operator, handoff_id)


@router.post(
    "/handoffs/{handoff_id}/resolve",
    response_model=HandoffResolved,
    tags=["handoffs"],
    responses=_WRITE_ERRORS,
)
def resolve_handoff(
    handoff_id: HandoffIdPath, body: ResolveRequest, operator: OperatorDep, interlock: InterlockDep
) -> HandoffResolved:
    """Resume the run, resume it with the held action's arguments edited, or stop it. Decided once."""
    handoff, result = resolve(
        interlock, operator, handoff_id, action=body.action, arguments=body.arguments, comment=body.comment
    )
    return HandoffResolved(handoff=handoff, action_result=result)


__all__ = [
    "SCOPES",
    "HandoffResolved",
    "PauseInfo",
    "PauseRequest",
    "ResolveRequest",
    "active_pauses",
    "may_pause",
    "may_resolve",
    "may_view",
    "pause",
    "pause_target",
    "require_pause",
    "resolve",
    "resume",
    "router",
    "visible_handoff",
    "visible_handoffs",
]
