"""What a work package says: the task, the agent, the tools with bounds on their arguments, a budget."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

FORMAT = "interlock.package/v1"
MICRO = 1_000_000
# Keys of package_usage rows: "<tool>:<argument>" for an argument's total, these for the rest.
CALLS = "#calls"
BUDGET_KEY = "$budget_usd"


class ArgumentBound(BaseModel):
    """Bounds on one top-level argument of a tool. Every bound given must hold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: float | None = None
    max: float | None = None
    # The sum over every action of the run (for example a refund amount ≤ 200 in total).
    max_total: float | None = Field(default=None, ge=0)
    one_of: list[Any] | None = None

    @model_validator(mode="after")
    def _something(self) -> ArgumentBound:
        if self.min is None and self.max is None and self.max_total is None and self.one_of is None:
            raise ValueError("an argument bound needs min, max, max_total or one_of")
        return self


class ToolGrant(BaseModel):
    """One tool the package allows, how often, and within which bounds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_calls: int | None = Field(default=None, ge=1, le=1_000_000)
    arguments: dict[str, ArgumentBound] = Field(default_factory=dict)


class PackageRequest(BaseModel):
    """What an operator asks to be signed. ``manifest_version`` defaults to the active one."""

    model_config = ConfigDict(extra="forbid")

    workflow: str = Field(min_length=1, max_length=200)
    agent: str = Field(min_length=1, max_length=200)
    environment: str | None = Field(default=None, max_length=100)
    manifest_version: str | None = Field(default=None, max_length=300)
    task: str = Field(default="", max_length=2000)
    tools: dict[str, ToolGrant] = Field(min_length=1)
    budget_usd: float | None = Field(default=None, ge=0, le=1_000_000)
    ttl_s: int = Field(default=3600, ge=60)


class WorkPackage(BaseModel):
    """A package as stored: its claims, the signed token, and where it is in its life."""

    id: str
    token: str
    claims: dict[str, Any]
    state: str  # issued | used | revoked
    issued_by: str
    created_at: float
    expires_at: float
    used_at: float | None = None
    run_id: str | None = None
    revoked_at: float | None = None
    revoked_by: str | None = None
    revoked_reason: str | None = None

    @property
    def tools(self) -> dict[str, ToolGrant]:
        return {name: ToolGrant.model_validate(g) for name, g in self.claims["tools"].items()}


def micros(value: float) -> int:
    return round(value * MICRO)


def usage_limits(claims: dict[str, Any]) -> dict[str, int]:
    """The package_usage rows a package starts with: key → limit in micro-units (calls as counts)."""
    limits: dict[str, int] = {}
    for tool, raw in claims["tools"].items():
        grant = ToolGrant.model_validate(raw)
        if grant.max_calls is not None:
            limits[f"{tool}:{CALLS}"] = grant.max_calls
        for name, bound in grant.arguments.items():
            if bound.max_total is not None:
                limits[f"{tool}:{name}"] = micros(bound.max_total)
    if claims.get("budget_usd") is not None:
        limits[BUDGET_KEY] = micros(float(claims["budget_usd"]))
    return limits


__all__ = [
    "BUDGET_KEY",
    "CALLS",
    "FORMAT",
    "ArgumentBound",
    "PackageRequest",
    "ToolGrant",
    "WorkPackage",
    "micros",
    "usage_limits",
]
