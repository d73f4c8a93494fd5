"""What an approval looks like to the people who decide it and to the agent that waits for it.

An approval moves through one small state machine::

    pending ──(quorum of approve votes)──▶ approved ──▶ execution: done | refused | held
       ├────(one reject vote)──────────▶ rejected
       ├────(expires_at passes)────────▶ expired
       └────(an operator withdraws it)─▶ cancelled

Only ``pending`` moves; every other state is final. The view shows the decision-ready package the
pipeline stored (proposed action, reasoning, evidence, risk, impact either way), the votes, and a
summary of the run, so a person can decide in a minute without opening anything else.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from interlock._internal.gateway.models import ActionResult

ApprovalState = Literal["pending", "approved", "rejected", "expired", "cancelled"]
VoteKind = Literal["approve", "reject"]

STATES: tuple[str, ...] = ("pending", "approved", "rejected", "expired", "cancelled")
FINAL_STATES: frozenset[str] = frozenset({"approved", "rejected", "expired", "cancelled"})
# Execution states after which nothing about an approved approval changes any more.
SETTLED_EXECUTIONS: frozenset[str] = frozenset({"done", "refused"})


class Vote(BaseModel):
    operator_id: str
    vote: VoteKind
    comment: str | None = None
    created_at: float


VerdictKind = Literal["approve", "reject", "escalate"]
VerificationState = Literal["awaiting", "settled", "escalated"]


class VerdictView(BaseModel):
    """A verifier agent's verdict on an approval: recorded like a vote, bound to the argument hash
    it judged, with whether policy let it settle the approval alone and what it cost."""

    verifier: str
    verdict: VerdictKind
    args_hash: str
    reasoning: str | None = None
    settles: bool = Field(description="Policy let the verifier settle the approval alone.")
    code: str = Field(
        description="Why it settles or not: settle_permitted, settle_forbidden, no_settle_rule, …"
    )
    policy_ids: list[str] = Field(default_factory=list)
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    step_id: str | None = None
    created_at: float


class RunSummary(BaseModel):
    """The run the action belongs to, enough to judge it in context."""

    id: str
    workflow: str
    agent_id: str
    environment: str
    state: str
    state_reason: str | None = None
    started_by: str | None = None
    steps: int
    tool_calls: int
    cost_usd: float
    started_at: float


class ApprovalPackage(BaseModel):
    """The decision-ready package the pipeline built when it asked for a person."""

    # Open to fields a newer pipeline adds, so an older reader still shows what it knows.
    model_config = ConfigDict(extra="allow")

    action: str | None = None
    tool: str | None = None
    verb: str | None = None
    description: str | None = None
    arguments: Any = None
    reasoning: str | None = None
    confidence: float | None = None
    evidence: list[str] = Field(default_factory=list)
    risk: list[str] = Field(default_factory=list)
    impact_if_accepted: str | None = None
    impact_if_rejected: str | None = None
    policy_reasons: list[dict[str, Any]] = Field(default_factory=list)
    rules: list[str] = Field(default_factory=list)
    # The data classes the run carried when it asked (what this action would move).
    data_classes: list[str] = Field(default_factory=list)


class ApprovalView(BaseModel):
    """One approval as an operator sees it. Arguments are the redacted copy; the exact ones are
    never shown and are dropped once the approval is closed or acted upon."""

    id: str
    workflow: str
    run_id: str
    step_id: str
    agent_id: str
    tool: str
    verb: str
    state: ApprovalState
    args_hash: str = Field(description="Hash of the exact arguments; the action runs only with these.")
    arguments: Any = None
    risk: list[str] = Field(default_factory=list)
    package: ApprovalPackage
    quorum: int
    approve_votes: int = Field(description="Distinct operators who voted to approve so far.")
    votes: list[Vote] = Field(default_factory=list)
    created_at: float
    expires_at: float
    age_s: float = Field(description="Seconds since the request, when this view was read.")
    expires_in_s: float | None = Field(description="Seconds left to decide; None once closed.")
    decided_at: float | None = None
    decided_by: list[str] = Field(default_factory=list)
    comment: str | None = None
    execution: str | None = Field(
        default=None, description="After approval: executing, held (paused), done or refused."
    )
    outcome: ActionResult | None = None
    run: RunSummary | None = None
    verifier: str | None = Field(default=None, description="The verifier agent the request was routed to.")
    verification: VerificationState | None = Field(
        default=None, description="awaiting the verifier, settled by it, or escalated to a person."
    )
    verdict: VerdictView | None = None

    @property
    def settled(self) -> bool:
        """Nothing about it will change any more."""
        if self.state == "approved":
            return self.execution in SETTLED_EXECUTIONS
        return self.state in FINAL_STATES


class AgentApprovalView(BaseModel):
    """What the agent that asked sees: whether it may go ahead, who decided, why, and the outcome."""

    id: str
    run_id: str
    tool: str
    state: ApprovalState
    expires_at: float
    decided_at: float | None = None
    decided_by: list[str] = Field(default_factory=list)
    comment: str | None = None
    execution: str | None = None
    outcome: ActionResult | None = None

    @classmethod
    def of(cls, view: ApprovalView) -> AgentApprovalView:
        return cls(
            id=view.id,
            run_id=view.run_id,
            tool=view.tool,
            state=view.state,
            expires_at=view.expires_at,
            decided_at=view.decided_at,
            decided_by=view.decided_by,
            comment=view.comment,
            execution=view.execution,
            outcome=view.outcome,
        )


__all__ = [
    "FINAL_STATES",
    "SETTLED_EXECUTIONS",
    "STATES",
    "AgentApprovalView",
    "ApprovalPackage",
    "ApprovalState",
    "ApprovalView",
    "RunSummary",
    "VerdictKind",
    "VerdictView",
    "VerificationState",
    "Vote",
    "VoteKind",
]
