"""The OpenAI Agents SDK with a scripted model, its tools governed by a real Interlock server.

Nothing reaches the network: the model is the SDK's own ``ScriptedModel`` and tracing is off.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from sqlalchemy import update

from conftest import Harness
from interlock import AsyncClient
from interlock._internal.api.schemas import ToolInfo
from interlock._internal.server import create_app
from interlock._internal.store import tables as t

agents = pytest.importorskip("agents")

from agents import Agent, Runner, set_tracing_disabled  # noqa: E402
from agents.items import ToolCallOutputItem  # noqa: E402
from agents.testing import ScriptedModel, assistant_message, function_call  # noqa: E402

from interlock.integrations.openai_agents import interlock_tools, wait_for_approvals  # noqa: E402


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")
    set_tracing_disabled(True)


@pytest.fixture
def served(sqlite_url: str) -> Iterator[tuple[Harness, str]]:
    harness = Harness(sqlite_url)
    config = uvicorn.Config(create_app(interlock=harness.il), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield harness, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        harness.close()


def described(harness: Harness, name: str) -> ToolInfo:
    """A tool described from the manifest, for one the agent is not shown (so it can still try)."""
    spec = harness.runtime.manifest.tool(name)
    assert spec is not None
    return ToolInfo(
        name=spec.name,
        description=spec.description,
        verb=spec.verb,
        traits=list(spec.traits),
        input_schema=spec.input_schema,
    )


def approve_and_execute(harness: Harness, approval_id: str) -> None:
    with harness.il.engine.begin() as conn:
        conn.execute(update(t.approvals).where(t.approvals.c.id == approval_id).values(state="approved"))
    result = harness.il.pipeline.execute_approved(approval_id)
    assert result is not None
    assert result.executed


def outputs(result: Any) -> dict[str, str]:
    """Tool outputs by call id."""
    out: dict[str, str] = {}
    for item in result.new_items:
        if isinstance(item, ToolCallOutputItem):
            raw: Any = item.raw_item
            call_id = raw.get("call_id") if isinstance(raw, dict) else getattr(raw, "call_id", None)
            out[str(call_id)] = str(item.output)
    return out


REFUND = {"ticket_id": "T-1002", "amount": 120, "currency": "USD", "reason": "charged twice"}


def test_agent_run_is_governed_end_to_end(served: tuple[Harness, str], desk: Any) -> None:
    harness, url = served
    model = ScriptedModel(
        [
            [function_call("tickets_get", {"ticket_id": "T-1001"}, call_id="call_get")],
            [function_call("customers_delete", {"customer_id": "C-1001"}, call_id="call_delete")],
            [function_call("payments_refund", REFUND, call_id="call_refund")],
            [assistant_message("Refunded 120 USD once a person approved it.")],
        ]
    )

    async def main() -> tuple[Any, Any, str]:
        async with AsyncClient(
            url, client_id="triage-bot", client_secret=harness.secrets["triage-bot"]
        ) as client:
            run = await client.start_run(trigger={"ticket": "T-1001"})
            visible = await client.tools()
            tools = interlock_tools(client, run.id, tools=[*visible, described(harness, "customers.delete")])
            agent = Agent(name="triage", instructions="Triage the ticket.", model=model, tools=tools)

            first = await Runner.run(agent, "Triage ticket T-1001")
            assert len(first.interruptions) == 1
            assert first.interruptions[0].tool_name == "payments_refund"
            assert first.final_output is None

            # A person approves the refund in Interlock; the run resumes and reads the outcome.
            pending = await client.act(
                run.id, "payments.refund", REFUND, idempotency_key=f"openai-agents:{run.id}:call_refund"
            )
            assert pending.status == "pending_approval"
            assert pending.approval_id
            await asyncio.to_thread(approve_and_execute, harness, pending.approval_id)
            state = await wait_for_approvals(client, run.id, first, timeout_s=10)
            second = await Runner.run(agent, state)
            return first, second, run.id

    first, second, run_id = asyncio.run(main())

    before = outputs(first)
    assert json.loads(before["call_get"])["ticket_id"] == "T-1001"
    assert "refused by Interlock (denied)" in before["call_delete"]
    assert "call_refund" not in before  # interrupted, not run

    after = outputs(second)
    refund = json.loads(after["call_refund"])
    assert refund["amount"] == 120
    assert refund["status"] == "succeeded"
    assert second.final_output == "Refunded 120 USD once a person approved it."

    view = harness.il.get_run(run_id)
    assert [(s.tool, s.status) for s in view.steps_detail] == [
        ("tickets.get", "executed"),
        ("customers.delete", "denied"),
        ("payments.refund", "pending_approval"),
        ("payments.refund", "executed"),
    ]
    assert desk.refunds_total() == 120

    # The model saw each tool with the manifest's schema.
    seen = {tool.name: tool for tool in model.calls[0].tools if isinstance(tool, agents.FunctionTool)}
    assert seen["payments_refund"].params_json_schema["required"] == [
        "ticket_id",
        "amount",
        "currency",
        "reason",
    ]


def test_without_the_approval_flow_the_model_is_told_to_wait(served: tuple[Harness, str], desk: Any) -> None:
    harness, url = served
    model = ScriptedModel(
        [
            [function_call("payments_refund", REFUND, call_id="call_refund")],
            [assistant_message("Waiting for a person.")],
        ]
    )

    async def main() -> Any:
        async with AsyncClient(
            url, client_id="triage-bot", client_secret=harness.secrets["triage-bot"]
        ) as client:
            run = await client.start_run()
            tools = interlock_tools(client, run.id, tools=await client.tools(), needs_approval=False)
            agent = Agent(name="triage", model=model, tools=tools)
            return await Runner.run(agent, "Refund T-1002")

    result = asyncio.run(main())
    assert not result.interruptions
    assert "waiting for a person to approve it" in outputs(result)["call_refund"]
    assert desk.refunds_total() == 0


def test_a_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from interlock import ConfigError
    from interlock._internal.integrations import openai_agents as integration

    real_import = builtins.__import__

    def no_agents(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "agents" or name.startswith("agents."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_agents)
    with pytest.raises(ConfigError, match=r"pip install 'interlock\[openai-agents\]'"):
        integration.interlock_tools(object(), "run")
