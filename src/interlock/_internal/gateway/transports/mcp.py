"""MCP servers as tool upstreams: pooled client sessions on one background event loop.

An MCP client session is asynchronous and must stay on the loop that opened it. All of one
transport's sessions live on one loop, each inside a long-lived *owner task* that enters the SDK
client and holds it open until the session is retired. Which loop: the running loop of the first
coroutine that calls :meth:`McpTransport.call_async` (the server's, behind the MCP gateway), so
the gateway's calls await the upstream where they run, with no thread or loop crossing; when a
synchronous caller comes first (the library, the REST API's worker threads), a loop thread of the
transport's own. Synchronous calls from other threads are bridged to the owning loop with
``asyncio.run_coroutine_threadsafe``, asynchronous ones from another loop with
``asyncio.wrap_future``. When an adopted loop ends, its end cancels the owner tasks, which stop
their servers; the next call opens fresh sessions.

Sessions are opened on first use, shared by every tool of that server, and replaced when the
upstream dies: a call that finds the connection closed retires the session, and is retried once
on a fresh one only when the tool is idempotent (the first attempt may have reached the server).

A stdio server is spoken to by :class:`~.mcp_stdio.StdioUpstream`, JSON-RPC lines over its pipes
with no task between a call and the pipe; a ``url`` server by the SDK's client. Both hand back
raw JSON and fail in the same few ways, so there is one call path above them.

Two things are settled only when a session opens. A stdio server's ``env`` references
(``from_env`` / ``from_file``) are read then, handed to the child process and otherwise kept
only to be masked out of results and errors. A ``url`` server is reached under the server's
:class:`EgressPolicy`, as HTTP tools are: its host must be allowed and every address it resolves
to acceptable, and connections go to the very addresses checked (see :mod:`..egress`).

:func:`import_mcp_tools` turns an upstream's ``tools/list`` into :class:`ToolSpec` objects, so a
manifest can govern an MCP server's tools with their own input schemas.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import difflib
import functools
import hashlib
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO, TypeVar

import httpx
from pydantic import TypeAdapter, ValidationError

from interlock._internal.gateway.egress import EgressPolicy
from interlock._internal.gateway.transports.base import CallContext
from interlock._internal.gateway.transports.mcp_stdio import (
    ConnectionLost,
    MalformedMessage,
    RpcError,
    StdioUpstream,
)
from interlock._internal.manifest.models import McpServerSpec, McpUpstream, ToolSpec
from interlock._internal.telemetry.redaction import mask_secrets
from interlock.exceptions import ConfigError, UpstreamError

if TYPE_CHECKING:
    import httpcore2
    import httpx2
    from mcp import Client

log = logging.getLogger("interlock.transport.mcp")

_T = TypeVar("_T")

# JSON-RPC codes the MCP SDK uses for a dead connection and for its own request timeout.
_CONNECTION_CLOSED = -32000
_REQUEST_TIMEOUT = -32001
# Sent to the upstream with each call so it can deduplicate retries on its side.
IDEMPOTENCY_META_KEY = "interlock/idempotency_key"
MAX_ENV_FILE_BYTES = 64 * 1024
# Shorter resolved values are not masked: hiding every "1" in a result would protect nothing.
_MIN_MASKED_CHARS = 4
_DEFAULT_PORTS = {"http": 80, "https": 443}


class _Upstream(Protocol):
    """One open session with an MCP server: :class:`StdioUpstream` for a ``command`` server,
    :class:`_SdkUpstream` (the SDK's client) for a ``url`` server. Both answer in raw JSON and
    fail with TimeoutError, :class:`RpcError`, :class:`MalformedMessage` or :class:`ConnectionLost`."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], meta: dict[str, Any] | None, *, timeout: float
    ) -> Any: ...

    async def list_tools(self, cursor: str | None, *, timeout: float) -> Any: ...


@dataclass(eq=False)
class _Session:
    server: McpServerSpec
    headers: dict[str, str]
    ready: asyncio.Future[_Upstream]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class McpTransport:
    """Calls tools on upstream MCP servers (stdio ``command`` or streamable HTTP ``url``).

    ``cwd`` is where stdio servers start (the manifest's folder, typically); ``base_dir`` anchors
    relative ``from_file`` env references (default: ``cwd``). A tool's injected credential is sent
    to an HTTP server as the credential reference's header; sessions are pooled per server and
    credential, so two credentials never share a connection. Stdio servers get their secrets
    through the server's ``env`` references instead.

    ``egress`` governs ``url`` servers: a host it does not allow is refused with
    ``UpstreamError(code="egress_denied")`` before any connection is made. Interlock's server
    always passes its policy; None leaves ``url`` servers unchecked, for embedding code and tests
    that reach only upstreams they started themselves.
    """

    def __init__(
        self,
        servers: Sequence[McpServerSpec],
        *,
        cwd: Path | None = None,
        base_dir: Path | None = None,
        egress: EgressPolicy | None = None,
        connect_timeout_s: float = 30.0,
        close_timeout_s: float = 15.0,
    ) -> None:
        self._servers = {server.name: server for server in servers}
        self._cwd = cwd
        self._base_dir = base_dir if base_dir is not None else cwd
        self._egress = egress
        self._connect_timeout = connect_timeout_s
        self._close_timeout = close_timeout_s
        self._thread_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._closing: asyncio.Task[None] | None = None  # retiring sessions on an adopted loop
        # Touched only on the loop thread.
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        # Per server, what its env references resolved to: masked out of results and errors.
        self._secrets: dict[str, frozenset[str]] = {}

    # ---- the public, synchronous side ----------------------------------------------------------

    def call(self, tool: ToolSpec, arguments: dict[str, Any], ctx: CallContext) -> Any:
        coro, timeout = self._request(tool, arguments, ctx)
        return self._run(coro, timeout=timeout, label=tool.name)

    async def call_async(self, tool: ToolSpec, arguments: dict[str, Any], ctx: CallContext) -> Any:
        """:meth:`call` from a coroutine: awaited in place when this transport's sessions live on
        the running loop (it adopts that loop if they live nowhere yet), otherwise on their loop
        without holding a thread. The connect and call timeouts apply inside either way."""
        coro, timeout = self._request(tool, arguments, ctx)
        try:
            running = asyncio.get_running_loop()
            loop = self._loop_for(running)
        except BaseException:
            coro.close()
            raise
        if loop is running:
            return await coro
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError as exc:
            future.cancel()
            raise UpstreamError(f"{tool.name} timed out after {timeout:g}s", code="upstream_timeout") from exc
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our caller was cancelled, not the call
            raise UpstreamError(
                f"{tool.name} was cancelled: the MCP transport closed", code="upstream_unavailable"
            ) from exc

    def _request(
        self, tool: ToolSpec, arguments: dict[str, Any], ctx: CallContext
    ) -> tuple[Coroutine[Any, Any, dict[str, Any]], float]:
        """The call's coroutine (not started) and the most it may take in all."""
        upstream = tool.upstream
        if not isinstance(upstream, McpUpstream):
            raise UpstreamError(f"tool {tool.name} is not bound to an MCP server tool")
        server = self._server(upstream.server or "")
        headers = _credential_headers(tool, ctx.credential) if server.url is not None else {}
        meta = {IDEMPOTENCY_META_KEY: ctx.idempotency_key} if ctx.idempotency_key else None
        coro = self._call(
            server,
            headers,
            tool_name=upstream.tool,
            label=tool.name,
            arguments=arguments,
            timeout=ctx.timeout_s,
            idempotent=tool.idempotent,
            meta=meta,
        )
        # Connecting has its own budget; a retry may connect and call a second time.
        return coro, 2 * (self._connect_timeout + ctx.timeout_s) + 5

    def list_tools(self, server: str, *, headers: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """The upstream's tools as plain JSON: ``name``, ``description``, ``inputSchema`` (and
        ``outputSchema`` / ``annotations`` when the server declares them)."""
        spec = self._server(server)
        coro = self._list_tools(spec, dict(headers or {}))
        return self._run(coro, timeout=3 * self._connect_timeout, label=f"{server} tools/list")

    def close(self) -> None:
        """Close every session (stopping stdio servers) and the loop thread, if the transport
        started one; an adopted loop is left running. Idempotent."""
        with self._thread_lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or loop.is_closed():
            return  # a loop's end cancelled the owner tasks, which stopped their servers
        if thread is None:  # an adopted loop: retire our sessions on it, leave the loop to its owner
            if not loop.is_running():
                return
            if _running_loop() is loop:  # cannot wait here for work this very thread must do
                self._closing = loop.create_task(self._retire_all())
                return
            retired = asyncio.run_coroutine_threadsafe(self._retire_all(), loop)
            try:
                retired.result(timeout=self._close_timeout + 5)
            except Exception:  # closing must never raise; the log says what was left behind
                log.exception("MCP transport: sessions did not close cleanly")
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        try:
            future.result(timeout=self._close_timeout + 5)
        except Exception:  # closing must never raise; the log says what was left behind
            log.exception("MCP transport: sessions did not close cleanly")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()

    # ---- loop thread ---------------------------------------------------------------------------

    def _server(self, name: str) -> McpServerSpec:
        server = self._servers.get(name)
        if server is None:
            raise ConfigError(f"upstream.server: unknown MCP server {name!r}; declare it under mcp_servers")
        return server

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        """The sessions' loop for a synchronous caller: the adopted one while it runs, else the
        transport's own loop thread (started now if need be)."""
        with self._thread_lock:
            if self._closed:
                raise UpstreamError("the MCP transport is closed", code="upstream_unavailable")
            if self._loop is None or self._ended(self._loop):
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="interlock-mcp", daemon=True)
                thread.start()
                self._switch(loop, thread)
            return self._loop  # type: ignore[return-value]  # set just above if it was not

    def _loop_for(self, running: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
        """The sessions' loop for a coroutine on ``running``: adopted if there is none yet."""
        with self._thread_lock:
            if self._closed:
                raise UpstreamError("the MCP transport is closed", code="upstream_unavailable")
            if self._loop is None or self._ended(self._loop):
                self._switch(running, None)
            return self._loop  # type: ignore[return-value]  # set just above if it was not

    def _ended(self, loop: asyncio.AbstractEventLoop) -> bool:
        # An own loop thread may not be running yet a moment after it started; an adopted loop
        # ran when it was adopted, so one that no longer runs has ended (its owner returned).
        return loop.is_closed() or (self._thread is None and not loop.is_running())

    def _switch(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread | None) -> None:
        if self._loop is not None:
            log.debug("MCP transport: the loop of its sessions ended; opening new ones on another")
        # Sessions and locks of an ended loop are dead with it (its end cancelled their tasks).
        self._sessions.clear()
        self._locks.clear()
        self._loop, self._thread = loop, thread

    def _run(self, coro: Coroutine[Any, Any, _T], *, timeout: float, label: str) -> _T:
        try:
            loop = self._ensure_loop()
            if _running_loop() is loop:
                # Blocking this thread for the answer would stop the very loop that must produce it.
                raise UpstreamError(
                    f"{label}: called synchronously on the event loop that holds the MCP sessions; "
                    "await call_async instead",
                    code="upstream_unavailable",
                )
        except BaseException:
            coro.close()
            raise
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise UpstreamError(f"{label} timed out after {timeout:g}s", code="upstream_timeout") from exc
        except concurrent.futures.CancelledError as exc:
            raise UpstreamError(
                f"{label} was cancelled: the MCP transport closed", code="upstream_unavailable"
            ) from exc

    async def _owner(self, session: _Session) -> None:
        """Holds one client session open, in one task, until asked to stop.

        The SDK's task groups and cancel scopes must be entered and left by the same task, so a
        session is opened and closed here while other tasks only send requests through it (a stdio
        server's process, too, is started and stopped here).
        """
        try:
            async with AsyncExitStack() as stack:
                upstream = await self._open(session, stack)
                session.ready.set_result(upstream)
                await session.stop.wait()
        except asyncio.CancelledError:
            if not session.ready.done():
                session.ready.set_exception(
                    UpstreamError("connecting was cancelled", code="upstream_unavailable")
                )
            raise
        except Exception as exc:
            if not session.ready.done():
                session.ready.set_exception(exc)
            else:  # the upstream died under us; the session is already being replaced
                log.debug("MCP server %s: session closed with %r", session.server.name, exc)

    async def _open(self, session: _Session, stack: AsyncExitStack) -> _Upstream:
        """The session's upstream, opened; ``stack`` closes it (and stops a stdio server)."""
        server = session.server
        if server.command is not None:
            from mcp.client.stdio import get_default_environment

            from interlock import __version__

            env, secrets = _resolve_env(server, self._base_dir)
            masked = {value for value in secrets if len(value) >= _MIN_MASKED_CHARS}
            self._secrets[server.name] = self._secrets.get(server.name, frozenset()) | masked
            # The child's stderr is Interlock's log stream too; a server that prints its token
            # in an error message must not put it there.
            errlog = (
                await stack.enter_async_context(_masking_stderr(frozenset(masked))) if masked else _stderr()
            )
            stdio = await StdioUpstream.start(
                server.name,
                server.command,
                # Only a few safe variables of Interlock's own environment go across, as the SDK does.
                env=get_default_environment() | env,
                cwd=self._cwd,
                errlog=errlog,
            )
            stack.push_async_callback(stdio.aclose)
            await stdio.initialize(client_version=__version__)
            return stdio
        from mcp import Client

        assert server.url is not None
        if self._egress is None and not session.headers:
            client = await stack.enter_async_context(Client(server.url, cache=None))
            return _SdkUpstream(client)
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        transport: httpx2.AsyncBaseTransport | None = None
        if self._egress is not None:
            # Resolving blocks; the loop thread serves every other session meanwhile.
            await asyncio.to_thread(_check_url, self._egress, server)
            transport = _pinned_transport(self._egress)
        http = await stack.enter_async_context(
            httpx2.AsyncClient(
                headers=session.headers,
                timeout=httpx2.Timeout(30.0, read=300.0),
                transport=transport,
                # An environment proxy would become the address that is checked and reached.
                trust_env=self._egress is None,
            )
        )
        client = await stack.enter_async_context(
            Client(streamable_http_client(server.url, http_client=http), cache=None)
        )
        return _SdkUpstream(client)

    async def _acquire(self, server: McpServerSpec, headers: dict[str, str]) -> tuple[_Session, _Upstream]:
        if self._closed:  # a call retrying while close() runs must not start a new server
            raise UpstreamError("the MCP transport is closed", code="upstream_unavailable")
        key = (server.name, _fingerprint(headers))
        open_ = self._sessions.get(key)
        if open_ is not None and _usable(open_):
            # The common case: an open session, taken without the lock, a timer or a loop pass.
            return open_, open_.ready.result()
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            session = self._sessions.get(key)
            if session is None or session.task is None or session.task.done():
                loop = asyncio.get_running_loop()
                session = _Session(server=server, headers=headers, ready=loop.create_future())
                session.task = loop.create_task(self._owner(session), name=f"mcp-session:{server.name}")
                self._sessions[key] = session
            try:
                upstream = await asyncio.wait_for(asyncio.shield(session.ready), self._connect_timeout)
            except TimeoutError as exc:
                await self._retire(session)
                raise UpstreamError(
                    f"connecting to MCP server {server.name} timed out after {self._connect_timeout:g}s",
                    code="upstream_timeout",
                ) from exc
            except (UpstreamError, ConfigError):
                await self._retire(session)
                raise
            except Exception as exc:
                await self._retire(session)
                refusal = _egress_refusal(exc)
                if refusal is not None:  # a connection the pin refused, deep in the SDK's task group
                    raise UpstreamError(
                        f"MCP server {server.name}: {refusal.message}",
                        code=refusal.code,
                        details={**refusal.details, "server": server.name},
                    ) from exc
                raise UpstreamError(
                    f"cannot connect to MCP server {server.name}: {_describe(exc)}",
                    code="upstream_unavailable",
                ) from exc
        return session, upstream

    async def _retire(self, session: _Session) -> None:
        for key, current in list(self._sessions.items()):
            if current is session:
                del self._sessions[key]
        session.stop.set()
        task = session.task
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), self._close_timeout)
        except TimeoutError:
            task.cancel()
        except Exception:  # the owner already logged why
            log.debug("MCP server %s: owner task ended with an error", session.server.name)

    async def _call(self, server: McpServerSpec, headers: dict[str, str], **call: Any) -> dict[str, Any]:
        try:
            result = await self._call_tool(server, headers, **call)
        except UpstreamError as exc:
            masked = self._masked(server, exc)
            if masked is exc:
                raise
        else:
            return self._mask(server, result)
        raise masked  # outside the handler: the original, which quotes a secret, is not its context

    async def _call_tool(
        self,
        server: McpServerSpec,
        headers: dict[str, str],
        *,
        tool_name: str,
        label: str,
        arguments: dict[str, Any],
        timeout: float,
        idempotent: bool,
        meta: dict[str, Any] | None,
    ) -> dict[str, Any]:
        for attempt in (1, 2):
            session, upstream = await self._acquire(server, headers)
            try:
                result = await upstream.call_tool(tool_name, arguments, meta, timeout=timeout)
            except TimeoutError as exc:
                raise UpstreamError(f"{label} timed out after {timeout:g}s", code="upstream_timeout") from exc
            except RpcError as exc:
                if exc.code == _REQUEST_TIMEOUT:
                    raise UpstreamError(f"{label} timed out: {exc.message}", code="upstream_timeout") from exc
                raise UpstreamError(f"{label}: MCP server {server.name} answered: {exc.message}") from exc
            except MalformedMessage as exc:
                raise UpstreamError(f"{label}: MCP server {server.name} sent a malformed result") from exc
            except ConnectionLost as exc:  # the process, its pipes or the HTTP connection failed
                lost: Exception = exc
            else:
                return _result_json(label, server.name, result)
            await self._retire(session)
            if not idempotent:
                raise UpstreamError(
                    f"{label}: lost the connection to MCP server {server.name} ({_describe(lost)}); "
                    "not retried because the tool is not idempotent",
                    code="upstream_unavailable",
                ) from lost
            if attempt == 2:
                raise UpstreamError(
                    f"{label}: lost the connection to MCP server {server.name} twice ({_describe(lost)})",
                    code="upstream_unavailable",
                ) from lost
            log.info(
                "MCP server %s: connection lost; reconnecting to retry idempotent %s", server.name, label
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _list_tools(self, server: McpServerSpec, headers: dict[str, str]) -> list[dict[str, Any]]:
        try:
            tools = await self._list_tools_once(server, headers)
        except UpstreamError as exc:
            masked = self._masked(server, exc)
            if masked is exc:
                raise
        else:
            return self._mask(server, tools)
        raise masked  # outside the handler: the original, which quotes a secret, is not its context

    def _mask(self, server: McpServerSpec, value: _T) -> _T:
        secrets = self._secrets.get(server.name)
        return mask_secrets(value, tuple(secrets)) if secrets else value

    def _masked(self, server: McpServerSpec, exc: UpstreamError) -> UpstreamError:
        """``exc`` with the server's resolved env values masked out of its message and details."""
        secrets = self._secrets.get(server.name)
        if not secrets or not _mentions(exc, secrets):
            return exc
        return UpstreamError(
            self._mask(server, exc.message), code=exc.code, details=self._mask(server, exc.details)
        )

    async def _list_tools_once(self, server: McpServerSpec, headers: dict[str, str]) -> list[dict[str, Any]]:
        session, upstream = await self._acquire(server, headers)
        tools: list[dict[str, Any]] = []
        cursor: str | None = None
        try:
            for _ in range(1000):  # a server whose cursor never ends must not hang the load
                page = await upstream.list_tools(cursor, timeout=self._connect_timeout)
                cursor = _tools_page(page, into=tools)
                if cursor is None:
                    break
        except TimeoutError as exc:
            raise UpstreamError(f"{server.name} tools/list timed out", code="upstream_timeout") from exc
        except (RpcError, MalformedMessage) as exc:
            raise UpstreamError(f"{server.name} tools/list failed: {_describe(exc)}") from exc
        except ConnectionLost as exc:
            await self._retire(session)
            raise UpstreamError(
                f"{server.name} tools/list failed: lost the connection ({_describe(exc)})",
                code="upstream_unavailable",
            ) from exc
        return tools

    async def _retire_all(self) -> None:
        await asyncio.gather(
            *(self._retire(s) for s in list(self._sessions.values())), return_exceptions=True
        )

    async def _shutdown(self) -> None:
        """Retire every session, then end what else runs on the transport's own loop."""
        await self._retire_all()
        current = asyncio.current_task()
        rest = [task for task in asyncio.all_tasks() if task is not current]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)


def _usable(session: _Session) -> bool:
    """Whether ``session`` is open: its owner task runs and its client is ready."""
    ready = session.ready
    return (
        session.task is not None
        and not session.task.done()
        and ready.done()
        and not ready.cancelled()
        and ready.exception() is None
    )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _credential_headers(tool: ToolSpec, credential: str | None) -> dict[str, str]:
    if credential is None or tool.credential is None:
        return {}
    ref = tool.credential
    return {ref.header: f"{ref.scheme} {credential}" if ref.scheme else credential}


def _fingerprint(headers: Mapping[str, str]) -> str:
    if not headers:
        return ""
    text = "\n".join(f"{k.lower()}:{v}" for k, v in sorted(headers.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _egress_refusal(exc: BaseException, depth: int = 0) -> UpstreamError | None:
    """The egress refusal behind ``exc``, if any: in its exception groups or its chain."""
    if depth > 20:
        return None
    if isinstance(exc, UpstreamError) and exc.code == "egress_denied":
        return exc
    inner: list[BaseException] = list(exc.exceptions) if isinstance(exc, BaseExceptionGroup) else []
    inner += [e for e in (exc.__cause__, exc.__context__) if e is not None]
    for candidate in inner:
        found = _egress_refusal(candidate, depth + 1)
        if found is not None:
            return found
    return None


def _mentions(exc: BaseException, secrets: frozenset[str]) -> bool:
    """Whether ``exc``, its details or anything in its chain quotes one of ``secrets``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts = [str(current), repr(getattr(current, "details", ""))]
        if any(secret in text for secret in secrets for text in texts):
            return True
        current = current.__cause__ or current.__context__
    return False


def _resolve_env(server: McpServerSpec, base_dir: Path | None) -> tuple[dict[str, str], list[str]]:
    """A stdio server's environment with its references read now, and the values they gave.

    Errors name the server, the variable and where it was to come from, never a value.
    """
    env: dict[str, str] = {}
    resolved: list[str] = []
    for key, value in server.env.items():
        if isinstance(value, str):
            env[key] = value
            continue
        where = f"MCP server {server.name}: env.{key}"
        if value.from_env is not None:
            text = os.environ.get(value.from_env, "")
            if not text:
                raise ConfigError(f"{where}: environment variable {value.from_env} is not set")
        else:
            assert value.from_file is not None
            text = _read_env_file(value.from_file, base_dir, where=where)
        if "\0" in text:
            raise ConfigError(f"{where}: the value contains a NUL character, which no environment can hold")
        env[key] = text
        resolved.append(text)
    return env, resolved


@asynccontextmanager
async def _masking_stderr(secrets: frozenset[str]) -> AsyncIterator[TextIO]:
    """A pipe for a child's stderr, forwarded to ours line by line with ``secrets`` masked."""
    read_fd, write_fd = os.pipe()
    thread = threading.Thread(
        target=_forward_masked, args=(read_fd, tuple(secrets)), name="interlock-mcp-stderr", daemon=True
    )
    thread.start()
    writer = os.fdopen(write_fd, "w")
    try:
        yield writer  # the child holds its own copy; the forwarder ends when the child's is closed
    finally:
        writer.close()


def _forward_masked(read_fd: int, secrets: tuple[str, ...]) -> None:
    try:
        with os.fdopen(read_fd, "rb") as pipe:
            for line in iter(lambda: pipe.readline(64 * 1024), b""):
                sys.stderr.write(mask_secrets(line.decode("utf-8", errors="replace"), secrets))
                sys.stderr.flush()
    except (OSError, ValueError):  # our stderr went away; the child's output has nowhere to go
        return


def _read_env_file(name: str, base_dir: Path | None, *, where: str) -> str:
    path = Path(name)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_ENV_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {name}: {exc.strerror or type(exc).__name__}") from exc
    if len(raw) > MAX_ENV_FILE_BYTES:
        raise ConfigError(f"{where}: {name} is larger than {MAX_ENV_FILE_BYTES // 1024} KiB")
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        # Not chained: the decoding error carries the file's bytes.
        raise ConfigError(f"{where}: {name} is not UTF-8 text") from None
    if not text:
        raise ConfigError(f"{where}: {name} is empty")
    return text


# ---- egress for url servers --------------------------------------------------------------------


def _check_url(policy: EgressPolicy, server: McpServerSpec) -> None:
    """Scheme, host and every resolved address of a url server, before anything connects."""
    assert server.url is not None
    try:
        url = httpx.URL(server.url)
    except httpx.InvalidURL as exc:
        raise ConfigError(f"MCP server {server.name}: url is not a valid URL: {exc}") from exc
    try:
        policy.check_url(url)
    except UpstreamError as exc:
        raise UpstreamError(
            f"MCP server {server.name}: {exc.message}",
            code=exc.code,
            details={**exc.details, "server": server.name},
        ) from exc


def _pinned_backend(policy: EgressPolicy) -> httpcore2.AsyncNetworkBackend:
    import httpcore2

    class PinnedAsyncBackend(httpcore2.AsyncNetworkBackend):
        """Resolves, checks and connects in one step, to the addresses it checked, so a name
        that resolves elsewhere a moment after the check (DNS rebinding) gains nothing."""

        def __init__(self) -> None:
            self._inner = httpcore2.AnyIOBackend()

        async def connect_tcp(
            self,
            host: str,
            port: int,
            timeout: float | None = None,
            local_address: str | None = None,
            socket_options: Iterable[Any] | None = None,
        ) -> httpcore2.AsyncNetworkStream:
            last: Exception | None = None
            for address in await asyncio.to_thread(policy.resolve, host, port):
                try:
                    # An IP literal: no second, unchecked lookup happens.
                    return await self._inner.connect_tcp(
                        address,
                        port,
                        timeout=timeout,
                        local_address=local_address,
                        socket_options=socket_options,
                    )
                except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                    last = exc
            assert last is not None
            raise last

        async def connect_unix_socket(
            self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
        ) -> httpcore2.AsyncNetworkStream:
            raise UpstreamError("egress denied: unix sockets are not reachable", code="egress_denied")

        async def sleep(self, seconds: float) -> None:
            await self._inner.sleep(seconds)

    return PinnedAsyncBackend()


def _pinned_transport(policy: EgressPolicy) -> httpx2.AsyncBaseTransport:
    """An httpx2 transport for one url server's session that reaches only what ``policy`` allows:
    every request (redirects included) to an allowed host and port, every connection to a checked
    address. No proxy, by design: the proxy's address would be the one checked."""
    import httpcore2
    import httpx2

    class PinnedAsyncTransport(httpx2.AsyncHTTPTransport):
        def __init__(self) -> None:
            super().__init__(trust_env=False)
            # httpx2 builds its pool with the default network backend; this one pins addresses.
            self._pool = httpcore2.AsyncConnectionPool(
                ssl_context=httpx2.create_ssl_context(),
                max_connections=20,
                max_keepalive_connections=5,
                keepalive_expiry=5.0,
                network_backend=_pinned_backend(policy),
            )

        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            url = request.url
            default = _DEFAULT_PORTS.get(url.scheme)
            if default is None:
                raise UpstreamError(
                    f"egress denied: scheme {url.scheme!r} is not allowed (http and https only)",
                    code="egress_denied",
                    details={"host": url.host},
                )
            policy.check_host(url.host, url.port or default, default_port=default)
            return await super().handle_async_request(request)

    return PinnedAsyncTransport()


class _SdkUpstream:
    """A ``url`` server's session: the SDK's client, its answers turned into raw JSON and its
    failures into this module's (as :class:`StdioUpstream` gives them)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def call_tool(
        self, name: str, arguments: dict[str, Any], meta: dict[str, Any] | None, *, timeout: float
    ) -> Any:
        import mcp_types

        result = await self._request(_send_call(self._client, name, arguments, meta), timeout)
        if isinstance(result, mcp_types.InputRequiredResult):  # it wants elicitation or sampling
            return {"inputRequired": True}
        return result.model_dump(mode="json", by_alias=True, exclude_none=True)

    async def list_tools(self, cursor: str | None, *, timeout: float) -> Any:
        page = await self._request(self._client.list_tools(cursor=cursor), timeout)
        return page.model_dump(mode="json", by_alias=True, exclude_none=True)

    @staticmethod
    async def _request(call: Coroutine[Any, Any, _T], timeout: float) -> _T:
        from mcp import MCPError

        try:
            return await asyncio.wait_for(call, timeout)
        except TimeoutError:
            raise
        except MCPError as exc:
            if exc.code == _CONNECTION_CLOSED:
                raise ConnectionLost(exc.message) from exc
            raise RpcError(exc.code, exc.message, exc.error.data) from exc
        except ValidationError as exc:
            raise MalformedMessage(str(exc)) from exc
        except Exception as exc:  # sockets and the SDK's streams: the connection itself failed
            raise ConnectionLost(_describe(exc)) from exc


async def _send_call(
    client: Client, name: str, arguments: dict[str, Any], meta: dict[str, Any] | None
) -> Any:
    """One ``tools/call``, sent to the client's session.

    ``Client.call_tool`` wraps the same request in a re-list after ``HEADER_MISMATCH`` (kept:
    that answer means the request was refused before it ran, so resending it is safe), rounds
    of input-required results answered by callbacks this client does not have (such a result
    is an upstream error, see :func:`_result_json`), and a check of the structured result
    against the upstream's own output schema. The pipeline validates the tool's output against
    the manifest's ``output_schema`` (an imported tool carries the upstream's), so that check
    was a second one, and its failure (a ``RuntimeError``) read here as a lost connection.
    """
    import mcp_types
    from mcp import MCPError

    request = mcp_types.CallToolRequest(
        params=mcp_types.CallToolRequestParams(name=name, arguments=arguments, _meta=meta)
    )
    try:
        return await client.session.send_request(request, _call_result_adapter())
    except MCPError as exc:
        if exc.code != mcp_types.HEADER_MISMATCH:
            raise
        return await client.call_tool(name, arguments, meta=meta)  # type: ignore[arg-type]


@functools.cache
def _call_result_adapter() -> TypeAdapter[Any]:
    import mcp_types

    return TypeAdapter(mcp_types.CallToolResult | mcp_types.InputRequiredResult)


def _result_json(label: str, server: str, result: Any) -> dict[str, Any]:
    """A raw ``tools/call`` result as the transport returns it: ``content`` (the blocks as sent,
    less their ``_meta`` and null fields) and ``structured``. Only the shape is checked here; the
    MCP gateway validates the blocks once, when it hands them on."""
    if isinstance(result, dict) and result.get("inputRequired") is True:
        raise UpstreamError(
            f"{label}: the MCP server asked for input from the user, which Interlock does not give"
        )
    malformed = UpstreamError(f"{label}: MCP server {server} sent a malformed result")
    if not isinstance(result, dict) or not isinstance(result.get("content"), list):
        raise malformed
    content: list[dict[str, Any]] = []
    for block in result["content"]:
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise malformed
        if "_meta" in block or None in block.values():
            block = {k: v for k, v in block.items() if k != "_meta" and v is not None}
        content.append(block)
    structured = result.get("structuredContent")
    if structured is not None and not isinstance(structured, dict):
        raise malformed
    if result.get("isError") is True:
        text = (
            "\n".join(str(c.get("text", "")) for c in content if c.get("type") == "text")
            or "the tool reported an error"
        )
        raise UpstreamError(f"{label}: {text}", details={"content": content})
    return {"content": content, "structured": structured}


def _tools_page(page: Any, *, into: list[dict[str, Any]]) -> str | None:
    """One raw ``tools/list`` page's tools appended to ``into`` as plain JSON; its next cursor."""
    if not isinstance(page, dict) or not isinstance(page.get("tools"), list):
        raise MalformedMessage("a tools/list result without a tools array")
    for tool in page["tools"]:
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise MalformedMessage("a tool without a name")
        if not isinstance(tool.get("inputSchema"), dict):
            raise MalformedMessage(f"tool {tool['name'][:100]!r} has no inputSchema object")
        entry: dict[str, Any] = {
            "name": tool["name"],
            "description": tool.get("description") or "",
            "inputSchema": tool["inputSchema"],
        }
        if tool.get("outputSchema") is not None:
            entry["outputSchema"] = tool["outputSchema"]
        annotations = tool.get("annotations")
        if isinstance(annotations, dict):
            entry["annotations"] = {k: v for k, v in annotations.items() if v is not None}
        into.append(entry)
    cursor = page.get("nextCursor")
    if cursor is not None and not isinstance(cursor, str):
        raise MalformedMessage("a nextCursor that is not a string")
    return cursor


def _stderr() -> TextIO | None:
    """Where a stdio server's stderr goes when nothing in it needs masking: ours, the process's
    real one if ours is a stand-in without a file descriptor (a test's capture); None inherits."""
    for stream in (sys.stderr, sys.__stderr__):
        try:
            if stream is not None:
                stream.fileno()
                return stream
        except (OSError, ValueError, AttributeError):
            continue
    return None


# ---- importing an upstream's tools into a manifest ---------------------------------------------

_COMPOSITION = ("allOf", "anyOf", "oneOf", "not", "if", "then", "else")
_OPEN_OBJECT = ("additionalProperties", "unevaluatedProperties", "patternProperties", *_COMPOSITION)
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "dependentSchemas")
_SUBSCHEMA_ONE = ("items", "additionalItems", "contains", "not", "if", "then", "else", "propertyNames")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")


def normalise_input_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an upstream input schema that rejects unknown fields.

    Every object that lists its ``properties`` and says nothing else about extra keys gets
    ``additionalProperties: false``. Members of an ``allOf`` are left open, since closing each
    would reject the properties the others add; the root becomes ``type: object`` if unset.
    """
    out = copy.deepcopy(dict(schema))
    out.setdefault("type", "object")
    _close(out, in_all_of=False)
    return out


def _close(schema: dict[str, Any], *, in_all_of: bool) -> None:
    if not in_all_of and "properties" in schema and not any(k in schema for k in _OPEN_OBJECT):
        schema["additionalProperties"] = False
    for key in _SUBSCHEMA_MAPS:
        members = schema.get(key)
        if isinstance(members, dict):
            for sub in members.values():
                if isinstance(sub, dict):
                    _close(sub, in_all_of=False)
    for key in _SUBSCHEMA_ONE:
        sub = schema.get(key)
        if isinstance(sub, dict):
            _close(sub, in_all_of=False)
    for key in _SUBSCHEMA_LISTS:
        members = schema.get(key)
        if isinstance(members, list):
            for sub in members:
                if isinstance(sub, dict):
                    _close(sub, in_all_of=False)
    all_of = schema.get("allOf")
    if isinstance(all_of, list):
        for sub in all_of:
            if isinstance(sub, dict):
                _close(sub, in_all_of=True)


def result_schema(output_schema: Mapping[str, Any]) -> dict[str, Any]:
    """The output schema of an imported tool: the transport's envelope around the upstream's
    structured result. Definitions move to the root so ``#/$defs/...`` references still resolve."""
    structured = copy.deepcopy(dict(output_schema))
    envelope: dict[str, Any] = {
        "type": "object",
        "properties": {"content": {"type": "array"}, "structured": structured},
        "required": ["content", "structured"],
    }
    for key in ("$defs", "definitions"):
        if key in structured:
            envelope[key] = structured.pop(key)
    return envelope


_NOT_FROM_MAPPING = ("input_schema", "upstream")


def import_mcp_tools(
    upstream_tools: Sequence[Mapping[str, Any]],
    mapping: Mapping[str, Mapping[str, Any]],
    *,
    server: str,
) -> list[ToolSpec]:
    """Tool specs for the mapped tools of one MCP server.

    ``upstream_tools`` is what :meth:`McpTransport.list_tools` returns; ``mapping`` is
    ``{upstream_tool_name: {verb, traits, ...}}``, where each value may set any tool field but
    the input schema and the upstream binding (``name`` renames the tool locally). Only mapped
    tools are imported: a tool the server adds later gains no authority until someone maps it.
    Pure: it reads nothing and starts nothing.
    """
    by_name = {str(tool.get("name")): tool for tool in upstream_tools}
    specs: list[ToolSpec] = []
    for upstream_name, fields in mapping.items():
        tool = by_name.get(upstream_name)
        if tool is None:
            close = difflib.get_close_matches(upstream_name, list(by_name), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"MCP server {server!r} has no tool {upstream_name!r}{hint}")
        where = f"MCP server {server!r}, tool {upstream_name!r}"
        if not isinstance(fields, Mapping):
            raise ConfigError(f"{where}: the mapping must be an object such as {{verb: read}}")
        blocked = [key for key in _NOT_FROM_MAPPING if key in fields]
        if blocked:
            raise ConfigError(f"{where}: {blocked[0]} comes from the server and cannot be mapped")
        input_schema = tool.get("inputSchema")
        if not isinstance(input_schema, Mapping):
            raise ConfigError(f"{where}: the server declares no inputSchema object")
        data: dict[str, Any] = {
            "name": upstream_name,
            "description": tool.get("description") or "",
            "input_schema": normalise_input_schema(input_schema),
            "upstream": {"kind": "mcp", "server": server, "tool": upstream_name},
        }
        output_schema = tool.get("outputSchema")
        if isinstance(output_schema, Mapping):
            data["output_schema"] = result_schema(output_schema)
        data.update(fields)
        try:
            specs.append(ToolSpec.model_validate(data))
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "tool"
            raise ConfigError(f"{where}: {loc}: {first['msg']}") from exc
    return specs


__all__ = [
    "IDEMPOTENCY_META_KEY",
    "McpTransport",
    "import_mcp_tools",
    "normalise_input_schema",
    "result_schema",
]
