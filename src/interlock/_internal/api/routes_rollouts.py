"""Rollouts over HTTP: a candidate manifest in shadow or as a canary beside the active version.

=============================================  ================  ==========================================
route                                          who               notes
=============================================  ================  ==========================================
``POST /v1/workflows/{name}/rollout``          admin or owner    ``{manifest, share?, agents?, triggers?,
                                                                 max_denial_increase?,
                                                                 max_escalation_increase?,
                                                                 min_decisions?}``; 201; 409 when one
                                                                 is already running
``GET  /v1/workflows/{name}/rollout``          any role          the running (or last) rollout and how
                                                                 its candidate's decisions differ
``POST /v1/workflows/{name}/rollout/promote``  admin or owner    ``{reason?}``: the candidate becomes active
``POST /v1/workflows/{name}/rollout/abort``    admin or owner    ``{reason?}``: every run back on the active
=============================================  ================  ==========================================

The candidate's text comes in the request; its relative references (Python tools, policy files,
shared systems files) resolve from the active version's folder on the server.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from interlock._internal.api.deps import InterlockDep, OperatorDep
from interlock._internal.api.schemas import NamePath, error_responses
from interlock._internal.manifest.loader import load_manifest_text
from interlock._internal.operations import rollouts as ops
from interlock._internal.permissions import runtime_for
from interlock.exceptions import ArgumentsInvalid, ConfigError, ManifestError

router = APIRouter(prefix="/v1", tags=["rollouts"])

_NO_NUL = r"^[^\x00]*$"
_NAME = r"^[A-Za-z][A-Za-z0-9_.\-]{0,127}$"
_ERRORS = error_responses(400, 401, 403, 404, 422)


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    manifest: str = Field(
        min_length=1, max_length=1_048_576, pattern=_NO_NUL, description="The candidate manifest (YAML text)."
    )
    share: float = Field(default=0.0, ge=0, le=1, description="Share of new runs the candidate decides.")
    agents: list[Annotated[str, Field(pattern=_NAME)]] = Field(
        default_factory=list, max_length=100, description="Agents whose new runs the candidate decides."
    )
    triggers: dict[str, list[str]] = Field(
        default_factory=dict,
        max_length=20,
        description="Trigger field → values: new runs whose trigger has one go to the candidate.",
    )
    max_denial_increase: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Abort when the candidate's denial rate exceeds the active's by more.",
    )
    max_escalation_increase: float | None = Field(
        default=None, ge=0, le=1, description="Abort when its escalation rate exceeds the active's by more."
    )
    min_decisions: int = Field(
        default=20, ge=1, le=1_000_000, description="Decisions before a threshold can abort."
    )


class EndRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(
        default=None, max_length=1000, pattern=_NO_NUL, description="Kept in the audit log."
    )


class Thresholds(BaseModel):
    max_denial_increase: float | None
    max_escalation_increase: float | None
    min_decisions: int


class RolloutView(BaseModel):
    """A rollout: its candidate, who gets it, its thresholds, its state and figures."""

    id: str
    workflow: str
    candidate_version: str
    active_version: str
    mode: str = Field(description="shadow or canary")
    share: float
    agents: list[str]
    triggers: dict[str, list[str]]
    thresholds: Thresholds
    state: str = Field(description="running, promoted or aborted")
    started_by: str
    started_at: float
    ended_by: str | None
    ended_at: float | None
    end_reason: str | None
    decisions: int = Field(description="Actions judged by both versions so far.")
    rates: dict[str, float] = Field(description="Denial and escalation rates of each version.")


class RolloutStatus(BaseModel):
    """How the candidate's decisions differ from the active version's on live traffic (active →
    candidate, labelled as what-if labels them)."""

    rollout: RolloutView
    total: int
    unchanged: int
    changed: int
    change_rate: float
    transitions: dict[str, int]
    labels: dict[str, str]
    examples: dict[str, list[dict[str, Any]]]
    enforced: dict[str, int] = Field(description="Compared actions by the version that decided them.")
    runs_by_version: dict[str, int] = Field(description="Runs of the rollout by the version they started on.")


@router.post(
    "/workflows/{name}/rollout",
    status_code=201,
    response_model=RolloutView,
    responses=_ERRORS | error_responses(409),
)
def start_rollout(
    name: NamePath, body: RolloutRequest, operator: OperatorDep, interlock: InterlockDep
) -> dict[str, Any]:
    """Start a rollout of a candidate manifest: shadow unless a share, agents or triggers make it a canary."""
    active = runtime_for(interlock, operator, name)
    try:
        candidate = load_manifest_text(body.manifest, file="<candidate>", base_dir=active.loaded.base_dir)
    except ManifestError:
        raise
    except ConfigError as exc:  # a file the candidate names cannot be read: the request's fault
        raise ManifestError(str(exc), code=exc.code) from exc
    if candidate.manifest.name != name:
        raise ArgumentsInvalid(
            f"the candidate is a manifest of {candidate.manifest.name!r}, not of {name!r}", field="manifest"
        )
    rollout = ops.start(
        interlock,
        operator,
        candidate,
        share=body.share,
        agents=body.agents,
        triggers=body.triggers,
        max_denial_increase=body.max_denial_increase,
        max_escalation_increase=body.max_escalation_increase,
        min_decisions=body.min_decisions,
    )
    return rollout.as_dict()


@router.get(
    "/workflows/{name}/rollout", response_model=RolloutStatus, responses=error_responses(401, 403, 404)
)
def rollout_status(
    name: NamePath,
    operator: OperatorDep,
    interlock: InterlockDep,
    examples: int = Query(default=3, ge=0, le=50, description="Examples per transition."),
) -> dict[str, Any]:
    """The running (or last) rollout and how its candidate's decisions differ from the active version's."""
    return ops.status(interlock, operator, name, examples=examples)


@router.post(
    "/workflows/{name}/rollout/promote", response_model=RolloutView, responses=_ERRORS | error_responses(409)
)
def promote_rollout(
    name: NamePath, operator: OperatorDep, interlock: InterlockDep, body: EndRequest | None = None
) -> dict[str, Any]:
    """Make the candidate the active version, for every run."""
    return ops.promote(interlock, operator, name, reason=body.reason if body else None).as_dict()


@router.post(
    "/workflows/{name}/rollout/abort", response_model=RolloutView, responses=_ERRORS | error_responses(409)
)
def abort_rollout(
    name: NamePath, operator: OperatorDep, interlock: InterlockDep, body: EndRequest | None = None
) -> dict[str, Any]:
    """End the rollout: every run, canary ones included, goes back to the active version."""
    return ops.abort(interlock, operator, name, reason=body.reason if body else None).as_dict()
