"""The MCP gateway: agents speak MCP (streamable HTTP) to Interlock instead of to the tools.

One ASGI app, meant for ``/mcp``. Before any MCP is spoken:

- a request whose ``Origin`` or ``Host`` is not allowed (``mcp.allowed_origins`` and
  ``mcp.allowed_hosts``; loopback and ``server.public_url`` always are) gets ``403``, against DNS
  rebinding (MCP transports, "Security Warning");
- every request must carry the agent's access token (``Authorization: Bearer …``), for this
  resource if it names one (RFC 8707); without a valid one the answer is ``401`` with a Bearer
  challenge whose ``resource_metadata`` points at RFC 9728 metadata, from which OAuth clients
  find ``POST /oauth/token`` (see :mod:`interlock._internal.api.oauth`).

Then:

- ``tools/list`` shows the tools of the agent's workflow that policy lets it see
  (:func:`visible_tools`), ``mcp.page_size`` at a time with an opaque cursor; a cursor this
  gateway did not hand out for the current manifest version is a ``-32602`` error;
- a verifier agent (the manifest's ``verification.verifiers``) also sees three tools of
  Interlock's own, ``interlock.verifications.list``, ``.get`` and ``.verdict``: the requests
  routed to it, each with its decision package, and its verdict (see :mod:`.mcp_verifier`);
- ``tools/call`` of a tool the agent cannot see, because it does not exist or because policy
  hides it, is the same ``-32602`` protocol error ("Unknown tool"): the two are
  indistinguishable. A visible tool's call submits an :class:`Intent` to the one pipeline. A
  denial, an invalid argument or a failed upstream is a tool error result (``isError: true``)
  whose text gives the reasons; ``require_approval`` is a normal result saying the action awaits
  approval, with its id; an executed action returns the tool's result as text plus
  ``structuredContent``.

Streams are resumable (with one serving process; ``interlock serve --workers N`` answers without
sessions, since the next request may reach another process): each SSE response to a POST starts
with a priming event (an event id and ``retry: mcp.sse_retry_ms``), and a client whose stream
drops reconnects with ``Last-Event-ID`` to receive what it missed
(:mod:`interlock._internal.api.mcp_events`: per session, in this replica's memory).

Which run a call belongs to, first match wins:

1. ``params._meta["interlock/run_id"]`` on the call;
2. the ``Interlock-Run-Id`` HTTP header;
3. an implicit run, started on the first call (trigger ``{"source": "mcp"}``) and reused: one per
   MCP session (``Mcp-Session-Id``, handshake-era clients), or one per access token on
   sessionless 2026-07-28 connections. A fresh token therefore starts a fresh run.

The call's ``_meta`` may also carry ``interlock/idempotency_key``, ``interlock/reasoning``,
``interlock/confidence`` and ``interlock/evidence``. Every result's ``_meta`` names the
``interlock/run_id``, ``interlock/step_id`` and ``interlock/status`` (and ``interlock/approval_id``).

Mounting (the session manager's task group must run for the app's lifetime)::

    gateway = build_mcp_app(interlock)

    @asynccontextmanager
    async def lifespan(app):
        async with gateway.lifespan():
            yield

    app = FastAPI(lifespan=lifespan)
    app.add_route("/mcp", gateway, include_in_schema=False)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache, partial
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from pydantic import TypeAdapter, ValidationError
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from interlock import __version__
from interlock._internal.api.mcp_events import ResumableSessionManager
from interlock._internal.api.mcp_verifier import NAMES as VERIFIER_TOOLS
from interlock._internal.api.mcp_verifier import call_verifier_tool, verifier_tools
from interlock._internal.api.oauth import (
    MCP_PATH,
    canonical_url,
    mcp_audience,
    resource_metadata_url,
    scope_base_url,
)
from interlock._internal.gateway.decide import Intent
from interlock._internal.gateway.models import ActionResult, Reason
from interlock._internal.gateway.runtime import WorkflowRuntime
from interlock._internal.identity.tokens import AgentPrincipal, authenticate_agent
from interlock._internal.manifest.models import ToolSpec
from interlock._internal.policy.visibility import visible_tools
from interlock._internal.settings import Settings
from interlock.exceptions import (
    ArgumentsInvalid,
    AuthenticationError,
    ConfigError,
    InterlockError,
    NotFound,
    StorageError,
)

if TYPE_CHECKING:
    from interlock._internal.service import Interlock

log = logging.getLogger("interlock.mcp_gateway")

RUN_META_KEY = "interlock/run_id"
IDEMPOTENCY_META_KEY = "interlock/idempotency_key"
REASONING_META_KEY = "interlock/reasoning"
CONFIDENCE_META_KEY = "interlock/confidence"
EVIDENCE_META_KEY = "interlock/evidence"
RUN_HEADER = "interlock-run-id"
_SESSION_HEADER_BYTES = b"mcp-session-id"
_RUN_HEADER_BYTES = RUN_HEADER.encode()
_PRINCIPAL = "interlock.principal"
_TOKEN = "interlock.token"
_MAX_IMPLICIT_RUNS = 10_000
_MAX_KEPT_RESOURCES = 64
_MAX_KEPT_USERS = 4096
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
# The agent of the request being handled, for lookups the SDK makes without a request context.
_CURRENT: ContextVar[AgentPrincipal | None] = ContextVar("interlock_mcp_principal", default=None)


def _annotations(spec: ToolSpec) -> types.ToolAnnotations:
    traits = set(spec.traits)
    return types.ToolAnnotations(
        read_only_hint=spec.verb == "read" and "write" not in traits,
        destructive_hint=spec.verb == "delete" or "irreversible" in traits,
        idempotent_hint=spec.idempotent,
        open_world_hint="external" in traits,
    )


@dataclass(frozen=True)
class _Catalogue:
    """What one agent sees, listed once per manifest version. A tool's MCP descriptor is rendered
    when a page first shows it, once per version for every agent: the first ``tools/list`` of a
    large catalogue renders one page, not the catalogue."""

    version: str
    tools: tuple[ToolSpec | types.Tool, ...]
    names: frozenset[str]
    rendered: dict[str, types.Tool]

    def page(self, start: int, end: int) -> list[types.Tool]:
        return [t if isinstance(t, types.Tool) else self._render(t) for t in self.tools[start:end]]

    def _render(self, spec: ToolSpec) -> types.Tool:
        found = self.rendered.get(spec.name)
        if found is None:
            found = self.rendered[spec.name] = types.Tool(
                name=spec.name,
                description=spec.description or None,
                input_schema=spec.input_schema,
                annotations=_annotations(spec),
            )
        return found


_NO_TOOLS = _Catalogue(version="", tools=(), names=frozenset(), rendered={})


def _catalogue(runtime: WorkflowRuntime | None, principal: AgentPrincipal) -> _Catalogue:
    if runtime is None:
        return _NO_TOOLS
    key = ("mcp_catalogue", principal.agent_id, principal.environment)
    found: _Catalogue | None = runtime.memo.get(key)
    if found is None:
        specs = visible_tools(runtime, principal.agent_id, environment=principal.environment)
        # A verifier agent also sees the tools that read and decide the requests routed to it.
        extra = verifier_tools(runtime, principal)
        taken = {tool.name for tool in extra}
        tools = tuple(spec for spec in specs if spec.name not in taken) + extra
        found = runtime.memo[key] = _Catalogue(
            version=runtime.version_id,
            tools=tools,
            names=frozenset(tool.name for tool in tools),
            rendered=runtime.memo.setdefault("mcp_rendered_tools", {}),
        )
    return found


def _cursor(version: str, offset: int) -> str:
    return base64.urlsafe_b64encode(f"{version}:{offset}".encode()).decode().rstrip("=")


def _offset(cursor: str, catalogue: _Catalogue) -> int:
    """Where ``cursor`` says the next page starts; -32602 for a cursor this gateway did not hand
    out for this catalogue (the manifest changed since, or it was never one)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, _, offset = raw.rpartition(":")
        start = int(offset)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        start, version = -1, ""
    if not version or version != catalogue.version or not 0 < start < len(catalogue.tools):
        raise MCPError(code=types.INVALID_PARAMS, message="Invalid cursor: list the tools again without one")
    return start


def _unknown_tool(name: str) -> MCPError:
    # The same answer whether the tool does not exist or policy hides it from this agent.
    return MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {name[:200]}")


# ---- who may speak to the gateway ---------------------------------------------------------------


@dataclass(frozen=True)
class _Allowlist:
    """Header values allowed exactly, or with any port (``…:*``), or all of them (``*``)."""

    exact: frozenset[str]
    any_port: frozenset[str]
    everything: bool = False

    @classmethod
    def of(cls, values: Iterable[str]) -> _Allowlist:
        exact, any_port, everything = set(), set(), False
        for value in (v.strip().lower().rstrip("/") for v in values):
            if value == "*":
                everything = True
            elif value.endswith(":*"):
                any_port.add(value[:-2])
                exact.add(value[:-2])
            elif value:
                exact.add(value)
        return cls(frozenset(exact), frozenset(any_port), everything)

    def allows(self, value: str) -> bool:
        value = value.strip().lower()
        if self.everything or value in self.exact:
            return True
        base, _, port = value.rpartition(":")
        return port.isdigit() and base in self.any_port


def _allowlists(settings: Settings) -> tuple[_Allowlist, _Allowlist]:
    """(hosts, origins) the gateway answers to."""
    hosts = [f"{h}:*" for h in _LOOPBACK_HOSTS]
    origins = [f"{scheme}://{h}:*" for h in _LOOPBACK_HOSTS for scheme in ("http", "https")]
    if settings.server.public_url:
        public = canonical_url(settings.server.public_url)
        scheme, _, rest = public.partition("://")
        netloc = rest.split("/", 1)[0]
        hosts.append(netloc)
        origins.append(f"{scheme}://{netloc}")
        if ":" not in netloc.rsplit("]", 1)[-1]:  # the default port, which browsers leave out
            hosts.append(f"{netloc}:{443 if scheme == 'https' else 80}")
    hosts.extend(settings.mcp.allowed_hosts)
    origins.extend(settings.mcp.allowed_origins)
    return _Allowlist.of(hosts), _Allowlist.of(origins)


def _forbidden(code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=403)


# ---- results ----------------------------------------------------------------------------------


@cache
def _content_adapter() -> TypeAdapter[types.ContentBlock]:
    return TypeAdapter(types.ContentBlock)


def _text(value: Any) -> types.TextContent:
    return types.TextContent(text=value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


def _object(value: Any) -> dict[str, Any]:
    # Handshake-era clients accept only an object as structuredContent.
    return value if isinstance(value, dict) else {"result": value}


def _reasons_text(reasons: list[Reason]) -> str:
    parts = []
    for reason in reasons:
        where = f"{reason.code}, {reason.policy_id}" if reason.policy_id else reason.code
        parts.append(f"{reason.message} [{where}]")
    return "; ".join(parts) or "no reason recorded"


def _executed_content(spec: ToolSpec | None, result: Any) -> tuple[list[types.ContentBlock], Any]:
    envelope = spec is not None and spec.upstream is not None and spec.upstream.kind == "mcp"
    if envelope and isinstance(result, dict) and isinstance(result.get("content"), list):
        blocks: list[types.ContentBlock] = []
        for item in result["content"]:
            try:
                blocks.append(_content_adapter().validate_python(item))
            except ValidationError:
                blocks.append(_text(item))
        structured = result.get("structured")
        return blocks, None if structured is None else _object(structured)
    return [_text(result)], _object(result)


def to_call_result(action: ActionResult, spec: ToolSpec | None) -> types.CallToolResult:
    """An :class:`ActionResult` as MCP sees it."""
    meta: dict[str, Any] = {RUN_META_KEY: action.run_id, "interlock/status": action.status}
    if action.step_id is not None:
        meta["interlock/step_id"] = action.step_id
    if action.approval_id is not None:
        meta["interlock/approval_id"] = action.approval_id
    decision = action.decision
    summary: dict[str, Any] = {
        "status": action.status,
        "decision": decision.decision,
        "run_id": action.run_id,
        "step_id": action.step_id,
        "reasons": [r.model_dump(exclude_none=True) for r in decision.reasons],
    }
    if action.status == "executed":
        blocks, structured = _executed_content(spec, action.result)
        return types.CallToolResult(content=blocks, structured_content=structured, meta=meta)
    if action.status == "pending_approval":
        text = (
            f"Awaiting approval: {decision.tool} has not run; a person must approve it first. "
            f"Approval id: {action.approval_id}. Why: {_reasons_text(decision.reasons)}"
        )
        summary["approval_id"] = action.approval_id
        return types.CallToolResult(content=[_text(text)], structured_content=summary, meta=meta)
    if action.status == "invalid":
        fields = [r for r in decision.reasons if r.code == "invalid_arguments"]
        text = "Invalid arguments: " + "; ".join(r.message for r in fields or decision.reasons)
    elif action.status == "failed":
        text = f"Failed: {decision.tool} was allowed but did not complete: {action.error or 'unknown error'}"
    elif action.status == "outcome_unknown":
        text = (
            f"Outcome unknown: {decision.tool} was in flight when its server stopped; it may have "
            "happened. Do not retry it with a new key: a person is resolving it, and a retry with "
            "the same key returns their answer."
        )
    elif action.status == "escalated":
        text = f"Escalated: the run waits for a person to take over. Why: {_reasons_text(decision.reasons)}"
    elif action.status == "limited":
        text = f"Limited: {_reasons_text(decision.reasons)}"
        if action.retry_after is not None:
            text += f" (retry after {action.retry_after:g}s)"
            summary["retry_after"] = action.retry_after
    else:
        text = f"Denied: {_reasons_text(decision.reasons)}"
    if action.error is not None:
        summary["error"] = action.error
    return types.CallToolResult(content=[_text(text)], structured_content=summary, is_error=True, meta=meta)


def _error_result(code: str, message: str) -> types.CallToolResult:
    return types.CallToolResult(
        content=[_text(f"{code}: {message}")],
        structured_content={"status": "error", "code": code, "message": message},
        is_error=True,
    )


# ---- the gateway ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Caller:
    principal: AgentPrincipal
    token: str
    session_id: str | None
    run_header: str | None


def _caller(ctx: ServerRequestContext[Any, Any]) -> _Caller:
    scope = getattr(ctx.request, "scope", None)
    if not isinstance(scope, dict) or not isinstance(scope.get(_PRINCIPAL), AgentPrincipal):
        # Only reachable if the app is served without its own authentication wrapper.
        raise MCPError(code=types.INVALID_REQUEST, message="unauthenticated: no agent on this request")
    session_id: str | None = None
    run_header: str | None = None
    for key, value in scope.get("headers", ()):  # ASGI header names are lower case
        if key == _SESSION_HEADER_BYTES:
            session_id = value.decode("latin-1")
        elif key == _RUN_HEADER_BYTES:
            run_header = value.decode("latin-1")
    principal, token = scope[_PRINCIPAL], scope[_TOKEN]
    return _Caller(principal=principal, token=token, session_id=session_id, run_header=run_header)


class McpGateway:
    """The ``/mcp`` ASGI app. Call it like any ASGI app; run :meth:`lifespan` around the server.

    Origin and Host are always checked against the settings (``mcp.allowed_origins``,
    ``mcp.allowed_hosts``). ``transport_security`` adds the SDK's own checks on top.
    """

    def __init__(
        self,
        interlock: Interlock,
        *,
        json_response: bool = False,
        transport_security: TransportSecuritySettings | None = None,
    ) -> None:
        self.interlock = interlock
        self.server: Server[Any] = Server(
            "interlock",
            version=__version__,
            instructions=(
                "Every tool call is an intent that Interlock checks against the workflow's policy: "
                "it may run, be denied with reasons, or wait for a person's approval."
            ),
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            # For the SDK's Mcp-Param header check of a tools/call: without it, the SDK pages
            # through this gateway's tools/list on every call to find the one tool's schema.
            get_tool_input_schema=self._input_schema,
        )
        # The SDK wraps every message in an OpenTelemetry span of the global tracer provider. The
        # span of record for a governed call is the pipeline's own, on Interlock's provider and
        # under the run's span (telemetry.tracing), which never took the SDK's span as parent:
        # that one was a second, unlinked span, paid for on every call.
        self.server.middleware = []
        settings = interlock.settings
        self._settings = settings
        self._hosts, self._origins = _allowlists(settings)
        self._page_size = settings.mcp.page_size
        self.session_manager = ResumableSessionManager(
            app=self.server,
            json_response=json_response,
            # Several worker processes share one port and the kernel hands each connection to any
            # of them, so a session kept in one worker's memory would be "not found" by the others:
            # answer every request on its own instead (no Mcp-Session-Id, hence no resumption).
            stateless=settings.server.workers > 1,
            # Built once: given None, the SDK builds a settings model on every request. The gateway
            # checks Host and Origin itself (above), so the SDK's check is off unless asked for.
            security_settings=transport_security
            or TransportSecuritySettings(enable_dns_rebinding_protection=False),
            retry_interval=settings.mcp.sse_retry_ms,
            resume_events=settings.mcp.resume_events,
        )
        self._resources: dict[tuple[str, bytes], tuple[str, frozenset[str]]] = {}
        self._users: dict[tuple[str, str], AuthenticatedUser] = {}
        self._runs: OrderedDict[tuple[str, ...], str] = OrderedDict()
        self._runs_lock = threading.Lock()
        self._start_lock = anyio.Lock()

    def lifespan(self) -> AbstractAsyncContextManager[None]:
        """Runs the MCP session manager; enter it once, in the host app's lifespan."""
        return self.session_manager.run()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served on its own (uvicorn gateway), not mounted
            await self._serve_lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        refusal = self._refuse_foreign(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        principal, token, problem = await self._authenticate(scope)
        if problem is not None:
            await problem(scope, receive, send)
            return
        assert principal is not None
        assert token is not None
        user = self._user(principal, token)
        # The session manager binds each MCP session to this user: another agent presenting the
        # session id gets 404. Keyed by agent, not token, so a refreshed token keeps the session.
        scope = {**scope, "user": user, _PRINCIPAL: principal, _TOKEN: token}
        caller = _CURRENT.set(principal)
        try:
            await self.session_manager.handle_request(scope, receive, send)
        finally:
            _CURRENT.reset(caller)

    def _user(self, principal: AgentPrincipal, token: str) -> AuthenticatedUser:
        """The SDK's user for an authenticated agent and token, kept: it is built of two models,
        and an agent presents the same token for many calls."""
        key = (principal.agent_id, token)
        user = self._users.get(key)
        if user is None:
            if len(self._users) >= _MAX_KEPT_USERS:
                self._users.clear()
            user = self._users[key] = AuthenticatedUser(
                AccessToken(token=token, client_id=principal.agent_id, scopes=[])
            )
        return user

    def _refuse_foreign(self, scope: Scope) -> JSONResponse | None:
        """403 for an Origin or Host this gateway does not answer to (DNS rebinding: a page on
        another site, or a name that resolves to this machine, must not reach local agents' tools)."""
        host: str | None = None
        origin: str | None = None
        for key, value in scope["headers"]:
            if key == b"host":
                host = value.decode("latin-1")
            elif key == b"origin":
                origin = value.decode("latin-1")
        if host is None or not self._hosts.allows(host):
            return _forbidden("host_not_allowed", "this Host is not served here (mcp.allowed_hosts)")
        if origin is not None and not self._origins.allows(origin):
            return _forbidden(
                "origin_not_allowed", "requests from this Origin are refused (mcp.allowed_origins)"
            )
        return None

    async def _authenticate(
        self, scope: Scope
    ) -> tuple[AgentPrincipal | None, str | None, JSONResponse | None]:
        base, audience = self._resource(scope)
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"authorization"), "")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            message = "an agent access token is required (Bearer)"
            metadata = resource_metadata_url(base, MCP_PATH)
            return None, None, _unauthorized("unauthenticated", message, metadata=metadata, presented=False)
        il = self.interlock
        try:
            # On the event loop, not in a worker thread: a signature check and one indexed read of
            # the agent's row cost less than the two thread crossings.
            principal = authenticate_agent(token, tokens=il.tokens, store=il.agents, resources=audience)
        except AuthenticationError as exc:
            metadata = resource_metadata_url(base, MCP_PATH)
            return None, None, _unauthorized(exc.code, exc.message, metadata=metadata)
        except InterlockError as exc:
            log.warning("MCP gateway could not authenticate: %s", exc)
            body = {"error": {"code": exc.code, "message": "authentication is unavailable; retry"}}
            return None, None, JSONResponse(body, status_code=503)
        return principal, token, None

    def _resource(self, scope: Scope) -> tuple[str, frozenset[str]]:
        """This server's address as the request names it, and the audiences (RFC 8707) its tokens
        may name; kept per scheme and Host, since canonicalising a URL costs more than the lookup."""
        host = next((v for k, v in scope["headers"] if k == b"host"), b"")
        key = (str(scope.get("scheme", "http")), host)
        found = self._resources.get(key)
        if found is None:
            base = scope_base_url(scope, self._settings)
            found = (base, mcp_audience(base))
            if len(self._resources) >= _MAX_KEPT_RESOURCES:  # Hosts with any port may be allowed
                self._resources.clear()
            self._resources[key] = found
        return found

    async def _serve_lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        async with self.lifespan():
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
        await send({"type": "lifespan.shutdown.complete"})

    # ---- MCP handlers ---------------------------------------------------------------------------

    def _input_schema(self, name: str) -> Mapping[str, Any] | None:
        """The input schema of a tool this request's agent can see; None for any other name
        (the call itself then answers "Unknown tool", the same for hidden and missing tools)."""
        principal = _CURRENT.get()
        if principal is None:
            return None
        runtime = self._runtime(principal)
        if runtime is None or name not in _catalogue(runtime, principal).names:
            return None
        return runtime.tool(name).spec.input_schema

    def _runtime(self, principal: AgentPrincipal) -> WorkflowRuntime | None:
        try:
            return self.interlock.runtime(principal.workflow)
        except NotFound:
            return None

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        caller = _caller(ctx)
        catalogue = _catalogue(self._runtime(caller.principal), caller.principal)
        cursor = params.cursor if params is not None else None
        start = 0 if cursor is None else _offset(cursor, catalogue)
        end = start + self._page_size
        more = end < len(catalogue.tools)
        return types.ListToolsResult(
            tools=catalogue.page(start, end),
            next_cursor=_cursor(catalogue.version, end) if more else None,
        )

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        caller = _caller(ctx)
        runtime = self._runtime(caller.principal)
        if params.name not in _catalogue(runtime, caller.principal).names:
            raise _unknown_tool(params.name)
        if params.name in VERIFIER_TOOLS and params.name in {
            t.name for t in verifier_tools(runtime, caller.principal)
        }:
            try:
                return await call_verifier_tool(
                    self.interlock, caller.principal, params.name, params.arguments or {}
                )
            except (StorageError, ConfigError) as exc:
                log.warning("MCP tools/call %s failed on the server: %s", params.name, exc)
                return _error_result(exc.code, "the server could not take this action now; retry shortly")
            except InterlockError as exc:
                return _error_result(exc.code, exc.message)
        meta: Mapping[str, Any] = params.meta or {}
        try:
            intent = _intent(params.name, params.arguments or {}, meta)
            run_id = await self._run_for(caller, meta)
            # On this request's loop, all the way to the upstream: an MCP session is awaited here.
            action = await self.interlock.pipeline.submit_async(
                caller.token, run_id, intent, principal=caller.principal
            )
        except (StorageError, ConfigError) as exc:
            # Server-side faults: their text can name hosts or files, so the agent gets a sentence.
            log.warning("MCP tools/call %s failed on the server: %s", params.name, exc)
            return _error_result(exc.code, "the server could not take this action now; retry shortly")
        except InterlockError as exc:
            return _error_result(exc.code, exc.message)
        tool = runtime.tools.get(params.name) if runtime is not None else None
        return to_call_result(action, tool.spec if tool is not None else None)

    async def _run_for(self, caller: _Caller, meta: Mapping[str, Any]) -> str:
        explicit = meta.get(RUN_META_KEY, caller.run_header)
        if explicit is not None:
            if not isinstance(explicit, str) or not explicit:
                raise _bad_meta(RUN_META_KEY, "a run id")
            return explicit  # the pipeline checks it is this agent's run
        agent = caller.principal.agent_id
        if caller.session_id is not None:
            key: tuple[str, ...] = ("session", agent, caller.session_id)
        else:
            key = ("token", agent, hashlib.sha256(caller.token.encode()).hexdigest())
        found = self._implicit(key)
        if found is not None:
            return found
        async with self._start_lock:
            found = self._implicit(key)
            if found is not None:
                return found
            run = await anyio.to_thread.run_sync(
                partial(self.interlock.start_run, caller.token, trigger={"source": "mcp"})
            )
            with self._runs_lock:
                self._runs[key] = run.id
                while len(self._runs) > _MAX_IMPLICIT_RUNS:
                    self._runs.popitem(last=False)
            return run.id

    def _implicit(self, key: tuple[str, ...]) -> str | None:
        with self._runs_lock:
            run_id = self._runs.get(key)
            if run_id is not None:
                self._runs.move_to_end(key)
            return run_id


def _bad_meta(key: str, expected: str) -> ArgumentsInvalid:
    return ArgumentsInvalid(f"_meta {key!r} must be {expected}", field=f"_meta.{key}")


def _intent(tool: str, arguments: Any, meta: Mapping[str, Any]) -> Intent:
    key = meta.get(IDEMPOTENCY_META_KEY)
    reasoning = meta.get(REASONING_META_KEY)
    confidence = meta.get(CONFIDENCE_META_KEY)
    evidence = meta.get(EVIDENCE_META_KEY)
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 200):
        raise _bad_meta(IDEMPOTENCY_META_KEY, "a string of 1-200 characters")
    if reasoning is not None and not isinstance(reasoning, str):
        raise _bad_meta(REASONING_META_KEY, "a string")
    number = isinstance(confidence, int | float) and not isinstance(confidence, bool)
    if confidence is not None and not (number and 0 <= confidence <= 1):
        raise _bad_meta(CONFIDENCE_META_KEY, "a number from 0 to 1")
    if evidence is not None and not (
        isinstance(evidence, list) and all(isinstance(e, str) for e in evidence)
    ):
        raise _bad_meta(EVIDENCE_META_KEY, "a list of strings")
    return Intent(
        tool=tool,
        arguments=arguments,
        idempotency_key=key,
        reasoning=reasoning,
        confidence=None if confidence is None else float(confidence),
        evidence=tuple(evidence) if evidence else None,
    )


def _unauthorized(code: str, message: str, *, metadata: str, presented: bool = True) -> JSONResponse:
    # RFC 9728 §5.1: the challenge names the resource's metadata, from which a client finds the
    # authorization server; RFC 6750 §3.1: no error attribute when no token was presented.
    challenge = f'Bearer realm="interlock", resource_metadata="{metadata}"'
    if presented:
        safe = message.replace('"', "'").encode("latin-1", "replace").decode("latin-1")
        challenge += f', error="invalid_token", error_description="{safe}"'
    return JSONResponse(
        {"error": {"code": code, "message": message}},
        status_code=401,
        headers={"WWW-Authenticate": challenge},
    )


def build_mcp_app(
    interlock: Interlock,
    *,
    json_response: bool = False,
    transport_security: TransportSecuritySettings | None = None,
) -> McpGateway:
    """The MCP gateway for ``interlock``: an ASGI app whose :meth:`~McpGateway.lifespan` must run
    while it serves. The lifespan runs once per gateway; build a new one for every app instance."""
    return McpGateway(interlock, json_response=json_response, transport_security=transport_security)


__all__ = ["McpGateway", "build_mcp_app", "to_call_result", "visible_tools"]
