"""The MCP gateway end to end: the official MCP client talks streamable HTTP to Interlock's app
on 127.0.0.1, and Interlock governs the real mcp-server-git (on a temporary repository) and
mcp-server-time behind it, as the git-ops example manifest declares."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import pytest
from sqlalchemy import select

from conftest import _require_pg, fresh_pg_url
from interlock._internal.api.mcp_gateway import build_mcp_app, visible_tools
from interlock._internal.gateway.runtime import build_runtime
from interlock._internal.manifest.loader import load_manifest
from interlock._internal.store import tables as t
from servers import free_port

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
GIT_OPS = REPO_ROOT / "examples" / "git-ops" / "workflow.yaml"
SUPPORT_TRIAGE = REPO_ROOT / "examples" / "support-triage" / "workflow.yaml"
GIT_ENV = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull}

T = TypeVar("T")


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], check=True, env=GIT_ENV, capture_output=True, text=True
    )
    return done.stdout


@dataclass
class Gateway:
    url: str
    tokens: dict[str, str]
    repo: Path
    il: Any

    def run(
        self,
        agent: str,
        fn: Callable[[Any], Awaitable[T]],
        *,
        headers: dict[str, str] | None = None,
        mode: str = "auto",
    ) -> T:
        """Open one MCP client session as ``agent`` and run ``fn(client)`` in it."""
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        async def main() -> T:
            auth = {"Authorization": f"Bearer {self.tokens[agent]}", **(headers or {})}
            async with (
                httpx2.AsyncClient(headers=auth, timeout=httpx2.Timeout(30.0, read=60.0)) as http,
                Client(streamable_http_client(self.url, http_client=http), cache=None, mode=mode) as client,
            ):
                return await fn(client)

        return anyio.run(main)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The gateway once per database: the same calls, governed on SQLite and on PostgreSQL."""
    with ExitStack() as stack:
        base = tmp_path_factory.mktemp("gateway")
        if request.param == "sqlite":
            db_url = f"sqlite:///{base / 'interlock.db'}"
        else:
            _require_pg()
            db_url = stack.enter_context(contextmanager(fresh_pg_url)())
        yield from _serve_gateway(base, db_url)


def _serve_gateway(base: Path, db_url: str) -> Iterator[Gateway]:
    import uvicorn

    from interlock import Interlock, Settings
    from interlock._internal.gateway.transports.mcp import McpTransport
    from interlock._internal.server import MCP_PATH, create_app

    repo = base / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "dev@example.com")
    git(repo, "config", "user.name", "Dev")
    (repo / "README.md").write_text("hello\n")
    git(repo, "add", "README.md")
    git(repo, "commit", "-q", "-m", "initial commit")

    # The example as shipped, with this interpreter standing in for "python" on PATH.
    manifest = base / "workflow.yaml"
    manifest.write_text(
        GIT_OPS.read_text().replace("command: [python, ", f"command: [{json.dumps(sys.executable)}, ")
    )

    il = Interlock(Settings(database={"url": db_url}))
    il.migrate()
    runtime = il.load_workflow(manifest)
    if "mcp" not in runtime.transports:  # until build_runtime registers the MCP transport itself
        runtime.transports["mcp"] = McpTransport(runtime.manifest.mcp_servers, cwd=runtime.loaded.base_dir)
    tokens = {}
    for agent in runtime.manifest.agents:
        creds = il.agents.create(agent.id, workflow=runtime.name, environment=agent.environment, actor="test")
        tokens[agent.id] = il.issue_token(creds.client_id, creds.client_secret).token

    app = create_app(interlock=il)
    if not any(getattr(route, "path", None) == MCP_PATH for route in app.routes):
        # Until create_app mounts the gateway itself: exactly what mount_extras is meant to do.
        mcp_gateway = build_mcp_app(il)
        app.add_route(MCP_PATH, mcp_gateway, include_in_schema=False)
        outer = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(a: Any) -> AsyncIterator[None]:
            async with outer(a), mcp_gateway.lifespan():
                yield

        app.router.lifespan_context = lifespan

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield Gateway(url=f"http://127.0.0.1:{port}{MCP_PATH}", tokens=tokens, repo=repo, il=il)
    finally:
        server.should_exit = True
        thread.join(15)
        il.close()


def text_of(result: Any) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


# ---- authentication ---------------------------------------------------------------------------


def test_no_or_bad_token_is_401_before_mcp(gateway: Gateway) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream"}
    missing = httpx.post(gateway.url, json=body, headers=headers)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer ")
    assert missing.json()["error"]["code"] == "unauthenticated"
    bad = httpx.post(gateway.url, json=body, headers={**headers, "Authorization": "Bearer not-a-token"})
    assert bad.status_code == 401
    assert 'error="invalid_token"' in bad.headers["www-authenticate"]


# ---- tools/list -------------------------------------------------------------------------------


def test_tools_list_shows_what_policy_lets_each_agent_see(gateway: Gateway) -> None:
    async def names(client: Any) -> dict[str, Any]:
        return {tool.name: tool for tool in (await client.list_tools()).tools}

    bot = gateway.run("git-bot", names)
    reader = gateway.run("git-reader", names)
    assert set(bot) == {
        "git_status",
        "git_log",
        "git_diff_unstaged",
        "git_add",
        "git_commit",
        "get_current_time",
    }
    assert "git_reset" not in bot  # forbidden outright by rule no-reset
    assert set(reader) == {"git_status", "git_log", "git_diff_unstaged", "get_current_time"}
    status = bot["git_status"]
    assert status.description == "Shows the working tree status"
    assert status.input_schema["required"] == ["repo_path"]
    assert status.input_schema["additionalProperties"] is False
    assert status.annotations.read_only_hint is True
    assert bot["git_commit"].annotations.read_only_hint is False


def test_visible_tools_hides_ungranted_and_unconditionally_forbidden_tools() -> None:
    runtime = build_runtime(load_manifest(SUPPORT_TRIAGE))
    bot = [spec.name for spec in visible_tools(runtime, "triage-bot")]
    assert "customers.delete" not in bot  # granted by role, but forbidden without a condition
    assert "payments.refund" in bot  # forbidden only above 500: still callable, so visible
    assert "emails.send" in bot  # needs approval: visible
    reporter = [spec.name for spec in visible_tools(runtime, "reporter")]
    assert reporter == ["tickets.search", "tickets.get", "customers.get"]
    assert visible_tools(runtime, "nobody") == []
    assert visible_tools(runtime, "triage-bot", environment="staging") == []


# ---- tools/call -------------------------------------------------------------------------------


def test_reads_are_allowed_and_recorded_on_one_implicit_run(gateway: Gateway) -> None:
    repo = str(gateway.repo)

    async def session(client: Any) -> list[Any]:
        return [
            await client.call_tool("git_status", {"repo_path": repo}),
            await client.call_tool("git_log", {"repo_path": repo, "max_count": 5}),
            await client.call_tool("get_current_time", {"timezone": "Etc/UTC"}),
        ]

    status, log, now = gateway.run("git-bot", session)
    for result in (status, log, now):
        assert result.is_error is False, text_of(result)
        assert result.meta["interlock/status"] == "executed"
    assert "On branch main" in text_of(status)
    assert "initial commit" in text_of(log)
    assert now.structured_content["timezone"] == "Etc/UTC"
    run_ids = {r.meta["interlock/run_id"] for r in (status, log, now)}
    assert len(run_ids) == 1
    view = gateway.il.get_run(run_ids.pop())
    assert view.trigger == {"source": "mcp"}
    assert [step.tool for step in view.steps_detail] == ["git_status", "git_log", "get_current_time"]
    assert all(step.status == "executed" for step in view.steps_detail)


def test_a_commit_waits_for_approval_and_nothing_is_committed(gateway: Gateway) -> None:
    repo = gateway.repo
    (repo / "feature.txt").write_text("new work\n")

    async def session(client: Any) -> tuple[Any, Any]:
        added = await client.call_tool("git_add", {"repo_path": str(repo), "files": ["feature.txt"]})
        commit = await client.call_tool("git_commit", {"repo_path": str(repo), "message": "Add feature"})
        return added, commit

    added, commit = gateway.run("git-bot", session)
    assert added.is_error is False, text_of(added)
    assert commit.is_error is False
    approval_id = commit.meta["interlock/approval_id"]
    assert approval_id.startswith("apr")
    assert "Awaiting approval" in text_of(commit)
    assert approval_id in text_of(commit)
    assert commit.structured_content["status"] == "pending_approval"
    assert git(repo, "rev-list", "--count", "HEAD").strip() == "1"
    assert "feature.txt" in git(repo, "diff", "--cached", "--name-only")
    with gateway.il.engine.connect() as conn:
        row = conn.execute(select(t.approvals).where(t.approvals.c.id == approval_id)).mappings().one()
    assert row["state"] == "pending"
    assert row["tool"] == "git_commit"


def test_a_hidden_tool_is_exactly_an_unknown_tool(gateway: Gateway) -> None:
    from mcp import MCPError

    repo = gateway.repo
    (repo / "keep.txt").write_text("staged by a person\n")
    git(repo, "add", "keep.txt")

    async def attempt(client: Any, name: str, args: dict[str, Any]) -> Any:
        try:
            await client.call_tool(name, args)
        except MCPError as exc:
            return exc.error.model_dump(exclude_none=True)
        raise AssertionError(f"{name} answered with a tool result")

    async def session(client: Any) -> list[Any]:
        return [
            await attempt(client, "git_reset", {"repo_path": str(repo)}),  # forbidden outright
            await attempt(client, "git_nonexistent", {"repo_path": str(repo)}),
        ]

    reset, missing = gateway.run("git-bot", session)
    assert reset == {"code": -32602, "message": "Unknown tool: git_reset"}
    assert missing == {"code": -32602, "message": "Unknown tool: git_nonexistent"}
    assert "keep.txt" in git(repo, "diff", "--cached", "--name-only")

    async def commit(client: Any) -> Any:
        return await attempt(client, "git_commit", {"repo_path": str(repo), "message": "sneaky"})

    # A tool the reader's role does not grant is as unknown to it as one that does not exist.
    assert gateway.run("git-reader", commit) == {"code": -32602, "message": "Unknown tool: git_commit"}
    assert git(repo, "rev-list", "--count", "HEAD").strip() == "1"


def test_invalid_arguments_name_the_field(gateway: Gateway) -> None:
    async def session(client: Any) -> tuple[Any, Any]:
        unknown = await client.call_tool("git_status", {"repo_path": str(gateway.repo), "verbose": True})
        missing = await client.call_tool("git_log", {"max_count": 3})
        return unknown, missing

    unknown, missing = gateway.run("git-bot", session)
    assert unknown.is_error is True
    assert text_of(unknown).startswith("Invalid arguments:")
    assert "verbose" in text_of(unknown)
    assert missing.is_error is True
    assert "repo_path" in text_of(missing)


def test_the_run_can_be_named_by_meta_or_header(gateway: Gateway) -> None:
    token = gateway.tokens["git-bot"]
    by_meta = gateway.il.start_run(token, trigger={"source": "test"}).id
    by_header = gateway.il.start_run(token, trigger={"source": "test"}).id

    async def session(client: Any) -> tuple[Any, Any, Any]:
        args = {"repo_path": str(gateway.repo)}
        first = await client.call_tool("git_status", args, meta={"interlock/run_id": by_meta})
        second = await client.call_tool("git_status", args)
        foreign = await client.call_tool("git_status", args, meta={"interlock/run_id": "run_nope"})
        return first, second, foreign

    first, second, foreign = gateway.run("git-bot", session, headers={"Interlock-Run-Id": by_header})
    assert first.meta["interlock/run_id"] == by_meta
    assert second.meta["interlock/run_id"] == by_header
    assert foreign.is_error is True
    assert "unknown_run" in text_of(foreign)


def test_handshake_era_sessions_each_get_their_own_run(gateway: Gateway) -> None:
    async def session(client: Any) -> tuple[str, list[str]]:
        args = {"repo_path": str(gateway.repo)}
        results = [await client.call_tool("git_status", args) for _ in range(2)]
        return client.protocol_version, [r.meta["interlock/run_id"] for r in results]

    version, first = gateway.run("git-reader", session, mode="legacy")
    _, second = gateway.run("git-reader", session, mode="legacy")
    assert not version.startswith("2026")  # an initialize handshake, with an Mcp-Session-Id
    assert first[0] == first[1]
    assert second[0] == second[1]
    assert first[0] != second[0]


def test_sessionless_connections_share_one_run_per_token(gateway: Gateway) -> None:
    async def session(client: Any) -> tuple[str, str]:
        result = await client.call_tool("get_current_time", {"timezone": "Europe/Paris"})
        return client.protocol_version, result.meta["interlock/run_id"]

    version, first = gateway.run("git-reader", session)
    _, second = gateway.run("git-reader", session)
    assert version.startswith("2026")  # no initialize handshake, no Mcp-Session-Id
    assert first == second


def test_a_session_belongs_to_the_agent_that_opened_it(gateway: Gateway) -> None:
    version = "2025-11-25"
    base = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    with httpx.Client(timeout=10) as http:
        opened = http.post(
            gateway.url, json=init, headers={**base, "Authorization": f"Bearer {gateway.tokens['git-bot']}"}
        )
        assert opened.status_code == 200
        session_id = opened.headers["mcp-session-id"]
        in_session = {**base, "Mcp-Session-Id": session_id, "MCP-Protocol-Version": version}
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
        hijack = http.post(
            gateway.url,
            json=listing,
            headers={**in_session, "Authorization": f"Bearer {gateway.tokens['git-reader']}"},
        )
        owner = http.post(
            gateway.url,
            json=listing,
            headers={**in_session, "Authorization": f"Bearer {gateway.tokens['git-bot']}"},
        )
    assert hijack.status_code == 404
    assert owner.status_code == 200
    assert "git_commit" in owner.text
