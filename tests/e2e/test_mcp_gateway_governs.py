"""The MCP gateway's tools/call runs the pipeline on the request's own event loop, awaiting the
upstream MCP session there (no worker thread, no loop of the transport's own). These tests show
that this path still governs, on SQLite and PostgreSQL: the official MCP client talks streamable
HTTP to Interlock on 127.0.0.1, and Interlock governs the real mcp-server-time and mcp-server-git
over stdio behind it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from sqlalchemy import select

from interlock._internal.gateway import pipeline as pipeline_module
from interlock._internal.gateway.transports.mcp import McpTransport
from interlock._internal.store import tables as t
from servers import LiveServer

pytestmark = pytest.mark.e2e

T = TypeVar("T")
UTC = {"timezone": "Etc/UTC"}
GIT_ENV = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_SYSTEM": os.devnull}

MANIFEST = """
name: mcp-governed
version: "1"
owner: platform@example.com
objective: govern MCP tools called through the gateway
success_metric: {{name: calls governed}}
environments: [local]
mcp_servers:
  - {{name: time, command: [{python}, -m, mcp_server_time]}}
  - {{name: git, command: [{python}, -m, mcp_server_git]}}
agents:
  - {{id: bot, environment: local, roles: [worker]}}
roles:
  worker: {{verbs: [read, create]}}
tools:
  - name: get_current_time
    verb: read
    idempotent: true
    input_schema:
      type: object
      properties: {{timezone: {{type: string}}}}
      required: [timezone]
      additionalProperties: false
    upstream: {{kind: mcp, server: time, tool: get_current_time}}
  - name: git_commit
    verb: create
    traits: [write]
    input_schema:
      type: object
      properties: {{repo_path: {{type: string}}, message: {{type: string, minLength: 1}}}}
      required: [repo_path, message]
      additionalProperties: false
    upstream: {{kind: mcp, server: git, tool: git_commit}}
rules:
  allow:
    - {{id: reads, verb: read}}
    - {{id: commits, tool: git_commit}}
  forbid:
    - {{id: not-tokyo, tool: get_current_time, when: 'timezone == "Asia/Tokyo"'}}
stop_rules:
  - {{id: unsure, kind: low_confidence, threshold: 0.5}}
"""


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], check=True, env=GIT_ENV, capture_output=True, text=True
    )
    return done.stdout


@dataclass
class Served:
    url: str
    token: str
    il: Any
    repo: Path

    def run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Open one MCP client session as the agent and run ``fn(client)`` in it."""
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        async def main() -> T:
            auth = {"Authorization": f"Bearer {self.token}"}
            async with (
                httpx2.AsyncClient(headers=auth, timeout=httpx2.Timeout(30.0, read=60.0)) as http,
                Client(streamable_http_client(self.url, http_client=http), cache=None) as client,
            ):
                return await fn(client)

        return anyio.run(main)

    def call(self, tool: str, arguments: dict[str, Any], meta: dict[str, Any] | None = None) -> Any:
        async def one(client: Any) -> Any:
            return await client.call_tool(tool, arguments, meta=meta)

        return self.run(one)

    def rows(self, table: Any, **where: Any) -> list[Any]:
        query = select(table)
        for column, value in where.items():
            query = query.where(table.c[column] == value)
        with self.il.engine.connect() as conn:
            return list(conn.execute(query).mappings())


@pytest.fixture
def served(db_url: str, tmp_path: Path) -> Iterator[Served]:

    from interlock import Interlock, Settings
    from interlock._internal.server import create_app

    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "dev@example.com")
    git(repo, "config", "user.name", "Dev")
    (repo / "README.md").write_text("hello\n")
    git(repo, "add", "README.md")
    git(repo, "commit", "-q", "-m", "initial commit")
    manifest = tmp_path / "workflow.yaml"
    manifest.write_text(MANIFEST.format(python=json.dumps(sys.executable)))

    il = Interlock(Settings(database={"url": db_url}))
    il.migrate()
    runtime = il.load_workflow(manifest)
    creds = il.agents.create("bot", workflow=runtime.name, environment="local", actor="test")
    token = il.issue_token(creds.client_id, creds.client_secret).token

    try:
        with LiveServer(create_app(interlock=il)) as base:
            yield Served(url=f"{base}/mcp", token=token, il=il, repo=repo)
    finally:
        il.close()


def text_of(result: Any) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


def test_an_allowed_call_is_journaled_before_it_leaves_and_recorded_after(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    original = McpTransport.call_async

    async def watching(self: McpTransport, tool: Any, arguments: Any, ctx: Any) -> Any:
        # What the journal says at the moment the call leaves for the upstream.
        seen.extend(row["state"] for row in served.rows(t.executions, id=ctx.step_id))
        return await original(self, tool, arguments, ctx)

    monkeypatch.setattr(McpTransport, "call_async", watching)
    result = served.call("get_current_time", UTC)

    assert result.is_error is False, text_of(result)
    assert result.meta["interlock/status"] == "executed"
    assert result.structured_content["timezone"] == "Etc/UTC"
    assert seen == ["executing"]
    step_id = result.meta["interlock/step_id"]
    (execution,) = served.rows(t.executions, id=step_id)
    assert execution["state"] == "done"
    assert execution["finished_at"] is not None
    (step,) = served.rows(t.steps, id=step_id)
    assert step["status"] == "executed"
    assert step["result"]["structured"]["timezone"] == "Etc/UTC"
    kinds = [row["kind"] for row in served.rows(t.audit_events, run_id=result.meta["interlock/run_id"])]
    assert "action.executed" in kinds
    assert served.il.verify_audit().ok
    # The session lives on the server's loop: the transport started no loop thread of its own.
    assert "interlock-mcp" not in {thread.name for thread in threading.enumerate()}


def test_denied_and_escalated_calls_never_reach_the_upstream(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    original = McpTransport.call_async

    async def counting(self: McpTransport, tool: Any, arguments: Any, ctx: Any) -> Any:
        calls.append(tool.name)
        return await original(self, tool, arguments, ctx)

    monkeypatch.setattr(McpTransport, "call_async", counting)

    async def session(client: Any) -> tuple[Any, Any]:
        denied = await client.call_tool("get_current_time", {"timezone": "Asia/Tokyo"})
        unsure = await client.call_tool("get_current_time", UTC, meta={"interlock/confidence": 0.1})
        return denied, unsure

    denied, unsure = served.run(session)
    assert denied.is_error is True
    assert denied.meta["interlock/status"] == "denied"
    assert "not-tokyo" in text_of(denied)
    assert unsure.is_error is True
    assert unsure.meta["interlock/status"] == "escalated"
    assert "unsure" in text_of(unsure)
    assert calls == []
    for result, status in ((denied, "denied"), (unsure, "escalated")):
        (step,) = served.rows(t.steps, id=result.meta["interlock/step_id"])
        assert step["status"] == status
        assert served.rows(t.executions, id=result.meta["interlock/step_id"]) == []


def test_a_retried_call_runs_exactly_once(served: Served) -> None:
    meta = {"interlock/idempotency_key": "once-1"}

    async def session(client: Any) -> list[Any]:
        return [await client.call_tool("get_current_time", UTC, meta=meta) for _ in range(3)]

    results = served.run(session)
    assert {r.meta["interlock/status"] for r in results} == {"executed"}
    assert len({r.meta["interlock/step_id"] for r in results}) == 1
    # The clock moved on between the calls; the same answer means one upstream call, replayed.
    assert len({r.structured_content["datetime"] for r in results}) == 1
    assert len(served.rows(t.executions, idempotency_key="once-1")) == 1


def test_a_non_idempotent_call_runs_once_and_its_effect_is_recorded(served: Served) -> None:
    repo = served.repo
    (repo / "feature.txt").write_text("new work\n")
    git(repo, "add", "feature.txt")
    args = {"repo_path": str(repo), "message": "Add feature"}
    meta = {"interlock/idempotency_key": "commit-1"}

    async def session(client: Any) -> tuple[Any, Any]:
        return (
            await client.call_tool("git_commit", args, meta=meta),
            await client.call_tool("git_commit", args, meta=meta),
        )

    first, again = served.run(session)
    assert first.is_error is False, text_of(first)
    assert again.meta["interlock/step_id"] == first.meta["interlock/step_id"]
    assert git(repo, "rev-list", "--count", "HEAD").strip() == "2"
    (execution,) = served.rows(t.executions, id=first.meta["interlock/step_id"])
    assert execution["state"] == "done"


def test_an_upstream_error_is_a_recorded_failure(served: Served) -> None:
    result = served.call("get_current_time", {"timezone": "Not/AZone"})
    assert result.is_error is True
    assert result.meta["interlock/status"] == "failed"
    assert "Not/AZone" in text_of(result)
    step_id = result.meta["interlock/step_id"]
    (execution,) = served.rows(t.executions, id=step_id)
    assert execution["state"] == "failed"
    (step,) = served.rows(t.steps, id=step_id)
    assert step["status"] == "failed"
    assert "Not/AZone" in step["error"]


@pytest.mark.parametrize("stage", ["check_policy", "reserve_and_journal"])
def test_an_error_before_the_call_denies_it(
    served: Served, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    calls: list[str] = []
    original = McpTransport.call_async

    async def counting(self: McpTransport, tool: Any, arguments: Any, ctx: Any) -> Any:
        calls.append(tool.name)
        return await original(self, tool, arguments, ctx)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{stage} is broken")

    monkeypatch.setattr(McpTransport, "call_async", counting)
    monkeypatch.setattr(pipeline_module, stage, broken)
    result = served.call("get_current_time", UTC)
    assert result.is_error is True
    assert result.meta["interlock/status"] == "denied"
    assert "pipeline_error" in text_of(result)
    assert calls == []
    assert served.rows(t.executions) == []


def test_a_dead_upstream_is_replaced_and_the_sync_path_shares_its_session(served: Served) -> None:
    first = served.call("get_current_time", UTC)
    assert first.is_error is False, text_of(first)
    # The time server is a child of this process (the server runs in a thread here).
    (child,) = _time_servers()
    os.kill(child, signal.SIGKILL)
    again = served.call("get_current_time", UTC)  # idempotent: retried once on a fresh session
    assert again.is_error is False, text_of(again)
    # A synchronous caller (the library, REST's worker threads) reaches the same session, on the
    # server's loop, from its own thread.
    run_id = again.meta["interlock/run_id"]
    direct = served.il.act(served.token, run_id, "get_current_time", UTC)
    assert direct.status == "executed", direct
    assert "interlock-mcp" not in {thread.name for thread in threading.enumerate()}


def test_a_reloaded_manifest_retires_the_old_sessions_on_the_servers_loop(
    served: Served, tmp_path: Path
) -> None:
    first = served.call("get_current_time", UTC)
    assert first.is_error is False, text_of(first)
    (old,) = _time_servers()
    served.il.load_workflow(tmp_path / "workflow.yaml")  # from this thread, while the server runs
    deadline = time.monotonic() + 15
    while old in _time_servers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert old not in _time_servers()  # the old version's session was closed, its server stopped
    again = served.call("get_current_time", UTC)
    assert again.is_error is False, text_of(again)
    assert len(_time_servers()) == 1


def _time_servers() -> list[int]:
    """The mcp-server-time processes this process started (the server runs in a thread here)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or _parent(int(pid)) != os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"mcp_server_time" in cmdline:
            found.append(int(pid))
    return found


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_a_client_that_hangs_up_mid_call_does_not_lose_the_outcome(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = McpTransport.call_async

    async def slow(self: McpTransport, tool: Any, arguments: Any, ctx: Any) -> Any:
        await anyio.sleep(1.0)  # the client gives up meanwhile
        return await original(self, tool, arguments, ctx)

    monkeypatch.setattr(McpTransport, "call_async", slow)

    async def impatient(client: Any) -> bool:
        with anyio.move_on_after(0.3) as scope:
            await client.call_tool("get_current_time", UTC)
        return scope.cancelled_caught

    assert served.run(impatient) is True
    # The call was journaled and had left; it finishes and is recorded all the same.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        executions = served.rows(t.executions)
        if executions and executions[0]["state"] != "executing":
            break
        time.sleep(0.05)
    (execution,) = served.rows(t.executions)
    assert execution["state"] == "done"
    (step,) = served.rows(t.steps, id=execution["id"])
    assert step["status"] == "executed"
    assert step["result"]["structured"]["timezone"] == "Etc/UTC"
