"""Kill switches below the workflow and handoffs, over HTTP; the rules: :mod:`interlock._internal.operations`.

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

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from interlock._internal.api.deps import InterlockDep, OperatorDep
from interlock._internal.api.schemas import NamePath, WorkflowQuery, error_responses
from interlock._internal.gateway.models import ActionResult
from interlock._internal.operations.handoffs import resolve, visible_handoff, visible_handoffs
from interlock._internal.operations.pauses import PauseInfo, Scope, active_pauses, pause, resume
from interlock._internal.runs.handoffs import Handoff, Resolution

MAX_REASON_CHARS = 1000

_NO_NUL = r"^[^\x00]*$"
# At least one visible character, so "why" is never blank; no NUL (PostgreSQL text refuses it).
_SOME_TEXT = r"^[^\x00]*[^\x00\s][^\x00]*$"


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
        "the whole pipeline, with `arguments`; stop: the run ends. An outcome-unknown handoff (a call "
        "cut off when its server died) takes instead: happened (with `evidence`), not_happened, or "
        "retry (the call is made again with the same upstream idempotency key)."
    )
    arguments: dict[str, Any] | None = Field(
        default=None, description="The edited arguments; only (and always) with resume_with_arguments."
    )
    comment: str | None = Field(default=None, max_length=2000, pattern=_NO_NUL)
    evidence: str | None = Field(
        default=None,
        max_length=2000,
        pattern=_NO_NUL,
        description="With happened: what shows it happened (a reference, a link); kept in the audit log.",
    )


class HandoffResolved(BaseModel):
    handoff: Handoff
    action_result: ActionResult | None = Field(
        default=None,
        description="With resume_with_arguments: what became of the edited action; with happened, "
        "not_happened or retry: the agent's definitive answer for the action.",
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
    """Resume the run, resume it with the held action's arguments edited, or stop it; for an
    outcome-unknown handoff, say it happened (with evidence), it did not, or retry it now with the
    same upstream key. Decided once."""
    handoff, result = resolve(
        interlock,
        operator,
        handoff_id,
        action=body.action,
        arguments=body.arguments,
        comment=body.comment,
        evidence=body.evidence,
    )
    return HandoffResolved(handoff=handoff, action_result=result)


__all__ = ["HandoffResolved", "PauseRequest", "ResolveRequest", "router"]
