"""The MCP upstream transport against real MCP servers: mcp-server-git and mcp-server-time over
stdio, a small SDK server over streamable HTTP on 127.0.0.1, and a slow stdio server for timeouts."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from interlock._internal.gateway.transports.mcp import (
    McpTransport,
    import_mcp_tools,
    normalise_input_schema,
    result_schema,
)
from interlock._internal.manifest.models import McpServerSpec, ToolSpec
from interlock.exceptions import ConfigError, UpstreamError
from servers import call_context as ctx
from servers import free_port

GIT_MAP = {
    "git_status": {"verb": "read", "idempotent": True},
    "git_log": {"verb": "read", "idempotent": True},
    "git_commit": {"verb": "create", "traits": ["write"]},
}

SLOW_SERVER = textwrap.dedent(
    """
    import asyncio, time
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("slow")

    @server.tool()
    def nap(seconds: float) -> str:
        time.sleep(seconds)
        return "rested"

    asyncio.run(server.run_stdio_async())
    """
)


# ---- helpers ----------------------------------------------------------------------------------


def children(marker: str) -> list[int]:
    """Live child processes of this test process whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == os.getpid() and state != "Z" and marker in cmdline:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull}
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True, env=env)
    (path / "README.md").write_text("hello\n")
    for args in (
        ["config", "user.email", "dev@example.com"],
        ["config", "user.name", "Dev"],
        ["add", "README.md"],
        ["commit", "-q", "-m", "initial commit"],
    ):
        subprocess.run(["git", "-C", str(path), *args], check=True, env=env)
    return path


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("upstream") / "repo")


@pytest.fixture(scope="module")
def transport(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpTransport]:
    """One transport (and so one git and one time server) for the whole module."""
    slow = tmp_path_factory.mktemp("slow") / "slow_server.py"
    slow.write_text(SLOW_SERVER)
    servers = [
        McpServerSpec(name="git", command=[sys.executable, "-m", "mcp_server_git"]),
        McpServerSpec(name="time", command=[sys.executable, "-m", "mcp_server_time"]),
        McpServerSpec(name="slow", command=[sys.executable, str(slow)]),
    ]
    t = McpTransport(servers)
    yield t
    t.close()


@pytest.fixture(scope="module")
def git_tools(transport: McpTransport) -> dict[str, ToolSpec]:
    return {spec.name: spec for spec in import_mcp_tools(transport.list_tools("git"), GIT_MAP, server="git")}


# ---- sessions ---------------------------------------------------------------------------------


def test_calls_reuse_one_session_and_one_child(
    transport: McpTransport, git_tools: dict[str, ToolSpec], repo: Path
) -> None:
    first = transport.call(git_tools["git_status"], {"repo_path": str(repo)}, ctx())
    pids = children("mcp_server_git")
    assert len(pids) == 1
    log = transport.call(git_tools["git_log"], {"repo_path": str(repo)}, ctx())
    again = transport.call(git_tools["git_status"], {"repo_path": str(repo)}, ctx())
    assert children("mcp_server_git") == pids
    assert first == again
    assert first["structured"] is None
    assert first["content"][0]["type"] == "text"
    assert "working tree clean" in first["content"][0]["text"]
    assert "initial commit" in log["content"][0]["text"]


def test_a_killed_server_is_restarted_and_an_idempotent_call_retried(
    transport: McpTransport, git_tools: dict[str, ToolSpec], repo: Path
) -> None:
    transport.call(git_tools["git_status"], {"repo_path": str(repo)}, ctx())
    [old] = children("mcp_server_git")
    os.kill(old, signal.SIGKILL)
    assert wait_gone(old)
    result = transport.call(git_tools["git_status"], {"repo_path": str(repo)}, ctx())
    assert "working tree clean" in result["content"][0]["text"]
    [new] = children("mcp_server_git")
    assert new != old


def test_a_non_idempotent_call_is_not_retried_but_the_next_call_reconnects(
    transport: McpTransport, git_tools: dict[str, ToolSpec], repo: Path
) -> None:
    transport.call(git_tools["git_status"], {"repo_path": str(repo)}, ctx())
    [old] = children("mcp_server_git")
    os.kill(old, signal.SIGKILL)
    assert wait_gone(old)
    with pytest.raises(UpstreamError) as err:
        transport.call(git_tools["git_commit"], {"repo_path": str(repo), "message": "never"}, ctx())
    assert err.value.code == "upstream_unavailable"
    assert "not idempotent" in err.value.message
    result = transport.call(git_tools["git_log"], {"repo_path": str(repo)}, ctx())
    assert "never" not in result["content"][0]["text"]
    assert len(children("mcp_server_git")) == 1


def test_a_tool_error_result_becomes_an_upstream_error(
    transport: McpTransport, git_tools: dict[str, ToolSpec], tmp_path: Path
) -> None:
    with pytest.raises(UpstreamError) as err:
        transport.call(git_tools["git_status"], {"repo_path": str(tmp_path / "nope")}, ctx())
    assert err.value.code == "upstream_error"
    assert err.value.message.startswith("git_status: ")
    assert "nope" in err.value.message


def test_structured_content_is_returned_as_plain_json(transport: McpTransport) -> None:
    [spec] = import_mcp_tools(
        transport.list_tools("time"),
        {"get_current_time": {"verb": "read", "idempotent": True}},
        server="time",
    )
    result = transport.call(spec, {"timezone": "Etc/UTC"}, ctx())
    assert result["structured"]["timezone"] == "Etc/UTC"
    assert isinstance(result["structured"]["is_dst"], bool)
    assert result["content"][0]["type"] == "text"
    # The imported output schema describes exactly this envelope.
    import jsonschema

    assert spec.output_schema is not None
    jsonschema.validate(result, spec.output_schema)


def test_a_slow_call_times_out_and_the_session_survives(transport: McpTransport) -> None:
    [nap] = import_mcp_tools(transport.list_tools("slow"), {"nap": {"verb": "read"}}, server="slow")
    started = time.monotonic()
    with pytest.raises(UpstreamError) as err:
        transport.call(nap, {"seconds": 2}, ctx(timeout_s=0.5))
    assert err.value.code == "upstream_timeout"
    assert time.monotonic() - started < 1.8
    assert transport.call(nap, {"seconds": 0}, ctx())["content"][0]["text"] == "rested"


def test_an_unknown_server_is_a_config_error(transport: McpTransport) -> None:
    spec = ToolSpec(name="x", verb="read", upstream={"kind": "mcp", "server": "ghost", "tool": "x"})
    with pytest.raises(ConfigError, match="ghost"):
        transport.call(spec, {}, ctx())


def test_close_stops_every_child_process(repo: Path) -> None:
    t = McpTransport([McpServerSpec(name="git", command=[sys.executable, "-m", "mcp_server_git", "-v"])])
    specs = import_mcp_tools(t.list_tools("git"), {"git_status": {"verb": "read"}}, server="git")
    t.call(specs[0], {"repo_path": str(repo)}, ctx())
    [pid] = children("mcp_server_git -v")
    t.close()
    assert wait_gone(pid, timeout=1.0)
    assert t._thread is not None
    assert not t._thread.is_alive()
    with pytest.raises(UpstreamError, match="closed"):
        t.call(specs[0], {"repo_path": str(repo)}, ctx())
    t.close()  # idempotent


# ---- streamable HTTP upstream, with an injected credential -------------------------------------


@pytest.fixture(scope="module")
def http_upstream() -> Iterator[str]:
    import uvicorn
    from mcp.server.mcpserver import MCPServer
    from starlette.responses import PlainTextResponse

    server = MCPServer("echo")

    @server.tool()
    def echo(text: str) -> str:
        return text.upper()

    inner = server.streamable_http_app()

    async def guarded(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http" and dict(scope["headers"]).get(b"x-api-key") != b"Key s3cret":
            await PlainTextResponse("no", status_code=401)(scope, receive, send)
            return
        await inner(scope, receive, send)

    port = free_port()
    config = uvicorn.Config(guarded, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    web = uvicorn.Server(config)
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not web.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert web.started
    yield f"http://127.0.0.1:{port}/mcp"
    web.should_exit = True
    thread.join(10)


def test_http_upstream_gets_the_injected_credential(http_upstream: str) -> None:
    t = McpTransport([McpServerSpec(name="echo", url=http_upstream)])
    try:
        tools = t.list_tools("echo", headers={"X-Api-Key": "Key s3cret"})
        [spec] = import_mcp_tools(
            tools,
            {
                "echo": {
                    "verb": "read",
                    "credential": {"env": "ECHO_KEY", "header": "X-Api-Key", "scheme": "Key"},
                }
            },
            server="echo",
        )
        result = t.call(spec, {"text": "hi"}, ctx(credential="s3cret"))
        assert result["content"][0]["text"] == "HI"
        with pytest.raises(UpstreamError, match="echo"):
            t.call(spec, {"text": "hi"}, ctx(credential="wrong"))
    finally:
        t.close()


# ---- importing tools (pure) -------------------------------------------------------------------


def test_import_uses_the_upstream_schema_closed_to_unknown_fields(git_tools: dict[str, ToolSpec]) -> None:
    status = git_tools["git_status"]
    assert status.verb == "read"
    assert status.idempotent is True
    assert status.description == "Shows the working tree status"
    assert status.upstream is not None
    assert status.upstream.model_dump() == {"kind": "mcp", "server": "git", "tool": "git_status"}
    assert status.input_schema["additionalProperties"] is False
    assert status.input_schema["required"] == ["repo_path"]
    assert git_tools["git_commit"].traits == ["write"]
    assert git_tools["git_commit"].idempotent is False
    assert set(git_tools) == set(GIT_MAP)  # only mapped tools are imported


def test_import_errors_name_the_tool() -> None:
    upstream = [{"name": "git_status", "description": "", "inputSchema": {"type": "object"}}]
    with pytest.raises(ConfigError, match="did you mean 'git_status'"):
        import_mcp_tools(upstream, {"git_stat": {"verb": "read"}}, server="git")
    with pytest.raises(ConfigError, match="git_status.*verb"):
        import_mcp_tools(upstream, {"git_status": {"traits": ["write"]}}, server="git")
    with pytest.raises(ConfigError, match="input_schema comes from the server"):
        import_mcp_tools(upstream, {"git_status": {"verb": "read", "input_schema": {}}}, server="git")
    with pytest.raises(ConfigError, match="name"):
        import_mcp_tools(
            [{"name": "a/b", "inputSchema": {"type": "object"}}], {"a/b": {"verb": "read"}}, server="git"
        )
    [renamed] = import_mcp_tools(
        [{"name": "a/b", "inputSchema": {"type": "object"}}],
        {"a/b": {"verb": "read", "name": "a_b"}},
        server="s",
    )
    assert renamed.name == "a_b"
    assert renamed.upstream is not None
    assert renamed.upstream.model_dump()["tool"] == "a/b"


def test_normalise_closes_objects_but_not_allof_members() -> None:
    schema = {
        "properties": {
            "nested": {"type": "object", "properties": {"a": {"type": "string"}}},
            "open": {"type": "object", "properties": {}, "additionalProperties": True},
            "list": {"type": "array", "items": {"type": "object", "properties": {"b": {}}}},
            "either": {"anyOf": [{"type": "object", "properties": {"c": {}}}, {"type": "null"}]},
            "merged": {"allOf": [{"properties": {"d": {}}}, {"properties": {"e": {}}}]},
        },
        "$defs": {"Thing": {"type": "object", "properties": {"f": {}}}},
    }
    out = normalise_input_schema(schema)
    assert out["type"] == "object"
    assert out["additionalProperties"] is False
    props = out["properties"]
    assert props["nested"]["additionalProperties"] is False
    assert props["open"]["additionalProperties"] is True
    assert props["list"]["items"]["additionalProperties"] is False
    assert props["either"]["anyOf"][0]["additionalProperties"] is False
    assert all("additionalProperties" not in m for m in props["merged"]["allOf"])
    assert out["$defs"]["Thing"]["additionalProperties"] is False
    assert "additionalProperties" not in schema  # the input is not modified


def test_result_schema_hoists_definitions() -> None:
    out = result_schema({"$defs": {"T": {"type": "string"}}, "properties": {"t": {"$ref": "#/$defs/T"}}})
    assert out["$defs"] == {"T": {"type": "string"}}
    assert out["properties"]["structured"] == {"properties": {"t": {"$ref": "#/$defs/T"}}}
    assert out["required"] == ["content", "structured"]


# ---- which loop holds the sessions ----------------------------------------------------------------

TIME_TOOL = ToolSpec.model_validate(
    {
        "name": "get_current_time",
        "verb": "read",
        "idempotent": True,
        "input_schema": {"type": "object", "properties": {"timezone": {"type": "string"}}},
        "upstream": {"kind": "mcp", "server": "time", "tool": "get_current_time"},
    }
)
UTC = {"timezone": "Etc/UTC"}


def loop_threads() -> int:
    return sum(thread.name == "interlock-mcp" for thread in threading.enumerate())


def new_time_servers(known: set[int]) -> list[int]:
    """Time servers started since ``known`` was taken (the module's shared transport has one)."""
    return [pid for pid in children("mcp_server_time") if pid not in known]


def test_an_async_caller_awaits_the_session_on_its_own_loop_and_sync_callers_share_it() -> None:
    transport = McpTransport([McpServerSpec(name="time", command=[sys.executable, "-m", "mcp_server_time"])])
    before = loop_threads()
    known = set(children("mcp_server_time"))

    async def main() -> tuple[Any, Any, Any]:
        first = await transport.call_async(TIME_TOOL, UTC, ctx())
        # A synchronous caller in a worker thread reaches the same session, on this loop.
        from_thread = await asyncio.to_thread(transport.call, TIME_TOOL, UTC, ctx())
        # Blocking this loop's own thread for an answer it must produce would hang: refused.
        with pytest.raises(UpstreamError, match="synchronously on the event loop"):
            transport.call(TIME_TOOL, UTC, ctx())
        return first, from_thread, new_time_servers(known)

    try:
        first, from_thread, pids = asyncio.run(main())
        assert first["structured"]["timezone"] == from_thread["structured"]["timezone"] == "Etc/UTC"
        assert len(pids) == 1
        assert loop_threads() == before  # no loop thread of the transport's own
        assert wait_gone(pids[0])  # the loop's end cancelled the session, which stopped its server
        # The loop is gone: a synchronous call now opens a session on a loop thread of its own.
        later = transport.call(TIME_TOOL, UTC, ctx())
        assert later["structured"]["timezone"] == "Etc/UTC"
        assert loop_threads() == before + 1
    finally:
        transport.close()
    assert loop_threads() == before


def test_an_async_caller_is_bridged_to_a_loop_thread_that_holds_the_sessions() -> None:
    transport = McpTransport([McpServerSpec(name="time", command=[sys.executable, "-m", "mcp_server_time"])])
    try:
        known = set(children("mcp_server_time"))
        transport.call(TIME_TOOL, UTC, ctx())  # a synchronous caller came first: a loop thread
        pids = new_time_servers(known)
        assert len(pids) == 1

        async def main() -> Any:
            return await transport.call_async(TIME_TOOL, UTC, ctx())

        assert asyncio.run(main())["structured"]["timezone"] == "Etc/UTC"
        assert new_time_servers(known) == pids  # the same session, on the transport's loop
    finally:
        transport.close()
    assert all(wait_gone(pid) for pid in pids)
