"""What routes depend on: the Interlock, who is calling, and the app's metrics.

Two kinds of bearer token reach the API. Agents send a short-lived access token from
``POST /oauth/token`` (a JWT); operators send their long-lived API token (``ilop_…``) or, with
single sign-on configured, an ID token from the identity provider. Each is
declared as its own OpenAPI security scheme, and a token of the wrong kind is refused with a
message that says which one the endpoint wants, not a bare "invalid token".
"""

from __future__ import annotations

from typing import Annotated

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter

from interlock._internal.api.errors import MISSING_TOKEN
from interlock._internal.api.oauth import api_audience, request_base_url
from interlock._internal.identity.operators import Operator
from interlock._internal.identity.secrets import OPERATOR_TOKEN_PREFIX
from interlock._internal.identity.tokens import AgentPrincipal, authenticate_agent, check_audience
from interlock._internal.permissions import ALL_ROLES, actor, require_any_role
from interlock._internal.service import Interlock
from interlock.exceptions import AuthenticationError

WRONG_TOKEN_TYPE = "wrong_token_type"

agent_scheme = HTTPBearer(
    scheme_name="agentToken",
    bearerFormat="JWT",
    description="An agent access token from POST /oauth/token (client credentials).",
    auto_error=False,
)
operator_scheme = HTTPBearer(
    scheme_name="operatorToken",
    description="An operator API token (ilop_…) from `interlock operators create`.",
    auto_error=False,
)


class ApiMetrics:
    """What only the HTTP layer sees, in the app's own registry (two apps in a process never clash).

    Actions themselves (by workflow, tool, decision and status) and pipeline latency are counted
    by the pipeline for every interface, in ``Interlock.metrics``; ``/metrics`` serves both.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.action_errors = Counter(
            "interlock_http_action_errors",
            "Action requests refused before any decision (authentication, unknown run, idempotency).",
            ["code"],
            registry=self.registry,
        )
        self.runs_started = Counter(
            "interlock_http_runs_started",
            "Runs started over HTTP, by workflow.",
            ["workflow"],
            registry=self.registry,
        )
        self.token_requests = Counter(
            "interlock_http_token_requests",
            "OAuth client-credentials requests, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.token_failures = Counter(
            "interlock_http_token_failures",
            "Failed client-credential attempts at /oauth/token (wrong secret, unknown or revoked "
            "client: 'invalid_client'; refused during a back-off: 'backoff').",
            ["reason"],
            registry=self.registry,
        )


# Dependencies that do no I/O are `async def`: FastAPI runs plain `def` dependencies on the thread
# pool, and a thread hop per dependency per request costs more than the work itself.
async def get_interlock(request: Request) -> Interlock:
    interlock: Interlock = request.app.state.interlock
    return interlock


async def get_metrics(request: Request) -> ApiMetrics:
    metrics: ApiMetrics = request.app.state.metrics
    return metrics


def _bearer(credentials: HTTPAuthorizationCredentials | None, *, wants: str) -> str:
    if credentials is None or not credentials.credentials:
        raise AuthenticationError(
            f"missing bearer token: send 'Authorization: Bearer <{wants}>'", code=MISSING_TOKEN
        )
    return credentials.credentials


def _for_this_api(token: str, request: Request) -> None:
    """A token bound to another resource (RFC 8707, say the MCP gateway) is refused here."""
    interlock: Interlock = request.app.state.interlock
    claims = interlock.tokens.verify(token)  # cached after the first verification of a token
    check_audience(claims, api_audience(request_base_url(request, interlock.settings)))


async def agent_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(agent_scheme)],
    request: Request,
) -> str:
    """The raw agent access token, checked for its kind and audience: the pipeline authenticates it."""
    token = _bearer(credentials, wants="agent access token")
    if token.startswith(OPERATOR_TOKEN_PREFIX):
        raise AuthenticationError(
            "this is an operator token; agent endpoints take an access token from POST /oauth/token",
            code=WRONG_TOKEN_TYPE,
        )
    _for_this_api(token, request)
    return token


def current_agent(
    token: Annotated[str, Depends(agent_token)], interlock: Annotated[Interlock, Depends(get_interlock)]
) -> AgentPrincipal:
    return authenticate_agent(token, tokens=interlock.tokens, store=interlock.agents)


def _operator_from(token: str, interlock: Interlock) -> Operator:
    sso = interlock.oidc
    if (
        sso is not None
        and not token.startswith(OPERATOR_TOKEN_PREFIX)
        and _issued_by(token, sso.settings.issuer)
    ):
        return sso.authenticate_bearer(token)  # an ID token from the identity provider
    if not token.startswith(OPERATOR_TOKEN_PREFIX):
        raise AuthenticationError(
            f"operator endpoints take an operator API token ({OPERATOR_TOKEN_PREFIX}…), not an agent token",
            code=WRONG_TOKEN_TYPE,
        )
    return interlock.operators.authenticate(token)


def _issued_by(token: str, issuer: str | None) -> bool:
    """Whether a JWT claims to come from ``issuer`` (not verified here: the OIDC service does that)."""
    try:
        claimed = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError:
        return False
    return isinstance(claimed, str) and issuer is not None and claimed.rstrip("/") == issuer.rstrip("/")


def current_operator(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(operator_scheme)],
    interlock: Annotated[Interlock, Depends(get_interlock)],
) -> Operator:
    return _operator_from(_bearer(credentials, wants="operator API token"), interlock)


def agent_or_operator(
    agent_credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(agent_scheme)],
    operator_credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(operator_scheme)],
    interlock: Annotated[Interlock, Depends(get_interlock)],
    request: Request,
) -> AgentPrincipal | Operator:
    """Either kind of caller, told apart by the token's prefix (both schemes read one header)."""
    token = _bearer(agent_credentials or operator_credentials, wants="token")
    if token.startswith(OPERATOR_TOKEN_PREFIX):
        return _operator_from(token, interlock)
    _for_this_api(token, request)
    return authenticate_agent(token, tokens=interlock.tokens, store=interlock.agents)


InterlockDep = Annotated[Interlock, Depends(get_interlock)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]
AgentTokenDep = Annotated[str, Depends(agent_token)]
AgentDep = Annotated[AgentPrincipal, Depends(current_agent)]
OperatorDep = Annotated[Operator, Depends(current_operator)]
CallerDep = Annotated[AgentPrincipal | Operator, Depends(agent_or_operator)]

__all__ = [
    "ALL_ROLES",
    "AgentDep",
    "AgentTokenDep",
    "ApiMetrics",
    "CallerDep",
    "InterlockDep",
    "MetricsDep",
    "OperatorDep",
    "actor",
    "require_any_role",
]
