"""Approvals over HTTP: operators list and decide them; the agent that asked reads (and waits on) its own.

=======================================  ========================  ==========================================
route                                    caller                    notes
=======================================  ========================  ==========================================
``GET  /v1/approvals``                   operator (any role)       filters: workflow, state, min_age_s, risk,
                                                                   agent, tool, q; offset and limit page,
                                                                   ``X-Total-Count`` counts every match
``GET  /v1/approvals/{id}``              operator, or the agent    operators get the full view; the agent
                                         whose run it is           its decision and outcome. ``?wait=N``
                                                                   (≤ 30 s) answers as soon as the state or
                                                                   execution changes.
``POST /v1/approvals/{id}/approve``      operator, approver role   body ``{"comment": …}`` (optional)
``POST /v1/approvals/{id}/reject``       operator, approver role   the comment is what the agent is told
``POST /v1/approvals/{id}/cancel``       operator (approver,       withdraws a pending request
                                         owner or admin)
=======================================  ========================  ==========================================

Errors: 403 ``not_eligible`` (no approver role) or ``self_approval_forbidden`` (the run's starter),
404 ``unknown_approval`` (also for approvals the caller may not see), 409 ``already_decided``,
``already_voted`` or ``approval_expired``. Agent tokens are refused on the deciding routes (401
``wrong_token_type``): an agent never approves.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from interlock._internal.api.deps import ALL_ROLES, CallerDep, InterlockDep, OperatorDep, require_any_role
from interlock._internal.api.schemas import TOTAL_HEADER, WorkflowQuery, error_responses, text_filter
from interlock._internal.approvals.models import AgentApprovalView, ApprovalView
from interlock._internal.approvals.service import MAX_COMMENT_CHARS
from interlock._internal.identity.operators import Operator
from interlock._internal.identity.tokens import AgentPrincipal
from interlock._internal.manifest.models import Trait
from interlock._internal.permissions import may_view
from interlock._internal.service import Interlock
from interlock.exceptions import InterlockError, NotFound

router = APIRouter(prefix="/v1", tags=["approvals"])

MAX_WAIT_S = 30.0
# How often a long poll looks again. Another replica may decide, so the database is the signal.
_POLL_S = 0.25

ApprovalIdPath = Annotated[
    str, Path(pattern=r"^[^\x00]{1,200}$", description="An approval id (an action's approval_id).")
]
StateQuery = Annotated[
    str,
    Query(
        pattern=r"^(pending|approved|rejected|expired|cancelled|all)$",
        description="Only approvals in this state; 'all' for every state.",
    ),
]


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: str | None = Field(
        default=None,
        max_length=MAX_COMMENT_CHARS,
        pattern=r"^[^\x00]*$",
        description="Why. On a rejection this is what the agent is told.",
    )


_DECIDE_ERRORS = error_responses(400, 401, 403, 404, 409, 422)


def _visible(interlock: Interlock, caller: AgentPrincipal | Operator, approval_id: str) -> ApprovalView:
    """The approval, if the caller may see it; to anyone else it does not exist."""
    view = interlock.approvals.get(approval_id)
    if isinstance(caller, Operator):
        try:
            require_any_role(caller, ALL_ROLES, view.workflow)
        except InterlockError:
            raise NotFound(f"unknown approval {approval_id!r}", code="unknown_approval") from None
    elif caller.agent_id != view.agent_id or caller.workflow != view.workflow:
        raise NotFound(f"unknown approval {approval_id!r}", code="unknown_approval")
    return view


@router.get(
    "/approvals",
    response_model=list[ApprovalView],
    summary="List and search approvals",
    responses=error_responses(401, 422),
)
def list_approvals(
    operator: OperatorDep,
    interlock: InterlockDep,
    response: Response,
    workflow: WorkflowQuery = None,
    state: StateQuery = "pending",
    min_age_s: Annotated[
        float | None, Query(ge=0, le=10**9, description="Only those waiting at least this long.")
    ] = None,
    risk: Annotated[Trait | None, Query(description="Only those with this risk trait.")] = None,
    agent: Annotated[str | None, text_filter("Only this agent's.")] = None,
    tool: Annotated[str | None, text_filter("Only this tool's.")] = None,
    q: Annotated[str | None, text_filter("Text in the id, agent, tool or arguments.")] = None,
    offset: Annotated[int, Query(ge=0, le=10**7, description="Skip this many (pagination).")] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[ApprovalView]:
    """Approvals on the workflows the operator holds a role for; pending ones oldest first, others
    newest first. Every filter and the page are applied after that permission filter, inside the
    query: ``X-Total-Count`` is how many match in all, so ``offset`` pages through exactly them."""
    workflows: list[str] | None = None if operator.workflows is None else list(operator.workflows)
    if workflow is not None:
        workflows = [workflow] if may_view(operator, workflow) else []
    views, total = interlock.approvals.search(
        workflows=workflows,
        state=state,
        agent=agent,
        tool=tool,
        text=q,
        risk=risk,
        older_than_s=min_age_s,
        offset=offset,
        limit=limit,
    )
    response.headers[TOTAL_HEADER] = str(total)
    return views


@router.get(
    "/approvals/{approval_id}",
    response_model=ApprovalView | AgentApprovalView,
    summary="One approval (operators), or its decision and outcome (the agent that asked)",
    responses=error_responses(401, 404, 422),
)
async def get_approval(
    approval_id: ApprovalIdPath,
    caller: CallerDep,
    interlock: InterlockDep,
    wait: Annotated[
        float,
        Query(ge=0, le=MAX_WAIT_S, description="Long poll: wait up to this many seconds for a change."),
    ] = 0,
) -> ApprovalView | AgentApprovalView:
    """With ``wait``, the answer comes as soon as the state or execution changes (or when the time
    is up, unchanged); a settled approval answers at once."""
    view = await run_in_threadpool(_visible, interlock, caller, approval_id)
    if wait > 0 and not view.settled:
        seen = (view.state, view.execution)
        deadline = time.monotonic() + wait
        while (remaining := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(_POLL_S, remaining))
            view = await run_in_threadpool(interlock.approvals.get, approval_id)
            if (view.state, view.execution) != seen:
                break
    return view if isinstance(caller, Operator) else AgentApprovalView.of(view)


@router.post(
    "/approvals/{approval_id}/approve",
    response_model=ApprovalView,
    summary="Vote to approve (runs the action once the quorum is reached)",
    responses=_DECIDE_ERRORS,
)
def approve(
    approval_id: ApprovalIdPath,
    operator: OperatorDep,
    interlock: InterlockDep,
    body: DecisionRequest | None = None,
) -> ApprovalView:
    """Record the operator's approval. When it completes the quorum the action runs, with exactly
    the approved arguments, before this returns; ``execution`` and ``outcome`` say how it went."""
    _visible(interlock, operator, approval_id)
    comment = body.comment if body is not None else None
    return interlock.approvals.decide(
        approval_id, operator=operator, approve=True, comment=comment, via="api"
    )


@router.post(
    "/approvals/{approval_id}/reject",
    response_model=ApprovalView,
    summary="Reject (one reject vote is enough)",
    responses=_DECIDE_ERRORS,
)
def reject(
    approval_id: ApprovalIdPath,
    operator: OperatorDep,
    interlock: InterlockDep,
    body: DecisionRequest | None = None,
) -> ApprovalView:
    """Reject the action; it never runs, and the agent is told the comment."""
    _visible(interlock, operator, approval_id)
    comment = body.comment if body is not None else None
    return interlock.approvals.decide(
        approval_id, operator=operator, approve=False, comment=comment, via="api"
    )


@router.post(
    "/approvals/{approval_id}/cancel",
    response_model=ApprovalView,
    summary="Withdraw a pending approval",
    responses=_DECIDE_ERRORS,
)
def cancel(
    approval_id: ApprovalIdPath,
    operator: OperatorDep,
    interlock: InterlockDep,
    body: DecisionRequest | None = None,
) -> ApprovalView:
    """Cancel a request that no longer needs deciding; nothing runs."""
    _visible(interlock, operator, approval_id)
    comment = body.comment if body is not None else None
    return interlock.approvals.cancel(approval_id, operator=operator, comment=comment, via="api")


__all__ = ["MAX_WAIT_S", "DecisionRequest", "router"]
