"""Operators' endpoints (workflows, agents, audit) and the probes (health, readiness, metrics).

Roles are not hierarchical (see :mod:`interlock._internal.identity.operators`): every route names
the roles it accepts. Probes and metrics need no token, so load balancers and Prometheus can
reach them; they reveal no more than workflow and tool names.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from interlock._internal.api.deps import (
    ALL_ROLES,
    InterlockDep,
    MetricsDep,
    OperatorDep,
    actor,
    require_any_role,
)
from interlock._internal.api.errors import error_body
from interlock._internal.api.schemas import (
    AgentCreated,
    AgentInfo,
    AuditReport,
    CreateAgentRequest,
    ErrorResponse,
    Health,
    NamePath,
    PauseRequest,
    Readiness,
    RevokeAgentRequest,
    ToolSummary,
    WorkflowDetail,
    WorkflowQuery,
    WorkflowState,
    WorkflowSummary,
    error_responses,
)
from interlock._internal.gateway.runtime import WorkflowRuntime
from interlock._internal.identity.agents import AgentRecord
from interlock._internal.identity.operators import Operator
from interlock._internal.service import Interlock
from interlock.exceptions import ArgumentsInvalid, InterlockError, PermissionDenied

router = APIRouter(prefix="/v1")
probes = APIRouter(tags=["probes"])

_OPERATOR_ERRORS = error_responses(401, 403)
_NOT_FOUND = error_responses(404)
_BODY_ERRORS = error_responses(400, 422)


# ---- workflows ---------------------------------------------------------------------------------


def _state(interlock: Interlock, name: str) -> WorkflowState:
    row = interlock.workflow_state(name)
    return WorkflowState(
        name=name, paused=row["paused"], paused_by=row["paused_by"], paused_reason=row["paused_reason"]
    )


def _summary(runtime: WorkflowRuntime, state: WorkflowState) -> dict[str, Any]:
    m = runtime.manifest
    return {
        "name": m.name,
        "version": m.version,
        "version_id": runtime.version_id,
        "owner": m.owner,
        "objective": m.objective,
        "environments": list(m.environments),
        "agents": len(m.agents),
        "tools": len(m.tools),
        "paused": state.paused,
        "paused_by": state.paused_by,
        "paused_reason": state.paused_reason,
    }


@router.get(
    "/workflows", response_model=list[WorkflowSummary], tags=["workflows"], responses=_OPERATOR_ERRORS
)
def list_workflows(operator: OperatorDep, interlock: InterlockDep) -> list[WorkflowSummary]:
    """Workflows loaded on this server that the operator holds any role for."""
    return [
        WorkflowSummary(**_summary(rt, _state(interlock, rt.name)))
        for rt in sorted(interlock.workflows, key=lambda r: r.name)
        if any(operator.can(role, rt.name) for role in ALL_ROLES)
    ]


@router.get(
    "/workflows/{name}",
    response_model=WorkflowDetail,
    tags=["workflows"],
    responses={**_OPERATOR_ERRORS, **_NOT_FOUND, **error_responses(422)},
)
def get_workflow(name: NamePath, operator: OperatorDep, interlock: InterlockDep) -> WorkflowDetail:
    """The operating model at a glance: objective, agents, grants, what runs alone, what needs
    review, what is forbidden, stop rules, budgets, approvals and who may pause."""
    runtime = interlock.runtime(name)
    require_any_role(operator, ALL_ROLES, name)
    m = runtime.manifest
    return WorkflowDetail(
        **_summary(runtime, _state(interlock, name)),
        policy_version=runtime.compiled.sha256,
        success_metric=m.success_metric,
        out_of_scope=list(m.out_of_scope),
        agent_specs=list(m.agents),
        roles=dict(m.roles),
        tool_specs=[
            ToolSummary(name=s.name, description=s.description, verb=s.verb, traits=list(s.traits))
            for s in m.tools
        ],
        rules=m.rules,
        stop_rules=list(m.stop_rules),
        budgets=m.budgets,
        approvals=m.approvals,
        confidence=m.confidence,
        pause_owners=list(m.pause_owners),
    )


def _may_pause(operator: Operator, runtime: WorkflowRuntime) -> None:
    if operator.id in runtime.manifest.pause_owners:
        return
    require_any_role(operator, ("owner", "admin"), runtime.name)


def _set_paused(
    name: str, operator: Operator, interlock: Interlock, body: PauseRequest | None, *, paused: bool
) -> WorkflowState:
    runtime = interlock.runtime(name)
    _may_pause(operator, runtime)
    interlock.set_paused(name, paused=paused, actor=actor(operator), reason=body.reason if body else None)
    return _state(interlock, name)


@router.post(
    "/workflows/{name}/pause",
    response_model=WorkflowState,
    tags=["workflows"],
    responses={**_OPERATOR_ERRORS, **_NOT_FOUND, **_BODY_ERRORS},
)
def pause_workflow(
    name: NamePath, operator: OperatorDep, interlock: InterlockDep, body: PauseRequest | None = None
) -> WorkflowState:
    """Kill switch: every process sharing the database refuses the workflow's next action.

    Allowed to owners and admins of the workflow and to operators listed in its ``pause_owners``.
    """
    return _set_paused(name, operator, interlock, body, paused=True)


@router.post(
    "/workflows/{name}/resume",
    response_model=WorkflowState,
    tags=["workflows"],
    responses={**_OPERATOR_ERRORS, **_NOT_FOUND, **_BODY_ERRORS},
)
def resume_workflow(
    name: NamePath, operator: OperatorDep, interlock: InterlockDep, body: PauseRequest | None = None
) -> WorkflowState:
    """Lift the kill switch (same people as pause)."""
    return _set_paused(name, operator, interlock, body, paused=False)


# ---- agents --------------------------------------------------------------------------------------


def _agent_info(record: AgentRecord) -> AgentInfo:
    return AgentInfo(
        id=record.id,
        workflow=record.workflow,
        environment=record.environment,
        status=record.status,
        created_at=record.created_at,
        revoked_at=record.revoked_at,
        revoked_by=record.revoked_by,
        last_seen_at=record.last_seen_at,
    )


_AGENT_ADMINS = ("admin", "owner")


@router.get(
    "/agents",
    response_model=list[AgentInfo],
    tags=["agents admin"],
    responses={**_OPERATOR_ERRORS, **error_responses(422)},
)
def list_agents(
    operator: OperatorDep,
    interlock: InterlockDep,
    workflow: WorkflowQuery = None,
) -> list[AgentInfo]:
    """Agents (revoked ones included) of the workflows the operator administers or owns."""
    if workflow is not None:
        require_any_role(operator, _AGENT_ADMINS, workflow)
    elif not set(_AGENT_ADMINS).intersection(operator.roles):
        require_any_role(operator, _AGENT_ADMINS, None)  # raises, naming the roles needed
    return [
        _agent_info(record)
        for record in interlock.agents.list(workflow)
        if any(operator.can(role, record.workflow) for role in _AGENT_ADMINS)
    ]


@router.post(
    "/agents",
    status_code=201,
    response_model=AgentCreated,
    tags=["agents admin"],
    responses={**_OPERATOR_ERRORS, **_NOT_FOUND, **_BODY_ERRORS, **error_responses(409)},
)
def create_agent(body: CreateAgentRequest, operator: OperatorDep, interlock: InterlockDep) -> AgentCreated:
    """Create an agent for a loaded workflow; the response holds its client secret, shown only once."""
    require_any_role(operator, ("admin",), body.workflow)
    runtime = interlock.runtime(body.workflow)
    if body.environment not in runtime.manifest.environments:
        raise ArgumentsInvalid(
            f"environment {body.environment!r} is not one of {body.workflow}'s: "
            + ", ".join(runtime.manifest.environments),
            field="environment",
        )
    creds = interlock.agents.create(
        body.id, workflow=body.workflow, environment=body.environment, actor=actor(operator)
    )
    record = interlock.agents.get(creds.client_id)
    return AgentCreated(
        **_agent_info(record).model_dump(), client_id=creds.client_id, client_secret=creds.client_secret
    )


@router.post(
    "/agents/{agent_id}/revoke",
    response_model=AgentInfo,
    tags=["agents admin"],
    responses={**_OPERATOR_ERRORS, **_NOT_FOUND, **_BODY_ERRORS},
)
def revoke_agent(
    agent_id: NamePath, operator: OperatorDep, interlock: InterlockDep, body: RevokeAgentRequest | None = None
) -> AgentInfo:
    """Revoke an agent: no new tokens, and tokens already issued fail on their next use."""
    record = interlock.agents.get(agent_id)
    require_any_role(operator, _AGENT_ADMINS, record.workflow)
    revoked = interlock.agents.revoke(agent_id, actor=actor(operator), reason=body.reason if body else None)
    return _agent_info(revoked)


# ---- audit ---------------------------------------------------------------------------------------


@router.get("/audit/verify", response_model=AuditReport, tags=["audit"], responses=_OPERATOR_ERRORS)
def verify_audit(operator: OperatorDep, interlock: InterlockDep) -> AuditReport:
    """Recompute the whole hash chain. A broken chain is a 200 with ``ok: false`` and the first bad
    event: the request succeeded, the log did not."""
    if not (operator.can("auditor") or operator.can("admin")):
        raise PermissionDenied(
            f"operator {operator.id!r} needs the auditor or admin role on every workflow to verify the log",
            details={"operator_id": operator.id, "roles": ["auditor", "admin"]},
        )
    report = interlock.verify_audit()
    return AuditReport(**report.as_dict(), message=report.message)


# ---- probes ---------------------------------------------------------------------------------------


@probes.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up and serving HTTP."""
    return Health()


@probes.get("/readyz", response_model=Readiness, responses={503: {"model": ErrorResponse}})
def readyz(interlock: InterlockDep) -> Response:
    """Ready to serve agents: the database answers and at least one workflow is loaded."""
    try:
        interlock.ping()
    except InterlockError:
        return _not_ready("database", "the database is not answering")
    names = sorted(rt.name for rt in interlock.workflows)
    if not names:
        return _not_ready("workflows", "no workflow is loaded")
    return Response(Readiness(workflows=names).model_dump_json(), media_type="application/json")


def _not_ready(check: str, message: str) -> Response:
    return JSONResponse(
        error_body("not_ready", message, check=check), status_code=503, headers={"Retry-After": "1"}
    )


@probes.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}
    },
)
def metrics_endpoint(metrics: MetricsDep, interlock: InterlockDep) -> Response:
    """Prometheus metrics: the pipeline's (actions by workflow, tool, decision and status; latency by
    tool; spend; approvals pending) and the HTTP layer's (refusals, runs started, token requests)."""
    text = generate_latest(interlock.metrics.registry) + generate_latest(metrics.registry)
    return Response(text, media_type=CONTENT_TYPE_LATEST)


__all__ = ["probes", "router"]
