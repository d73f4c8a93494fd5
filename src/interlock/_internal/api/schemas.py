"""Request bodies and the HTTP-only response shapes of the REST API.

Results the pipeline returns (``ActionResult``, ``Run``, ``RunView``) are reused from
:mod:`interlock._internal.gateway.models` so Python, HTTP and MCP speak the same objects; what
lives here is only what HTTP adds around them. Request bodies forbid unknown keys, so a typo is
a 422 that names it rather than a silently ignored option.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from interlock._internal.gateway.models import ActionResult, ToolInfo
from interlock._internal.manifest.models import (
    AgentSpec,
    Approvals,
    Budgets,
    Confidence,
    RoleGrant,
    Rules,
    StopRule,
    SuccessMetric,
    Trait,
    Verb,
)

MAX_TRIGGER_BYTES = 64 * 1024
_NAME = r"^[A-Za-z][A-Za-z0-9_.\-]{0,127}$"

# Path and query parameters: names follow the manifest's name rule; ids are opaque but never
# hold NUL, which no identifier can contain.
NamePath = Annotated[str, Path(pattern=_NAME, description="A workflow or agent name.")]
RunIdPath = Annotated[str, Path(pattern=r"^[^\x00]{1,200}$", description="A run id from POST /v1/runs.")]
WorkflowQuery = Annotated[str | None, Query(pattern=_NAME, description="Only this workflow's.")]


def text_filter(description: str) -> Any:
    """A free-text query filter (at most 200 characters, no NUL) for list endpoints."""
    return Query(max_length=200, pattern=r"^[^\x00]*$", description=description)


# A list endpoint's page is in the body; how many match in all (after permissions) is in this header.
TOTAL_HEADER = "X-Total-Count"


# Strings other than free JSON may end up in a text column, where PostgreSQL refuses U+0000;
# refusing it in the request keeps SQLite and PostgreSQL answering alike (free JSON keeps it).
_NO_NUL = r"^[^\x00]*$"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- requests ------------------------------------------------------------------------------------


class StartRunRequest(_Body):
    trigger: Any = Field(default=None, description="What started the run (a ticket, an event); any JSON.")
    started_by: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z][A-Za-z0-9_.\-]{0,127}$",
        description="The operator on whose request the agent runs. When the workflow forbids "
        "self-approval, that operator cannot approve this run's actions.",
    )
    package: str | None = Field(
        default=None,
        max_length=64_000,
        description="A signed work package (compact JWS from POST /v1/packages). Every action of the run "
        "is then held to the package's tools and bounds too, and the package cannot start another run.",
    )

    @field_validator("trigger")
    @classmethod
    def _small(cls, value: Any) -> Any:
        if len(json.dumps(value, default=str)) > MAX_TRIGGER_BYTES:
            raise ValueError(f"trigger exceeds {MAX_TRIGGER_BYTES} bytes")
        return value


class FinishRunRequest(_Body):
    state: Literal["completed", "failed"] = "completed"
    reason: str | None = Field(default=None, max_length=2000, pattern=_NO_NUL)


class ActionRequest(_Body):
    """One intent: the tool, its arguments, and what a reviewer would want to know."""

    tool: str = Field(
        min_length=1, max_length=200, pattern=_NO_NUL, description="Tool name from the workflow manifest."
    )
    arguments: dict[str, Any] = Field(
        default_factory=dict, description="Checked against the tool's input schema."
    )
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=_NO_NUL,
        description="Same key, same arguments: executed once, the recorded result replayed afterwards. "
        "May also be sent as the Idempotency-Key header.",
    )
    reasoning: str | None = Field(
        default=None, max_length=20_000, pattern=_NO_NUL, description="Why the agent wants this."
    )
    confidence: float | None = Field(default=None, ge=0, le=1)
    evidence: list[Annotated[str, Field(max_length=4000, pattern=_NO_NUL)]] | None = Field(
        default=None, max_length=50, description="Links or short quotes a reviewer can check."
    )


class CreateAgentRequest(_Body):
    id: str = Field(pattern=_NAME, description="The agent's client id.")
    workflow: str = Field(pattern=_NAME)
    environment: str = Field(pattern=_NAME)


class RevokeAgentRequest(_Body):
    reason: str | None = Field(default=None, max_length=1000, pattern=_NO_NUL)


class PauseRequest(_Body):
    reason: str | None = Field(default=None, max_length=1000, pattern=_NO_NUL)


# ---- responses ---------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    """Every error: a stable machine-readable ``code``, a human ``message``, and details by code."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ActionErrorResponse(BaseModel):
    """A non-2xx action: the error, and the full recorded result (decision, reasons, step)."""

    error: ErrorDetail
    action: ActionResult


_ERROR_DESCRIPTIONS = {
    400: "The body could not be parsed (not UTF-8, or not the declared media type).",
    401: "No token, a bad or expired one, or the wrong kind (agent vs operator).",
    403: "The caller lacks the role, or the token is scoped elsewhere.",
    404: "Not found (or not visible to the caller).",
    409: "Conflicts with the current state.",
    422: "The request fails validation; error.field names the field.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the plain error shape."""
    return {code: {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS[code]} for code in codes}


class OAuthError(BaseModel):
    """RFC 6749 §5.2: the token endpoint speaks OAuth's own error shape, which OAuth clients parse."""

    error: Literal[
        "invalid_request", "invalid_client", "unsupported_grant_type", "invalid_target", "server_error"
    ]
    error_description: str


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int


class WorkflowSummary(BaseModel):
    name: str
    version: str
    version_id: str
    owner: str
    objective: str
    environments: list[str]
    agents: int
    tools: int
    paused: bool
    paused_by: str | None = None
    paused_reason: str | None = None


class ToolSummary(BaseModel):
    name: str
    description: str
    verb: Verb
    traits: list[Trait]


class WorkflowDetail(WorkflowSummary):
    """The operating model at a glance: everything a workflow owner signs off on."""

    policy_version: str
    success_metric: SuccessMetric
    out_of_scope: list[str]
    agent_specs: list[AgentSpec]
    roles: dict[str, RoleGrant]
    tool_specs: list[ToolSummary]
    rules: Rules
    stop_rules: list[StopRule]
    budgets: Budgets
    approvals: Approvals
    confidence: Confidence
    pause_owners: list[str]


class WorkflowState(BaseModel):
    name: str
    paused: bool
    paused_by: str | None = None
    paused_reason: str | None = None


class AgentInfo(BaseModel):
    id: str
    workflow: str
    environment: str
    status: str
    created_at: float
    revoked_at: float | None = None
    revoked_by: str | None = None
    last_seen_at: float | None = None


class AgentCreated(AgentInfo):
    client_id: str
    client_secret: str = Field(description="Shown once, never stored; exchange it at POST /oauth/token.")


class AuditReport(BaseModel):
    ok: bool
    events: int
    message: str
    first_bad_seq: int | None = None
    problem: str | None = None
    detail: str | None = None
    tip_seq: int
    tip_hash: str
    checkpoints: int = Field(default=0, description="Signed checkpoints the log was held to.")
    checkpoint: int | None = Field(default=None, description="The checkpoint that disagrees, if any.")
    approvals: int = Field(default=0, description="Approvals whose deciders and votes match their events.")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready"] = "ready"
    database: Literal["ok"] = "ok"
    workflows: list[str]


__all__ = [
    "TOTAL_HEADER",
    "ActionErrorResponse",
    "ActionRequest",
    "AgentCreated",
    "AgentInfo",
    "AuditReport",
    "CreateAgentRequest",
    "ErrorDetail",
    "ErrorResponse",
    "Health",
    "NamePath",
    "OAuthError",
    "PauseRequest",
    "Readiness",
    "RevokeAgentRequest",
    "RunIdPath",
    "StartRunRequest",
    "TokenResponse",
    "ToolInfo",
    "ToolSummary",
    "WorkflowDetail",
    "WorkflowQuery",
    "WorkflowState",
    "WorkflowSummary",
    "error_responses",
    "text_filter",
]
