"""The app factory: one FastAPI app around one Interlock. Nothing happens at import time.

    app = create_app(Settings())                 # the app builds, starts and closes its Interlock
    app = create_app(interlock=il)               # embedding: the caller owns ``il``

Domain errors become HTTP responses in exactly one place, :func:`install_error_handlers`, which
this factory installs. The MCP gateway (``/mcp``) is mounted by :func:`mount_extras`. The
console (``/ui``) is another face: :func:`interlock._internal.server.create_app` mounts it on this
app, so neither face imports the other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from functools import partial

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from interlock import __version__
from interlock._internal.api import (
    oauth,
    routes_admin,
    routes_agents,
    routes_approvals,
    routes_notifications,
    routes_ops,
    routes_packages,
    routes_rollouts,
    routes_runs,
    routes_verifications,
)
from interlock._internal.api.body_limit import BodyLimit
from interlock._internal.api.deps import ApiMetrics
from interlock._internal.api.errors import install_error_handlers
from interlock._internal.api.hot_routes import HotRoutes
from interlock._internal.api.housekeeping import housekeeping
from interlock._internal.api.mcp_gateway import build_mcp_app
from interlock._internal.service import Interlock
from interlock._internal.settings import Settings

# Something the lifespan enters after Interlock has started and leaves before it closes (for
# instance the MCP session manager's ``run()``).
LifespanHook = Callable[[], AbstractAsyncContextManager[object]]

API_PREFIX = "/v1"
MCP_PATH = "/mcp"
UI_PATH = "/ui"


class InterlockApi(FastAPI):
    """FastAPI, with ``/mcp`` and the per-action routes answered before the middleware stack and
    the router: the MCP gateway checks its own Origin, Host and token, :class:`.HotRoutes` serves
    the ordinary action and model call and hands any other request back to FastAPI, and every
    request to them would otherwise pay for each middleware layer and a match against every REST
    route first."""

    mcp: ASGIApp | None = None
    hot: HotRoutes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if self.mcp is not None and scope["path"] == MCP_PATH:
                await self.mcp(scope, receive, send)
                return
            match = self.hot.match(scope) if self.hot is not None else None
            if match is not None:
                assert self.hot is not None
                await self.hot.serve(match, scope, receive, send, fallback=super().__call__)
                return
        await super().__call__(scope, receive, send)


def mount_extras(app: FastAPI, interlock: Interlock) -> list[LifespanHook]:
    """Mount what is not the REST API: the MCP gateway at ``/mcp``.

    Return the context managers the app's lifespan must run (the MCP streamable-HTTP session
    manager needs one).
    """
    gateway = build_mcp_app(interlock)
    if isinstance(app, InterlockApi):
        app.mcp = gateway
    # Also a route, for apps that are not an InterlockApi. A route, not a mount: a mount would
    # answer "/mcp" with a redirect to "/mcp/".
    # Starlette serves a non-function endpoint as a raw ASGI app; its annotation only knows handlers.
    app.add_route(MCP_PATH, gateway, include_in_schema=False)  # type: ignore[arg-type]
    return [gateway.lifespan, housekeeping(interlock)]


def create_api(
    settings: Settings | None = None, *, interlock: Interlock | None = None, migrate: bool = True
) -> FastAPI:
    """Build the HTTP app without the console (see :func:`interlock._internal.server.create_app`).

    Without ``interlock`` the app builds one from ``settings`` and owns it: the lifespan runs
    :meth:`Interlock.start` (migrate unless ``migrate=False``, load ``settings.manifests``) before
    serving and closes it on shutdown. A caller that passes ``interlock`` owns it instead and must
    have started it.
    """
    if interlock is not None and settings is not None and settings is not interlock.settings:
        raise ValueError("pass settings or interlock, not both")
    owned = interlock is None
    il = interlock if interlock is not None else Interlock(settings)
    hooks: list[LifespanHook] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            await run_in_threadpool(partial(il.start, migrate=migrate))
        try:
            async with AsyncExitStack() as stack:
                for hook in hooks:
                    await stack.enter_async_context(hook())
                yield
        finally:
            if owned:
                await run_in_threadpool(il.close)

    app = InterlockApi(
        title="Interlock",
        version=__version__,
        summary="Control plane for AI agent actions.",
        description=(
            "Agents obtain an access token at POST /oauth/token (client credentials), start a run, and "
            "submit actions; each action is decided by the workflow's policy, executed when allowed, and "
            "recorded. Operators use their API token for workflows, agents and the audit log. Every error "
            'is {"error": {"code", "message", ...}} (the token endpoint uses OAuth\'s own shape).'
        ),
        openapi_url="/openapi.json",
        # The interactive docs pages load JavaScript from a CDN; Interlock ships no third-party JS.
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.interlock = il
    app.state.metrics = ApiMetrics()
    install_error_handlers(app)
    app.include_router(routes_agents.router)
    app.include_router(oauth.router)
    app.include_router(routes_runs.router)
    app.include_router(routes_approvals.router)
    app.include_router(routes_verifications.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_admin.probes)
    app.include_router(routes_ops.router)
    app.include_router(routes_packages.router)
    app.include_router(routes_notifications.router)
    app.include_router(routes_rollouts.router)
    hooks.extend(mount_extras(app, il))
    server = il.settings.server
    app.add_middleware(BodyLimit, max_bytes=server.max_body_bytes)
    app.hot = HotRoutes(
        il, app.state.metrics, max_body_bytes=server.max_body_bytes, pipeline_threads=server.pipeline_threads
    )
    hooks.append(app.hot.lifespan)
    return app


__all__ = ["API_PREFIX", "MCP_PATH", "UI_PATH", "InterlockApi", "LifespanHook", "create_api", "mount_extras"]
