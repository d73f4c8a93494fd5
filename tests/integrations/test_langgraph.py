"""LangChain tools in a LangGraph graph with a scripted chat model, governed by an embedded Interlock.

A call Interlock holds for approval pauses the graph with ``interrupt()``; once the approved action
ran, ``Command(resume=...)`` resumes it and the tool returns the executed result.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any, TypedDict

import pytest
from sqlalchemy import update

from conftest import Harness
from interlock._internal.api.schemas import ToolInfo
from interlock._internal.store import tables as t

pytest.importorskip("langgraph")

from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel  # noqa: E402
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from langgraph.graph import START, StateGraph  # noqa: E402
from langgraph.graph.message import add_messages  # noqa: E402
from langgraph.prebuilt import ToolNode, tools_condition  # noqa: E402
from langgraph.types import Command  # noqa: E402

from interlock.integrations.langchain import APPROVAL_INTERRUPT, interlock_langchain_tools  # noqa: E402


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


@pytest.fixture
def harness(sqlite_url: str) -> Iterator[Harness]:
    h = Harness(sqlite_url)
    yield h
    h.close()


def described(harness: Harness, name: str) -> ToolInfo:
    spec = harness.runtime.manifest.tool(name)
    assert spec is not None
    return ToolInfo(
        name=spec.name,
        description=spec.description,
        verb=spec.verb,
        traits=list(spec.traits),
        input_schema=spec.input_schema,
    )


def call(name: str, args: dict[str, Any], call_id: str) -> AIMessage:
    return AIMessage(
        content="", tool_calls=[{"name": name, "args": args, "id": call_id, "type": "tool_call"}]
    )


def build_graph(tools: list[Any], script: list[AIMessage]) -> Any:
    model = FakeMessagesListChatModel(responses=script)

    def agent(state: State) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    builder = StateGraph(State)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode(tools))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition)
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=InMemorySaver())


REFUND = {"ticket_id": "T-1002", "amount": 120, "currency": "USD", "reason": "charged twice"}


def test_graph_pauses_for_approval_and_resumes_with_the_executed_refund(harness: Harness, desk: Any) -> None:
    token = harness.tokens["triage-bot"]
    run_id = harness.run()
    tools = interlock_langchain_tools(
        harness.il,
        run_id,
        token=token,
        tools=["tickets.get", "payments.refund", described(harness, "customers.delete")],
    )
    assert [tool.name for tool in tools] == ["tickets_get", "payments_refund", "customers_delete"]
    assert tools[1].args["amount"]["type"] == "number"  # the manifest's schema, as the model sees it

    graph = build_graph(
        tools,
        [
            call("tickets_get", {"ticket_id": "T-1001"}, "call_get"),
            call("customers_delete", {"customer_id": "C-1001"}, "call_delete"),
            call("payments_refund", REFUND, "call_refund"),
            AIMessage(content="Refunded 120 USD after approval."),
        ],
    )
    config = {"configurable": {"thread_id": "ticket-T-1001"}}

    paused = graph.invoke({"messages": [HumanMessage("Triage ticket T-1001")]}, config)
    [interruption] = paused["__interrupt__"]
    request = interruption.value
    assert request["interlock"] == APPROVAL_INTERRUPT
    assert request["tool"] == "payments.refund"
    assert request["arguments"] == REFUND
    assert request["run_id"] == run_id
    assert desk.refunds_total() == 0

    # A person approves; the approved action runs once, with exactly the approved arguments.
    with harness.il.engine.begin() as conn:
        conn.execute(
            update(t.approvals).where(t.approvals.c.id == request["approval_id"]).values(state="approved")
        )
    executed = harness.il.pipeline.execute_approved(request["approval_id"])
    assert executed is not None
    assert executed.executed

    done = graph.invoke(Command(resume={"approval_id": request["approval_id"]}), config)
    replies = {m.tool_call_id: m for m in done["messages"] if isinstance(m, ToolMessage)}
    assert json.loads(str(replies["call_get"].content))["ticket_id"] == "T-1001"
    assert replies["call_delete"].status == "error"
    assert "refused by Interlock (denied)" in replies["call_delete"].content
    refund = json.loads(str(replies["call_refund"].content))
    assert refund["amount"] == 120
    assert refund["status"] == "succeeded"
    assert done["messages"][-1].content == "Refunded 120 USD after approval."

    view = harness.il.get_run(run_id)
    assert [(s.tool, s.status) for s in view.steps_detail] == [
        ("tickets.get", "executed"),
        ("customers.delete", "denied"),
        ("payments.refund", "pending_approval"),
        ("payments.refund", "executed"),
    ]
    assert desk.refunds_total() == 120


def test_a_rejected_approval_is_reported_to_the_model(harness: Harness, desk: Any) -> None:
    run_id = harness.run()
    tools = interlock_langchain_tools(
        harness.il, run_id, token=harness.tokens["triage-bot"], tools=["payments.refund"]
    )
    graph = build_graph(
        tools, [call("payments_refund", REFUND, "call_refund"), AIMessage(content="Understood.")]
    )
    config = {"configurable": {"thread_id": "t"}}
    paused = graph.invoke({"messages": [HumanMessage("Refund T-1002")]}, config)
    approval_id = paused["__interrupt__"][0].value["approval_id"]

    _, secret_token = harness.il.operators.create("lead", roles=["approver"], workflows=None, actor="test")
    operator = harness.il.operators.authenticate(secret_token)
    harness.il.approvals.decide(approval_id, operator=operator, approve=False, comment="needs a receipt")

    done = graph.invoke(Command(resume=True), config)
    [reply] = [m for m in done["messages"] if isinstance(m, ToolMessage)]
    assert reply.status == "error"
    assert "needs a receipt" in reply.content
    assert desk.refunds_total() == 0


def test_outside_a_graph_the_model_is_told_to_wait(harness: Harness) -> None:
    run_id = harness.run()
    [refund] = interlock_langchain_tools(
        harness.il, run_id, token=harness.tokens["triage-bot"], tools=["payments.refund"]
    )
    message = refund.invoke({"name": "payments_refund", "args": REFUND, "id": "call_1", "type": "tool_call"})
    assert isinstance(message, ToolMessage)
    assert message.status == "success"
    assert "waiting for a person to approve it" in message.content
    # Asked again with the same call id: the recorded answer, not a second approval.
    again = refund.invoke({"name": "payments_refund", "args": REFUND, "id": "call_1", "type": "tool_call"})
    assert again.content == message.content
    assert len(harness.il.get_run(run_id).steps_detail) == 1


def test_a_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from interlock import ConfigError
    from interlock._internal.integrations import langchain as integration

    real_import = builtins.__import__

    def no_langchain(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("langchain_core"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_langchain)
    integration._tool_class.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"pip install 'interlock\[langchain\]'"):
            integration.interlock_langchain_tools(object(), "run")
    finally:
        integration._tool_class.cache_clear()
