"""Runs and actions: the agent's side of the pipeline over HTTP.

An action's HTTP status follows its outcome, and the body always carries the full recorded
``ActionResult`` (decision, reasons, step), so a client can branch on the status code alone:

====================  ======  ===================  =============================================
outcome (``status``)  HTTP    ``error.code``       notes
====================  ======  ===================  =============================================
executed              200     —                    body is the ActionResult (``result`` inside)
pending_approval      202     —                    body is the ActionResult with ``approval_id``
denied                403     ``denied``           policy, grants, pause or fail-closed reasons
escalated             409     ``escalated``        a stop rule handed the run to a person; the
                                                   run is no longer running, so retrying it
                                                   conflicts with the run's state
invalid               422     ``invalid_arguments``  ``error.field`` names the offending field
limited               429     ``limited``          ``Retry-After`` when the limit will reset
failed                502     ``upstream_error``   the tool ran and its upstream failed
outcome_unknown       504     ``outcome_unknown``  the call was cut off (its server died); a
                                                   person resolves it; the same key then
                                                   answers their resolution
====================  ======  ===================  =============================================

Non-2xx bodies are ``{"error": {"code", "message", ...}, "action": <ActionResult>}``. Errors that
happen before any decision (no or bad token 401, unknown run 404, an idempotency key reused with
other arguments or still executing 409) use the plain error shape without ``action``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response

from interlock._internal.api.deps import (
    ALL_ROLES,
    AgentTokenDep,
    CallerDep,
    InterlockDep,
    MetricsDep,
    OperatorDep,
    require_any_role,
)
from interlock._internal.api.errors import JSON_MEDIA_TYPE, json_bytes, retry_after_header
from interlock._internal.api.schemas import (
    TOTAL_HEADER,
    ActionErrorResponse,
    ActionRequest,
    ErrorResponse,
    FinishRunRequest,
    RunIdPath,
    StartRunRequest,
    WorkflowQuery,
    error_responses,
    text_filter,
)
from interlock._internal.gateway.models import ActionResult, ModelCall, ModelCallResult, Run, RunView
from interlock._internal.identity.operators import Operator
from interlock._internal.permissions import visible_workflows
from interlock.exceptions import ArgumentsInvalid, InterlockError, NotFound

router = APIRouter(prefix="/v1", tags=["runs"])

# outcome → (HTTP status, error code); 2xx outcomes have no error code.
ACTION_STATUS: dict[str, tuple[int, str | None]] = {
    "executed": (200, None),
    "pending_approval": (202, None),
    "denied": (403, "denied"),
    "escalated": (409, "escalated"),
    "invalid": (422, "invalid_arguments"),
    "limited": (429, "limited"),
    "failed": (502, "upstream_error"),
    "outcome_unknown": (504, "outcome_unknown"),
}


def action_payload(result: ActionResult) -> tuple[int, bytes, dict[str, str]]:
    """The HTTP form of one action outcome as status, JSON body and extra headers (see the module
    docstring for the table); the route and the lean path in :mod:`.hot_routes` both send it."""
    status, code = ACTION_STATUS[result.status]
    if code is None:
        return status, json_bytes(result), {}
    reasons = result.decision.reasons
    message = (
        result.error
        if result.status == "failed" and result.error
        else (reasons[0].message if reasons else result.status)
    )
    details: dict[str, Any] = {"reasons": [r.model_dump(mode="json", exclude_none=True) for r in reasons]}
    headers: dict[str, str] = {}
    if result.status == "invalid":
        details["field"] = next((r.field for r in reasons if r.field), "arguments")
    if result.status == "limited":
        details["retry_after"] = result.retry_after
        headers.update(retry_after_header(result.retry_after))
    # The one error shape (error_body) built directly: the details are JSON values already.
    error = {"code": code, "message": message, **details}
    envelope = {"error": error, "action": result.model_dump(mode="json")}
    return status, json_bytes(envelope), headers


def action_response(result: ActionResult) -> Response:
    """The HTTP form of one action outcome (see the module docstring for the table)."""
    status, body, headers = action_payload(result)
    return Response(body, status_code=status, headers=headers, media_type=JSON_MEDIA_TYPE)


@router.post(
    "/runs",
    status_code=201,
    response_model=Run,
    summary="Start a run",
    responses=error_responses(400, 401, 403, 404, 409, 422),
)
def start_run(
    token: AgentTokenDep,
    interlock: InterlockDep,
    metrics: MetricsDep,
    response: Response,
    body: StartRunRequest | None = None,
) -> Run:
    """Start one run of the caller's workflow; every action then names this run."""
    run = interlock.start_run(
        token,
        trigger=body.trigger if body is not None else None,
        started_by=body.started_by if body is not None else None,
        package=body.package if body is not None else None,
    )
    metrics.runs_started.labels(workflow=run.workflow).inc()
    response.headers["Location"] = f"/v1/runs/{run.id}"
    return run


@router.post(
    "/runs/{run_id}/actions",
    response_model=ActionResult,
    summary="Submit an action",
    responses={
        202: {"model": ActionResult, "description": "Waiting for a person to approve (see approval_id)."},
        403: {"model": ActionErrorResponse, "description": "Denied (reasons say why)."},
        409: {
            "model": ActionErrorResponse | ErrorResponse,
            "description": "Escalated to a person, or an idempotency key reused or still executing.",
        },
        422: {
            "model": ActionErrorResponse | ErrorResponse,
            "description": "Arguments fail the tool's schema.",
        },
        429: {"model": ActionErrorResponse, "description": "A budget, cap or rate limit was reached."},
        502: {"model": ActionErrorResponse, "description": "The tool ran and its upstream failed."},
        504: {
            "model": ActionErrorResponse,
            "description": "Outcome unknown: the call was cut off when its server stopped; a person "
            "resolves it, and a retry with the same idempotency key then gets their answer.",
        },
        **error_responses(400, 401, 404),
    },
)
def submit_action(
    run_id: RunIdPath,
    body: ActionRequest,
    token: AgentTokenDep,
    interlock: InterlockDep,
    metrics: MetricsDep,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200)
    ] = None,
) -> Response:
    """Send one intent through the pipeline: decided, executed when allowed, and recorded either way."""
    if (
        idempotency_key is not None
        and body.idempotency_key is not None
        and idempotency_key != body.idempotency_key
    ):
        raise ArgumentsInvalid(
            "the Idempotency-Key header and the body's idempotency_key differ", field="idempotency_key"
        )
    key = body.idempotency_key if body.idempotency_key is not None else idempotency_key
    try:
        result = interlock.act(
            token,
            run_id,
            body.tool,
            body.arguments,
            idempotency_key=key,
            reasoning=body.reasoning,
            confidence=body.confidence,
            evidence=body.evidence,
        )
    except InterlockError as exc:
        metrics.action_errors.labels(code=exc.code).inc()
        raise
    return action_response(result)


@router.post(
    "/runs/{run_id}/model-calls",
    response_model=ModelCallResult,
    summary="Report a model call",
    responses=error_responses(400, 401, 404, 422),
)
def report_model_call(
    run_id: RunIdPath, body: ModelCall, token: AgentTokenDep, interlock: InterlockDep
) -> ModelCallResult:
    """Count a model call's tokens and cost against the run's, agent's and workflow's budgets.

    The cost is ``cost_usd`` when given, else priced from the manifest's or the server's price
    table; a call that passes a budget is recorded and stops the run (``run_state``, ``reasons``).
    With ``task``, the model is checked against that task class's tier: off tier, it is flagged
    (``model_off_tier``) or refused (``model_refused``: recorded, and the run stops)."""
    return interlock.report_model_call(
        token,
        run_id,
        model=body.model,
        input_tokens=body.input_tokens,
        output_tokens=body.output_tokens,
        cost_usd=body.cost_usd,
        duration_ms=body.duration_ms,
        task=body.task,
    )


@router.post(
    "/runs/{run_id}/finish",
    response_model=Run,
    summary="End a run",
    responses=error_responses(400, 401, 404, 409, 422),
)
def finish_run(
    run_id: RunIdPath, body: FinishRunRequest, token: AgentTokenDep, interlock: InterlockDep
) -> Run:
    """The agent ends its run as ``completed`` or ``failed``; its locks and concurrency slot free up."""
    return interlock.finish_run(token, run_id, state=body.state, reason=body.reason)


@router.get(
    "/runs",
    response_model=list[Run],
    summary="List and search runs",
    responses=error_responses(401, 422),
)
def list_runs(
    operator: OperatorDep,
    interlock: InterlockDep,
    response: Response,
    workflow: WorkflowQuery = None,
    agent: Annotated[str | None, text_filter("Only this agent's.")] = None,
    tool: Annotated[str | None, text_filter("Only runs with a step on this tool.")] = None,
    state: Annotated[
        str | None, Query(pattern=r"^(running|completed|failed|escalated|stopped)$", description="Run state.")
    ] = None,
    q: Annotated[str | None, text_filter("Text in the run id, agent or trigger.")] = None,
    offset: Annotated[int, Query(ge=0, le=10**7, description="Skip this many (pagination).")] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[Run]:
    """Runs of the loaded workflows the operator holds a role for, newest first. Every filter and
    the page are applied after that permission filter, inside the query: ``X-Total-Count`` is how
    many match in all, so ``offset`` pages through exactly them."""
    names = visible_workflows(interlock, operator)
    if workflow is not None:
        names = [workflow] if workflow in names else []
    runs, total = interlock.runs.search(
        workflows=names, agent=agent, tool=tool, state=state, text=q, offset=offset, limit=limit
    )
    response.headers[TOTAL_HEADER] = str(total)
    return runs


@router.get(
    "/runs/{run_id}",
    response_model=RunView,
    summary="A run and its ordered steps",
    responses=error_responses(401, 404, 422),
)
def get_run(run_id: RunIdPath, caller: CallerDep, interlock: InterlockDep) -> RunView:
    """The run's timeline. The agent that owns the run may read it, and so may an operator with any
    role on its workflow; to anyone else it does not exist."""
    view = interlock.get_run(run_id)
    if isinstance(caller, Operator):
        try:
            require_any_role(caller, ALL_ROLES, view.workflow)
        except InterlockError:
            raise NotFound(f"unknown run {run_id!r}", code="unknown_run") from None
    elif caller.agent_id != view.agent_id:
        raise NotFound(f"unknown run {run_id!r}", code="unknown_run")
    return view


__all__ = ["ACTION_STATUS", "action_payload", "action_response", "router"]
