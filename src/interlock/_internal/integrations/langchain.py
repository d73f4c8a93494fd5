"""LangChain and LangGraph: an agent's Interlock tools as ``StructuredTool``s.

    pip install 'interlock[langchain]'

    from interlock.integrations.langchain import interlock_langchain_tools

    tools = interlock_langchain_tools(client, run.id)
    model = model.bind_tools(tools)
    graph = ...  # e.g. an agent node and a ToolNode(tools), compiled with a checkpointer

Each tool carries the manifest's JSON schema; a call goes through Interlock's pipeline. The model
reads the result as JSON when the action ran; when it did not (denied, invalid, limited, failed)
the tool raises ``ToolException`` with the reasons, which LangChain hands to the model as an error
``ToolMessage``.

Approvals: inside a LangGraph graph, a call that Interlock holds for a person calls LangGraph's
``interrupt()`` with ``{"interlock": "approval", "approval_id", "tool", "arguments", …}``, so the
graph pauses (it needs a checkpointer). Wait for the decision — ``client.wait_for_approval(id)``
— and resume with ``Command(resume=...)`` (any value): the tool asks Interlock again with the same
idempotency key and returns the executed result, or tells the model the approval was rejected.
Outside a graph (or with ``interrupt=False``) the model is told the call awaits approval instead.

Calls are keyed by the run and the model's tool-call id, so re-running a node replays recorded
outcomes instead of acting twice.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from contextvars import ContextVar
from types import ModuleType
from typing import TYPE_CHECKING, Any

from interlock._internal.api.schemas import ToolInfo
from interlock._internal.approvals.models import AgentApprovalView
from interlock._internal.gateway.models import ActionResult
from interlock._internal.sdk.aclient import AsyncClient
from interlock._internal.sdk.governed import (
    TokenRef,
    async_agent,
    call_key,
    function_name,
    settle,
    sync_agent,
    tool_infos,
    tool_output,
)
from interlock.exceptions import ConfigError

if TYPE_CHECKING:
    from langchain_core.tools import StructuredTool

INSTALL_HINT = "pip install 'interlock[langchain]'"
KEY_PREFIX = "langchain"
APPROVAL_INTERRUPT = "approval"

# The tool-call id of the call being run; LangChain passes it to ``run`` but not to the function.
_CALL_ID: ContextVar[str | None] = ContextVar("interlock_langchain_call_id", default=None)


def _langchain() -> ModuleType:
    try:
        from langchain_core import tools
    except ImportError as exc:
        raise ConfigError(
            f"LangChain is not installed; install it with: {INSTALL_HINT}", code="missing_extra"
        ) from exc
    return tools


@functools.cache
def _tool_class() -> type[StructuredTool]:
    """A StructuredTool that makes the tool-call id visible to its function."""
    _langchain()
    from langchain_core.tools import StructuredTool

    class InterlockTool(StructuredTool):
        def run(self, tool_input: Any, *args: Any, tool_call_id: str | None = None, **kwargs: Any) -> Any:
            token = _CALL_ID.set(tool_call_id)
            try:
                return super().run(tool_input, *args, tool_call_id=tool_call_id, **kwargs)
            finally:
                _CALL_ID.reset(token)

        async def arun(
            self, tool_input: Any, *args: Any, tool_call_id: str | None = None, **kwargs: Any
        ) -> Any:
            token = _CALL_ID.set(tool_call_id)
            try:
                return await super().arun(tool_input, *args, tool_call_id=tool_call_id, **kwargs)
            finally:
                _CALL_ID.reset(token)

    return InterlockTool


def _pause(result: ActionResult, arguments: dict[str, Any]) -> bool:
    """Pause the LangGraph graph this call runs in; False when it runs outside one.

    Returns only when the graph was resumed (the first time, ``interrupt`` raises to pause it)."""
    try:
        from langgraph.types import interrupt
    except ImportError:
        return False
    payload = {
        "interlock": APPROVAL_INTERRUPT,
        "approval_id": result.approval_id,
        "run_id": result.run_id,
        "tool": result.decision.tool,
        "arguments": arguments,
        "reasons": [r.message for r in result.decision.reasons],
    }
    try:
        interrupt(payload)
    except (RuntimeError, KeyError):
        # No runnable context, or one that is not a LangGraph task (a bare tool.invoke).
        return False
    return True


def interlock_langchain_tools(
    client: object,
    run_id: str,
    *,
    tools: Sequence[str | ToolInfo] | None = None,
    token: TokenRef | None = None,
    interrupt: bool = True,
    reasoning: str | None = None,
) -> list[StructuredTool]:
    """The agent's Interlock tools as LangChain ``StructuredTool``s bound to ``run_id``.

    ``client`` is a :class:`~interlock.Client` (sync tools, also usable with ``ainvoke``), an
    :class:`~interlock.AsyncClient` (async-only tools; pass ``tools=await client.tools()``) or an
    embedded :class:`~interlock.Interlock` with the agent's ``token``. ``tools`` narrows or
    extends the list (names, or :class:`ToolInfo` objects). ``interrupt=False`` never pauses a
    LangGraph graph for approvals; the model is told the call awaits approval instead.
    """
    cls = _tool_class()
    out: list[StructuredTool] = []
    seen: dict[str, str] = {}
    for info in tool_infos(client, tools, token=token):
        name = function_name(info.name)
        if name in seen:
            raise ConfigError(f"tools {seen[name]!r} and {info.name!r} share the function name {name!r}")
        seen[name] = info.name
        schema = {"type": "object", "properties": {}, **info.input_schema}
        common: dict[str, Any] = {
            "name": name,
            "description": info.description or info.name,
            "args_schema": schema,
            "handle_tool_error": True,
            "metadata": {"interlock_tool": info.name},
        }
        if isinstance(client, AsyncClient):
            out.append(cls(coroutine=_async_call(client, run_id, info, interrupt, reasoning), **common))
        else:
            out.append(cls(func=_sync_call(client, run_id, info, interrupt, reasoning, token), **common))
    return out


def _finish(lc: ModuleType, result: ActionResult, approval: AgentApprovalView | None) -> str:
    """The tool's output when the action ran or still waits; ``ToolException`` when it will not run."""
    text = tool_output(result, approval)
    final = settle(result, approval)
    closed = approval is not None and approval.state in ("rejected", "expired", "cancelled")
    if not closed and final.status in ("executed", "pending_approval"):
        return text  # waiting is not an error: the model should just know about it
    raise lc.ToolException(text)


def _sync_call(
    client: object,
    run_id: str,
    info: ToolInfo,
    use_interrupt: bool,
    reasoning: str | None,
    token: TokenRef | None,
) -> Any:
    lc = _langchain()
    agent = sync_agent(client, token=token)

    def call(**arguments: Any) -> str:
        key = call_key(KEY_PREFIX, run_id, _CALL_ID.get())
        result = agent.act(run_id, info.name, arguments, idempotency_key=key, reasoning=reasoning)
        approval = None
        if result.status == "pending_approval" and result.approval_id is not None:
            if use_interrupt and _pause(result, arguments):
                # Resumed: the same key answers with the outcome once the approved action ran.
                result = agent.act(run_id, info.name, arguments, idempotency_key=key, reasoning=reasoning)
            if result.status == "pending_approval" and result.approval_id is not None:
                approval = agent.wait_for_approval(result.approval_id, timeout_s=0)
        return _finish(lc, result, approval)

    call.__name__ = function_name(info.name)
    return call


def _async_call(
    client: AsyncClient, run_id: str, info: ToolInfo, use_interrupt: bool, reasoning: str | None
) -> Any:
    lc = _langchain()
    agent = async_agent(client)

    async def call(**arguments: Any) -> str:
        key = call_key(KEY_PREFIX, run_id, _CALL_ID.get())
        result = await agent.act(run_id, info.name, arguments, idempotency_key=key, reasoning=reasoning)
        approval = None
        if result.status == "pending_approval" and result.approval_id is not None:
            if use_interrupt and _pause(result, arguments):
                result = await agent.act(
                    run_id, info.name, arguments, idempotency_key=key, reasoning=reasoning
                )
            if result.status == "pending_approval" and result.approval_id is not None:
                approval = await agent.wait_for_approval(result.approval_id, timeout_s=0)
        return _finish(lc, result, approval)

    call.__name__ = function_name(info.name)
    return call


__all__ = ["APPROVAL_INTERRUPT", "INSTALL_HINT", "interlock_langchain_tools"]
