"""Agents' own endpoints: the OAuth2 token exchange and the list of tools an agent may use.

The token endpoint follows RFC 6749 (§2.3.1 client authentication, §4.4 client credentials,
§5 responses), including its error shape ``{"error": "invalid_client", "error_description": …}``,
because that is what OAuth client libraries parse. It is the one route whose errors do not use
the API's ``{"error": {"code", "message"}}`` shape.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from functools import partial
from urllib.parse import unquote_plus

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from interlock._internal.api.deps import AgentDep, ApiMetrics, InterlockDep, MetricsDep
from interlock._internal.api.oauth import canonical_url, issuer_url, request_base_url, resources
from interlock._internal.api.schemas import OAuthError, TokenResponse, ToolInfo, error_responses
from interlock._internal.identity.backoff import Blocked
from interlock.exceptions import AuthenticationError

router = APIRouter()

GRANT_TYPE = "client_credentials"
_MAX_CREDENTIAL_CHARS = 1024
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    headers = dict(_NO_STORE)
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="interlock"'
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=headers
    )


def _backing_off(metrics: ApiMetrics, blocked: Blocked, *, counted: bool = False) -> JSONResponse:
    """429 with Retry-After (RFC 6585 §4); the body keeps OAuth's error shape for client libraries."""
    if not counted:
        metrics.token_requests.labels(outcome="backoff").inc()
        metrics.token_failures.labels(reason="backoff").inc()
    response = _oauth_error(
        429,
        "invalid_client",
        f"too many failed attempts for this client id; retry after {blocked.retry_after_header} s",
    )
    response.headers["Retry-After"] = blocked.retry_after_header
    return response


def _form_str(value: object) -> str | None:
    return value if isinstance(value, str) else None  # an uploaded file is not a credential


def _basic_credentials(request: Request) -> tuple[str, str] | str | None:
    """(client_id, secret) from HTTP Basic, ``None`` when absent, or a message when malformed."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return "malformed HTTP Basic credentials"
    user, sep, password = decoded.partition(":")
    if not sep:
        return "malformed HTTP Basic credentials"
    # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
    return unquote_plus(user), unquote_plus(password)


_TOKEN_FORM = {
    "type": "object",
    "required": ["grant_type"],
    "properties": {
        "grant_type": {"type": "string", "enum": [GRANT_TYPE]},
        "client_id": {"type": "string", "maxLength": _MAX_CREDENTIAL_CHARS, "pattern": r"^[^\x00]*$"},
        "client_secret": {"type": "string", "maxLength": _MAX_CREDENTIAL_CHARS, "pattern": r"^[^\x00]*$"},
        "scope": {"type": "string", "description": "Ignored: a token's scope is its agent's."},
        "resource": {
            "type": "string",
            "description": (
                "RFC 8707: the URL of the resource the token is for (this server's /mcp, /v1 or "
                "its base URL); the token is then good only there. May be repeated."
            ),
        },
    },
}


def _resources(request: Request, values: Sequence[object]) -> list[str] | str:
    """The RFC 8707 resources asked for, in canonical spelling, or a message naming a bad one."""
    known = set(resources(request_base_url(request, request.app.state.interlock.settings)).values())
    found: list[str] = []
    for value in values:
        try:
            resource = canonical_url(value) if isinstance(value, str) else ""
        except ValueError:
            resource = ""
        if resource not in known:
            return f"unknown resource {str(value)[:200]!r}; this server protects {', '.join(sorted(known))}"
        found.append(resource)
    return found


@router.post(
    "/oauth/token",
    response_model=TokenResponse,
    tags=["agents"],
    summary="Exchange client credentials for an access token",
    responses={400: {"model": OAuthError}, 401: {"model": OAuthError}, 429: {"model": OAuthError}},
    # The form is read by hand so that every problem with it gets OAuth's error shape.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/x-www-form-urlencoded": {"schema": _TOKEN_FORM}},
        }
    },
)
async def issue_token(request: Request, interlock: InterlockDep, metrics: MetricsDep) -> JSONResponse:
    """OAuth2 client credentials (form-encoded; the client may authenticate with HTTP Basic instead).

    The token is an Ed25519-signed JWT scoped to the agent's workflow and environment; send it as
    ``Authorization: Bearer <token>`` to the agent endpoints.
    """
    try:
        form = await request.form()
    except (StarletteHTTPException, ValueError):  # a body that is not a parsable form
        metrics.token_requests.labels(outcome="invalid_request").inc()
        return _oauth_error(400, "invalid_request", "the body must be application/x-www-form-urlencoded")
    grant_type, client_id, client_secret = (
        _form_str(form.get(k)) for k in ("grant_type", "client_id", "client_secret")
    )
    if not grant_type:
        metrics.token_requests.labels(outcome="invalid_request").inc()
        return _oauth_error(400, "invalid_request", "grant_type is required (client_credentials)")
    if grant_type != GRANT_TYPE:
        metrics.token_requests.labels(outcome="unsupported_grant_type").inc()
        return _oauth_error(400, "unsupported_grant_type", f"only grant_type={GRANT_TYPE} is supported")
    basic = _basic_credentials(request)
    if isinstance(basic, str):
        metrics.token_requests.labels(outcome="invalid_client").inc()
        return _oauth_error(401, "invalid_client", basic)
    if basic is not None and client_secret is not None:
        metrics.token_requests.labels(outcome="invalid_request").inc()
        return _oauth_error(400, "invalid_request", "authenticate with HTTP Basic or the form, not both")
    if basic is not None:
        if client_id is not None and client_id != basic[0]:
            metrics.token_requests.labels(outcome="invalid_request").inc()
            return _oauth_error(400, "invalid_request", "client_id differs from the HTTP Basic user")
        client_id, client_secret = basic
    if not client_id or not client_secret:
        metrics.token_requests.labels(outcome="invalid_client").inc()
        return _oauth_error(401, "invalid_client", "client authentication is required")
    too_long = len(client_id) > _MAX_CREDENTIAL_CHARS or len(client_secret) > _MAX_CREDENTIAL_CHARS
    # No credential holds NUL, and PostgreSQL could not even look one up.
    if too_long or "\x00" in client_id or "\x00" in client_secret:
        metrics.token_requests.labels(outcome="invalid_client").inc()
        return _oauth_error(401, "invalid_client", "invalid client credentials")
    bound = _resources(request, form.getlist("resource"))
    if isinstance(bound, str):
        metrics.token_requests.labels(outcome="invalid_target").inc()
        return _oauth_error(400, "invalid_target", bound)
    backoff = interlock.token_backoff
    # Refused before the secret is checked: a guess made during a back-off learns nothing.
    blocked = await run_in_threadpool(backoff.blocked, client_id)
    if blocked is not None:
        return _backing_off(metrics, blocked)
    try:
        token = await run_in_threadpool(
            partial(
                interlock.issue_token,
                client_id,
                client_secret,
                resources=bound,
                issuer=issuer_url(request),
            )
        )
    except AuthenticationError as exc:
        metrics.token_requests.labels(outcome="invalid_client").inc()
        metrics.token_failures.labels(reason="invalid_client").inc()
        blocked = await run_in_threadpool(backoff.failed, client_id)
        if blocked is not None:
            return _backing_off(metrics, blocked, counted=True)
        return _oauth_error(401, "invalid_client", exc.message)
    await run_in_threadpool(backoff.succeeded, client_id)
    metrics.token_requests.labels(outcome="issued").inc()
    body = TokenResponse(access_token=token.token, expires_in=token.expires_in())
    return JSONResponse(body.model_dump(mode="json"), headers=_NO_STORE)


@router.get(
    "/v1/tools",
    response_model=list[ToolInfo],
    tags=["agents"],
    summary="Tools the caller may use",
    responses=error_responses(401, 404),
)
def list_tools(agent: AgentDep, interlock: InterlockDep) -> list[ToolInfo]:
    """The tools the agent's roles are granted, minus those a rule forbids outright.

    A tool listed here may still be denied or sent for approval depending on its arguments.
    """
    # The MCP gateway's rule, so tools/list and GET /v1/tools always agree.
    from interlock._internal.policy.visibility import visible_tools

    runtime = interlock.runtime(agent.workflow)
    return [
        ToolInfo(
            name=spec.name,
            description=spec.description,
            verb=spec.verb,
            traits=list(spec.traits),
            input_schema=spec.input_schema,
        )
        for spec in visible_tools(runtime, agent.agent_id, environment=agent.environment)
    ]


__all__ = ["router"]
