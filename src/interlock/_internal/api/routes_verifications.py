"""Verifier gates over HTTP: a verifier agent lists the requests routed to it, reads each one's
decision package (the one a person reads) and gives its verdict.

==========================================  ================  ========================================
route                                       caller            notes
==========================================  ================  ========================================
``GET  /v1/verifications``                  verifier agent    ``?state=awaiting`` (default) or ``all``
``GET  /v1/verifications/{id}``             verifier agent    the approval with its whole package
``POST /v1/verifications/{id}/verdict``     verifier agent    approve, reject or escalate; bound to
                                                              ``args_hash``; with its model usage
==========================================  ================  ========================================

Errors: 403 ``not_a_verifier`` (the agent is not one of the manifest's verifiers), 404
``unknown_approval`` (also for requests routed to another verifier), 409 ``args_mismatch`` (the
verdict names other arguments than the request's), ``already_verified``, ``already_decided`` or
``approval_expired``. Operator tokens are refused (401 ``wrong_token_type``): people decide
through ``/v1/approvals``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from interlock._internal.api.deps import AgentDep, InterlockDep
from interlock._internal.api.schemas import error_responses
from interlock._internal.approvals.models import ApprovalView
from interlock._internal.approvals.verifications import MAX_REASONING_CHARS

router = APIRouter(prefix="/v1", tags=["verifications"])

ApprovalIdPath = Annotated[
    str, Path(pattern=r"^[^\x00]{1,200}$", description="The id of an approval routed to this verifier.")
]


class VerdictRequest(BaseModel):
    """A verifier's verdict on one request, and what reaching it cost."""

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["approve", "reject", "escalate"] = Field(
        description="approve or reject (settles the request where policy lets the verifier settle it "
        "alone; otherwise a person decides, with this verdict as advice), or escalate to a person."
    )
    args_hash: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="The args_hash of the request as read: the verdict covers exactly those arguments.",
    )
    reasoning: str | None = Field(
        default=None,
        max_length=MAX_REASONING_CHARS,
        pattern=r"^[^\x00]*$",
        description="Why; shown to people.",
    )
    model: str | None = Field(
        default=None, min_length=1, max_length=200, description="The model that judged."
    )
    input_tokens: int = Field(default=0, ge=0, le=10**9)
    output_tokens: int = Field(default=0, ge=0, le=10**9)
    cost_usd: float | None = Field(
        default=None, ge=0, le=1_000_000, description="Else priced from the tiers."
    )
    task: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z][A-Za-z0-9_.\-]{0,127}$",
        description="The task class of the model call (e.g. verification), checked against its tier.",
    )


@router.get(
    "/verifications",
    response_model=list[ApprovalView],
    summary="Requests routed to this verifier",
    responses=error_responses(401, 403, 422),
)
def list_verifications(
    agent: AgentDep,
    interlock: InterlockDep,
    state: Annotated[
        Literal["awaiting", "all"], Query(description="awaiting (oldest first) or all (newest first).")
    ] = "awaiting",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[ApprovalView]:
    """The approval requests the manifest routes to this verifier agent."""
    return interlock.verifications.list(agent, state=state, limit=limit)


@router.get(
    "/verifications/{approval_id}",
    response_model=ApprovalView,
    summary="One request routed to this verifier, with its decision package",
    responses=error_responses(401, 403, 404, 422),
)
def get_verification(approval_id: ApprovalIdPath, agent: AgentDep, interlock: InterlockDep) -> ApprovalView:
    """The same package a person reads: action, arguments, reasoning, evidence, risk, impact."""
    return interlock.verifications.get(agent, approval_id)


@router.post(
    "/verifications/{approval_id}/verdict",
    response_model=ApprovalView,
    summary="Give a verdict (settles it where policy lets the verifier, else a person decides)",
    responses=error_responses(400, 401, 403, 404, 409, 422),
)
def give_verdict(
    approval_id: ApprovalIdPath, body: VerdictRequest, agent: AgentDep, interlock: InterlockDep
) -> ApprovalView:
    """Record the verdict. A settled approval runs its action once before this returns
    (``execution``, ``outcome``); ``verdict.settles`` and ``verdict.code`` say what policy allowed."""
    return interlock.verifications.decide(
        agent,
        approval_id,
        verdict=body.verdict,
        args_hash=body.args_hash,
        reasoning=body.reasoning,
        model=body.model,
        input_tokens=body.input_tokens,
        output_tokens=body.output_tokens,
        cost_usd=body.cost_usd,
        task=body.task,
        via="api",
    )


__all__ = ["VerdictRequest", "router"]
