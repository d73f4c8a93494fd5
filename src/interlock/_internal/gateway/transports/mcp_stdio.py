"""A stdio MCP server spoken to directly: newline-delimited JSON-RPC over the child's pipes, on
the event loop that started it.

The SDK's client puts a dispatcher, four memory streams and two pipe tasks between a call and the
pipes, and every message crosses them as task switches. Here a request is one line written to
the child's stdin, and the answer line resolves the request's future from the pipe's own data
callback: no task but the caller's.

What it speaks is the handshake era of MCP's lifecycle:

- ``initialize`` offers the newest handshake version and accepts any handshake version the server
  answers with (version negotiation); then ``notifications/initialized``;
- a request the server sends is answered: ``ping`` with an empty result, anything else
  (``roots/list``, ``sampling/createMessage``, ``elicitation/create``, ...) with ``-32601``,
  since Interlock gives its upstreams no roots, sampling or elicitation;
- notifications from the server are ignored; a line that is not a JSON-RPC message is logged (its
  length, never its text, which may quote a secret) and skipped;
- a request that times out, or whose caller is cancelled, is withdrawn with
  ``notifications/cancelled``;
- when stdout closes or the child exits, every request in flight fails with
  :class:`ConnectionLost`, and so does every later one: the owner replaces the session;
- closing follows the spec's shutdown: close stdin, wait, then SIGTERM and SIGKILL to the child's
  process group (it runs in a session of its own, as the SDK starts it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO, cast

import orjson
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION

from interlock.exceptions import UpstreamError

log = logging.getLogger("interlock.transport.mcp")

# The spec's shutdown: time to exit after stdin closes, then after SIGTERM, then after SIGKILL.
_EXIT_GRACE_S = 2.0
_TERM_GRACE_S = 2.0
_KILL_REAP_S = 2.0
# After the child exits, how long its last lines may still be on their way through the pipe.
_EXITED_DRAIN_S = 1.0
# A line longer than this is not a message but a runaway server: the session is dropped.
MAX_LINE_BYTES = 64 * 1024 * 1024
_METHOD_NOT_FOUND = -32601


class RpcError(Exception):
    """A JSON-RPC error response to one of our requests."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data


class ConnectionLost(Exception):
    """The server is gone (or going): no answer will come on this session."""


class MalformedMessage(Exception):
    """A response that is not what JSON-RPC or MCP says it must be."""


class StdioUpstream:
    """One stdio MCP server process and its JSON-RPC session. Start it with :meth:`start`, then
    :meth:`initialize`; close it with :meth:`aclose`. Every method runs on the loop that started it."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.protocol_version: str | None = None
        self._loop = loop
        self._transport: asyncio.SubprocessTransport | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._buffer = b""
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._last_id = 0
        self._gone: str | None = None  # why no answer can come any more
        self._exited: asyncio.Future[None] = loop.create_future()

    @classmethod
    async def start(
        cls,
        name: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None,
        cwd: Path | None,
        errlog: TextIO | int | None,
    ) -> StdioUpstream:
        """Starts the server's process (no message is exchanged yet)."""
        loop = asyncio.get_running_loop()
        upstream = cls(name, loop)
        await loop.subprocess_exec(
            lambda: _Pipes(upstream),
            *command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errlog,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,  # its own process group, so closing reaches its children too
        )
        return upstream

    @property
    def pid(self) -> int | None:
        return self._transport.get_pid() if self._transport is not None else None

    async def initialize(self, *, client_version: str) -> None:
        """The lifecycle's handshake, with version negotiation."""
        params = {
            "protocolVersion": LATEST_HANDSHAKE_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "interlock", "version": client_version},
        }
        # The spec forbids cancelling initialize; the caller's connect timeout bounds it instead.
        result = await self.request("initialize", params, timeout=None, withdraw=False)
        version = result.get("protocolVersion") if isinstance(result, dict) else None
        if version not in HANDSHAKE_PROTOCOL_VERSIONS:
            raise UpstreamError(
                f"MCP server {self.name} answered initialize with protocol version {str(version)[:40]!r}, "
                f"which Interlock does not speak ({', '.join(HANDSHAKE_PROTOCOL_VERSIONS)})",
                code="upstream_unavailable",
            )
        self.protocol_version = version
        self.notify("notifications/initialized", None)

    async def call_tool(
        self, name: str, arguments: dict[str, Any], meta: dict[str, Any] | None, *, timeout: float
    ) -> Any:
        """The raw ``tools/call`` result (JSON), or TimeoutError, RpcError, ConnectionLost."""
        params: dict[str, Any] = {"name": name, "arguments": arguments}
        if meta:
            params["_meta"] = meta
        return await self.request("tools/call", params, timeout=timeout)

    async def list_tools(self, cursor: str | None, *, timeout: float) -> Any:
        """One raw ``tools/list`` page (JSON)."""
        return await self.request("tools/list", {"cursor": cursor} if cursor else {}, timeout=timeout)

    async def request(
        self, method: str, params: dict[str, Any] | None, *, timeout: float | None, withdraw: bool = True
    ) -> Any:
        """Sends one request and awaits its answer's ``result``."""
        if self._gone is not None:
            raise ConnectionLost(self._gone)
        self._last_id += 1
        request_id = self._last_id
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        answer = self._loop.create_future()
        self._pending[request_id] = answer
        try:
            self._send(message)
            if timeout is None:
                return await answer
            async with asyncio.timeout(timeout):
                return await answer
        except TimeoutError:
            self._withdraw(request_id, "timed out", withdraw=withdraw)
            raise
        except asyncio.CancelledError:
            self._withdraw(request_id, "cancelled", withdraw=withdraw)
            raise
        finally:
            self._pending.pop(request_id, None)

    def _withdraw(self, request_id: int, reason: str, *, withdraw: bool) -> None:
        # Still unanswered: the server is told to stop working on it (and not to answer).
        if self._pending.pop(request_id, None) is not None and withdraw and self._gone is None:
            self.notify("notifications/cancelled", {"requestId": request_id, "reason": reason})

    def notify(self, method: str, params: dict[str, Any] | None) -> None:
        """Sends one notification; nothing if the server is gone."""
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        if self._gone is None:
            with contextlib.suppress(ConnectionLost):  # the next request learns it
                self._send(message)

    async def aclose(self) -> None:
        """Stops the server: stdin closed, then SIGTERM, then SIGKILL to its process group."""
        self._lose("the session was closed")
        transport = self._transport
        if transport is None:
            return
        try:
            if self._stdin is not None:
                self._stdin.close()  # EOF: a well-behaved server exits on its own
            if not await self._wait_exit(_EXIT_GRACE_S):
                self._signal(signal.SIGTERM)
                if not await self._wait_exit(_TERM_GRACE_S):
                    self._signal(signal.SIGKILL)
                    if not await self._wait_exit(_KILL_REAP_S):
                        log.warning("MCP server %s (pid %s) survived SIGKILL", self.name, self.pid)
        except BaseException:  # cancelled while waiting: no more waiting, but no live child either
            self._signal(signal.SIGKILL)
            raise
        finally:
            transport.close()

    # ---- the pipes -----------------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        stdin = self._stdin
        if stdin is None or stdin.is_closing():
            self._lose("the server's stdin is closed")
            raise ConnectionLost(self._gone)
        try:
            data = orjson.dumps(message)
        except orjson.JSONEncodeError:  # an integer past 64 bits, a key that is not a string
            try:
                text = json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
                data = text.encode()
            except (TypeError, ValueError) as exc:
                raise UpstreamError(f"{message.get('method')} cannot be sent as JSON: {exc}") from None
        stdin.write(data + b"\n")

    def _feed(self, data: bytes) -> None:
        if self._gone is not None:
            return  # read and dropped, so a server still writing can reach its exit
        if b"\n" not in data:
            self._buffer += data
            if len(self._buffer) > MAX_LINE_BYTES:
                self._buffer = b""
                self._lose(f"the server wrote a line longer than {MAX_LINE_BYTES} bytes")
                self._signal(signal.SIGKILL)
            return
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        for line in lines:
            if line.strip():
                self._receive(line)

    def _receive(self, line: bytes) -> None:
        try:
            # The standard library keeps integers past 64 bits exact, as the SDK's parser did.
            message = json.loads(line)
        except ValueError:
            log.warning("MCP server %s wrote a line that is not JSON (%d bytes)", self.name, len(line))
            return
        if isinstance(message, list):  # a batch (protocol 2025-03-26)
            for item in message:
                self._dispatch(item)
        else:
            self._dispatch(message)

    def _dispatch(self, message: Any) -> None:
        if not isinstance(message, dict):
            log.warning("MCP server %s wrote JSON that is not a JSON-RPC message; skipped", self.name)
            return
        method = message.get("method")
        if isinstance(method, str):
            if "id" in message:
                self._answer(message["id"], method)
            return  # a notification (progress, logging, list changes): nothing Interlock acts on
        request_id = message.get("id")
        answer = self._pending.pop(request_id, None) if type(request_id) is int else None
        if answer is None or answer.done():
            log.debug("MCP server %s answered a request that is not waiting; skipped", self.name)
            return
        if "result" in message:
            answer.set_result(message["result"])
            return
        error = message.get("error")
        if isinstance(error, dict) and type(error.get("code")) is int:
            answer.set_exception(RpcError(error["code"], str(error.get("message", "")), error.get("data")))
        else:
            answer.set_exception(MalformedMessage("a response with neither a result nor an error"))

    def _answer(self, request_id: Any, method: str) -> None:
        """A request from the server, answered at once."""
        if method == "ping":
            self._reply({"jsonrpc": "2.0", "id": request_id, "result": {}})
            return
        message = f"Interlock does not offer {method[:100]} to MCP servers"
        error = {"code": _METHOD_NOT_FOUND, "message": message}
        self._reply({"jsonrpc": "2.0", "id": request_id, "error": error})

    def _reply(self, message: dict[str, Any]) -> None:
        if self._gone is not None:
            return
        try:
            self._send(message)
        except (ConnectionLost, UpstreamError):  # the server's own id may not be JSON we can write
            log.debug("MCP server %s: could not answer its request", self.name)

    def _lose(self, why: str) -> None:
        if self._gone is None:
            self._gone = why
        pending, self._pending = self._pending, {}
        for answer in pending.values():
            if not answer.done():
                answer.set_exception(ConnectionLost(why))

    def _on_exit(self) -> None:
        if not self._exited.done():
            self._exited.set_result(None)
        code = self._transport.get_returncode() if self._transport is not None else None
        # Lines it wrote just before exiting may still be in the pipe; they get a moment to arrive.
        self._loop.call_later(_EXITED_DRAIN_S, self._lose, f"the server exited with code {code}")

    async def _wait_exit(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(asyncio.shield(self._exited), timeout)
        except TimeoutError:
            return False
        return True

    def _signal(self, sig: int) -> None:
        pid = self.pid
        if pid is None or self._exited.done():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)  # the child leads its own process group (start_new_session)


class _Pipes(asyncio.SubprocessProtocol):
    """The child's pipes, handed to their :class:`StdioUpstream` as the loop sees them."""

    def __init__(self, upstream: StdioUpstream) -> None:
        self._upstream = upstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Duck-typed: uvloop's process and pipe transports do not subclass asyncio's.
        process = cast(asyncio.SubprocessTransport, transport)
        self._upstream._transport = process
        self._upstream._stdin = cast(asyncio.WriteTransport, process.get_pipe_transport(0))

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self._upstream._feed(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self._upstream._lose("the server closed its stdout")
        elif fd == 0:
            self._upstream._lose("the server closed its stdin")

    def process_exited(self) -> None:
        self._upstream._on_exit()


__all__ = ["MAX_LINE_BYTES", "ConnectionLost", "MalformedMessage", "RpcError", "StdioUpstream"]
