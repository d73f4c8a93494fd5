"""The stdio MCP client against a real child process that speaks raw JSON-RPC from a script, so
each test can make the server do what SDK servers rarely do: ask the client things, write lines
that are not messages, crash in the middle of a call, ignore a call until it is withdrawn."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from interlock._internal.gateway.transports.mcp import McpTransport
from interlock._internal.manifest.models import McpServerSpec, ToolSpec
from interlock.exceptions import UpstreamError
from servers import call_context as ctx

SCRIPTED_SERVER = textwrap.dedent(
    r"""
    import json, os, sys, time

    VERSION = sys.argv[1] if len(sys.argv) > 1 else None
    NAMES = ["echo", "pid", "ask", "noisy", "broken", "refuse", "crash", "hang", "cancelled"]
    cancelled, hung = [], []

    def send(message):
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    def result(request_id, structured):
        content = [{"type": "text", "text": json.dumps(structured)}]
        return {"jsonrpc": "2.0", "id": request_id, "result": {"content": content, "structuredContent": structured}}

    def read():
        line = sys.stdin.readline()
        if not line:
            sys.exit(0)
        return json.loads(line)

    while True:
        message = read()
        method, request_id = message.get("method"), message.get("id")
        params = message.get("params") or {}
        if method == "initialize":
            send({"jsonrpc": "2.0", "id": request_id, "result": {
                "protocolVersion": VERSION or params["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "scripted", "version": "1"},
            }})
        elif method == "notifications/cancelled":
            cancelled.append(params)
        elif method == "tools/list":  # two pages
            first = params.get("cursor") is None
            names = NAMES[:4] if first else NAMES[4:]
            page = {"tools": [{"name": n, "inputSchema": {"type": "object"}} for n in names]}
            if first:
                page["nextCursor"] = "page-2"
            send({"jsonrpc": "2.0", "id": request_id, "result": page})
        elif method == "tools/call":
            name, arguments = params["name"], params.get("arguments") or {}
            if name == "echo":
                send(result(request_id, {"arguments": arguments, "meta": params.get("_meta")}))
            elif name == "pid":
                send(result(request_id, {"pid": os.getpid()}))
            elif name == "ask":  # requests of its own before it answers, and a notification
                asks = {"p-1": "ping", 2: "roots/list", 3: "sampling/createMessage", 4: "elicitation/create"}
                for ask_id, ask in asks.items():
                    send({"jsonrpc": "2.0", "id": ask_id, "method": ask, "params": {}})
                send({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "hi"}})
                answers = {}
                while len(answers) < len(asks):
                    reply = read()
                    answers[asks[reply["id"]]] = {k: reply[k] for k in ("result", "error") if k in reply}
                send(result(request_id, answers))
            elif name == "noisy":  # lines that are not answers, then the answer in two pieces
                for line in ["this is not json", '{"jsonrpc": "2.0"}', "[1, 2]", '"text"', "", "{broken"]:
                    sys.stdout.write(line + "\n")
                send({"jsonrpc": "2.0", "id": 9999, "result": {}})
                whole = json.dumps(result(request_id, {"noisy": True})) + "\n"
                sys.stdout.write(whole[:15])
                sys.stdout.flush()
                time.sleep(0.05)
                sys.stdout.write(whole[15:])
                sys.stdout.flush()
            elif name == "broken":
                send({"jsonrpc": "2.0", "id": request_id, "result": {"content": "not a list"}})
            elif name == "refuse":
                send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32000, "message": "no such ticket"}})
            elif name == "crash":
                os._exit(3)
            elif name == "hang":
                hung.append(request_id)  # never answered
            elif name == "cancelled":
                send(result(request_id, {"cancelled": cancelled, "hung": hung}))
    """
)


def tool(name: str, *, idempotent: bool = False) -> ToolSpec:
    return ToolSpec(
        name=name,
        verb="read",
        idempotent=idempotent,
        upstream={"kind": "mcp", "server": "scripted", "tool": name},
    )


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "scripted_server.py"
    path.write_text(SCRIPTED_SERVER)
    return path


@pytest.fixture
def transport(script: Path) -> Iterator[McpTransport]:
    t = McpTransport([McpServerSpec(name="scripted", command=[sys.executable, str(script)])])
    yield t
    t.close()


def pid_of(transport: McpTransport) -> int:
    return int(transport.call(tool("pid"), {}, ctx())["structured"]["pid"])


def test_tools_are_listed_across_pages(transport: McpTransport) -> None:
    names = [entry["name"] for entry in transport.list_tools("scripted")]
    assert names == ["echo", "pid", "ask", "noisy", "broken", "refuse", "crash", "hang", "cancelled"]


def test_a_call_carries_its_arguments_and_idempotency_key(transport: McpTransport) -> None:
    result = transport.call(tool("echo"), {"ticket": "T-1", "big": 2**70}, ctx())
    assert result["structured"]["arguments"] == {"ticket": "T-1", "big": 2**70}  # exact past 64 bits
    assert result["structured"]["meta"] == {"interlock/idempotency_key": "stp_test"}
    assert result["content"][0]["type"] == "text"


def test_requests_from_the_server_are_answered(transport: McpTransport) -> None:
    answers = transport.call(tool("ask"), {}, ctx())["structured"]
    assert answers["ping"] == {"result": {}}
    for method in ("roots/list", "sampling/createMessage", "elicitation/create"):
        assert answers[method]["error"]["code"] == -32601
        assert method in answers[method]["error"]["message"]


def test_lines_that_are_not_answers_are_skipped(
    transport: McpTransport, caplog: pytest.LogCaptureFixture
) -> None:
    result = transport.call(tool("noisy"), {}, ctx())
    assert result["structured"] == {"noisy": True}
    assert "not JSON" in caplog.text
    assert "this is not json" not in caplog.text  # the line itself may quote a secret
    assert transport.call(tool("echo"), {}, ctx())["structured"]["arguments"] == {}


def test_a_malformed_result_and_an_error_answer_are_upstream_errors(transport: McpTransport) -> None:
    before = pid_of(transport)
    with pytest.raises(UpstreamError, match="broken: MCP server scripted sent a malformed result"):
        transport.call(tool("broken"), {}, ctx())
    # -32000 is the server's own error, not the SDK's "connection closed": no reconnect, no retry.
    with pytest.raises(UpstreamError, match="refuse: MCP server scripted answered: no such ticket") as err:
        transport.call(tool("refuse", idempotent=True), {}, ctx())
    assert err.value.code == "upstream_error"
    assert pid_of(transport) == before


def test_a_crash_mid_call_fails_a_non_idempotent_call_and_the_next_call_restarts(
    transport: McpTransport,
) -> None:
    before = pid_of(transport)
    with pytest.raises(UpstreamError) as err:
        transport.call(tool("crash"), {}, ctx())
    assert err.value.code == "upstream_unavailable"
    assert "not retried because the tool is not idempotent" in err.value.message
    after = pid_of(transport)
    assert after != before


def test_a_crash_mid_call_retries_an_idempotent_call_once(transport: McpTransport) -> None:
    started = time.monotonic()
    with pytest.raises(UpstreamError) as err:
        transport.call(tool("crash", idempotent=True), {}, ctx())
    assert err.value.code == "upstream_unavailable"
    assert "lost the connection to MCP server scripted twice" in err.value.message
    assert time.monotonic() - started < 8  # noticed when stdout closed, not at the call's timeout
    assert pid_of(transport) > 0


def test_a_timed_out_call_is_withdrawn_and_the_session_survives(transport: McpTransport) -> None:
    before = pid_of(transport)
    started = time.monotonic()
    with pytest.raises(UpstreamError) as err:
        transport.call(tool("hang"), {}, ctx(timeout_s=0.3))
    assert err.value.code == "upstream_timeout"
    assert time.monotonic() - started < 3
    seen = transport.call(tool("cancelled"), {}, ctx())["structured"]
    [hung] = seen["hung"]
    assert seen["cancelled"] == [{"requestId": hung, "reason": "timed out"}]
    assert pid_of(transport) == before


def test_a_cancelled_caller_withdraws_its_call(transport: McpTransport) -> None:
    async def main() -> dict[str, Any]:
        call = asyncio.ensure_future(transport.call_async(tool("hang"), {}, ctx()))
        await asyncio.sleep(0.5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        result: dict[str, Any] = await transport.call_async(tool("cancelled"), {}, ctx())
        return result

    seen = asyncio.run(main())["structured"]
    [hung] = seen["hung"]
    assert seen["cancelled"] == [{"requestId": hung, "reason": "cancelled"}]


def test_an_older_protocol_version_is_negotiated(script: Path) -> None:
    t = McpTransport([McpServerSpec(name="scripted", command=[sys.executable, str(script), "2025-03-26"])])
    try:
        assert t.call(tool("echo"), {"a": 1}, ctx())["structured"]["arguments"] == {"a": 1}
    finally:
        t.close()


def test_a_protocol_version_interlock_does_not_speak_fails_to_connect(script: Path) -> None:
    t = McpTransport([McpServerSpec(name="scripted", command=[sys.executable, str(script), "1999-01-01"])])
    try:
        with pytest.raises(UpstreamError, match="protocol version '1999-01-01'") as err:
            t.call(tool("echo"), {}, ctx())
        assert err.value.code == "upstream_unavailable"
    finally:
        t.close()


def test_it_runs_on_uvloop_as_the_server_does(script: Path) -> None:
    uvloop = pytest.importorskip("uvloop")
    t = McpTransport([McpServerSpec(name="scripted", command=[sys.executable, str(script)])])

    async def main() -> tuple[Any, Any, int]:
        answers = await t.call_async(tool("ask"), {}, ctx())
        try:
            await t.call_async(tool("crash"), {}, ctx())
        except UpstreamError as exc:
            crashed = exc
        pid = (await t.call_async(tool("pid"), {}, ctx()))["structured"]["pid"]
        return answers, crashed, pid

    try:
        answers, crashed, pid = uvloop.run(main())
    finally:
        t.close()
    assert answers["structured"]["ping"] == {"result": {}}
    assert crashed.code == "upstream_unavailable"
    assert gone(pid)  # the loop's end stopped the server it held


def gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False
