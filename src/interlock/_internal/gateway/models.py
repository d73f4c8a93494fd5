"""The shapes every interface returns: Python, HTTP and MCP speak the same objects."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from interlock._internal.manifest.models import Trait, Verb

DecisionKind = Literal["allow", "deny", "require_approval", "escalate"]
ActionStatus = Literal[
    "executed", "pending_approval", "denied", "invalid", "limited", "failed", "escalated", "outcome_unknown"
]


class Reason(BaseModel):
    """One machine-readable reason: a stable ``code``, a human ``message``, the policy if any."""

    model_config = ConfigDict(frozen=True)

    code: str
    message: str
    policy_id: str | None = None
    field: str | None = None


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True)

    decision: DecisionKind
    reasons: list[Reason]
    tool: str | None = None
    verb: str | None = None
    risk: list[str] = Field(default_factory=list)
    policy_ids: list[str] = Field(default_factory=list)
    args_hash: str | None = None
    manifest_version: str | None = None
    policy_version: str | None = None
    confidence: float | None = None
    package_id: str | None = None  # the work package the run was started with, if any
    # The system binding the action was resolved to in the run's environment: system,
    # environment, endpoint and the credential's reference (never the secret).
    binding: dict[str, Any] | None = None
    # The data classes the run carried when this was decided.
    data_classes: list[str] = Field(default_factory=list)

    @property
    def reason_codes(self) -> list[str]:
        return [r.code for r in self.reasons]


class ActionResult(BaseModel):
    """What an agent gets back for one action."""

    status: ActionStatus
    decision: Decision
    run_id: str
    step_id: str | None = None
    seq: int | None = None
    result: Any = None
    error: str | None = None
    approval_id: str | None = None
    replayed: bool = False
    retry_after: float | None = None

    @property
    def executed(self) -> bool:
        return self.status == "executed"


class ModelCall(BaseModel):
    """A model call the agent reports so its tokens and cost count against budgets."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    input_tokens: int = Field(ge=0, le=10**9)
    output_tokens: int = Field(ge=0, le=10**9)
    cost_usd: float | None = Field(default=None, ge=0, le=1_000_000)
    duration_ms: float | None = Field(default=None, ge=0)
    task: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z][A-Za-z0-9_.\-]{0,127}$",
        description="The task class (extraction, classification, planning, ...): the call is checked "
        "against that class's model tier in the manifest's models.",
    )


class ModelCallResult(BaseModel):
    run_id: str
    step_id: str
    seq: int
    cost_usd: float
    tokens: int
    run_state: str
    reasons: list[Reason] = Field(default_factory=list)


class Run(BaseModel):
    id: str
    workflow: str
    workflow_version: str
    agent_id: str
    environment: str
    state: str
    state_reason: str | None = None
    trigger: Any = None
    started_by: str | None = None
    steps: int = 0
    tool_calls: int = 0
    cost_usd: float = 0.0
    tokens: int = 0
    started_at: float
    ended_at: float | None = None
    package_id: str | None = None
    rollout_id: str | None = None  # the rollout running when it started (its version: workflow_version)


class Step(BaseModel):
    id: str
    run_id: str
    seq: int
    kind: str
    tool: str | None
    verb: str | None
    status: str
    decision: Decision | None = None
    arguments: Any = None
    result: Any = None
    error: str | None = None
    reasoning: str | None = None
    confidence: float | None = None
    evidence: list[str] | None = None
    duration_ms: float | None = None
    created_at: float
    # The data classes this step brought into the run, and whose data it was (domains).
    data_classes: dict[str, Any] | None = None
    # Answered from the read cache: the step whose upstream call fetched the answer.
    cached_from: str | None = None


class RunView(Run):
    steps_detail: list[Step] = Field(default_factory=list)


class ToolInfo(BaseModel):
    """A tool as listed to an agent (``GET /v1/tools``, the SDK's ``tools()``)."""

    name: str
    description: str
    verb: Verb
    traits: list[Trait]
    input_schema: dict[str, Any]
