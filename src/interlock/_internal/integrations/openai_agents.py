"""OpenAI Agents SDK: an agent's Interlock tools as the SDK's ``FunctionTool``s.

    pip install 'interlock[openai-agents]'

    from interlock.integrations.openai_agents import interlock_tools, wait_for_approvals

    run = client.start_run(trigger=ticket)
    agent = Agent(name="triage", tools=interlock_tools(client, run.id))
    result = await Runner.run(agent, "Triage ticket T-1001")
    while result.interruptions:                       # Interlock asked a person
        state = await wait_for_approvals(client, run.id, result, timeout_s=3600)
        result = await Runner.run(agent, state)

Each tool carries the manifest's JSON schema; a call goes through Interlock's pipeline and the
model reads the outcome (the result as JSON, or why it did not run). Interlock's approvals map onto
the SDK's own approval flow: the tool's ``needs_approval`` submits the call to Interlock, and when
Interlock answers ``pending_approval`` the SDK interrupts the run with a ``ToolApprovalItem``.
:func:`wait_for_approvals` waits for the person's decision *in Interlock* and records it on the run
state; approving in the SDK alone never runs anything, because Interlock remains the one that
decides. Every call is submitted with an idempotency key made from the run and the model's call id,
so a resumed run reads the recorded outcome instead of acting twice.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from interlock._internal.api.schemas import ToolInfo
from interlock._internal.gateway.models import ActionResult
from interlock._internal.sdk.client import DEFAULT_APPROVAL_WAIT_S
from interlock._internal.sdk.governed import (
    AsyncAgent,
    TokenRef,
    async_agent,
    call_key,
    function_name,
    tool_infos,
    tool_output,
)
from interlock.exceptions import ArgumentsInvalid, ConfigError, ConflictError, NotFound

if TYPE_CHECKING:
    from agents import FunctionTool, RunContextWrapper, RunResult, RunState, Tool, ToolApprovalItem
    from agents.tool_context import ToolContext

INSTALL_HINT = "pip install 'interlock[openai-agents]'"
KEY_PREFIX = "openai-agents"
_CLOSED = ("rejected", "expired", "cancelled")


def _sdk() -> ModuleType:
    try:
        import agents
    except ImportError as exc:
        raise ConfigError(
            f"the OpenAI Agents SDK is not installed; install it with: {INSTALL_HINT}", code="missing_extra"
        ) from exc
    return agents


def interlock_tools(
    client: object,
    run_id: str,
    *,
    tools: Sequence[str | ToolInfo] | None = None,
    token: TokenRef | None = None,
    needs_approval: bool = True,
    reasoning: str | None = None,
) -> list[Tool]:
    """The agent's Interlock tools as ``FunctionTool``s bound to ``run_id``.

    ``client`` is a :class:`~interlock.Client`, an :class:`~interlock.AsyncClient` (then pass
    ``tools=await client.tools()``) or an embedded :class:`~interlock.Interlock` with the agent's
    ``token``. ``tools`` narrows or extends the list (names, or :class:`ToolInfo` objects). With
    ``needs_approval=False`` the SDK's approval flow is not used: a call waiting for a person
    tells the model so (with the approval id) instead of interrupting the run. ``reasoning`` is
    sent with every call for approvers to read.
    """
    sdk = _sdk()
    agent = async_agent(client, token=token)
    seen: dict[str, str] = {}
    out: list[Tool] = []
    for info in tool_infos(client, tools, token=token):
        name = function_name(info.name)
        if name in seen:
            raise ConfigError(f"tools {seen[name]!r} and {info.name!r} share the function name {name!r}")
        seen[name] = info.name
        out.append(_function_tool(sdk, agent, run_id, info, name, needs_approval, reasoning))
    return out


def _function_tool(
    sdk: ModuleType,
    agent: AsyncAgent,
    run_id: str,
    info: ToolInfo,
    name: str,
    use_approvals: bool,
    reasoning: str | None,
) -> FunctionTool:
    # Outcomes already decided while the SDK asked needs_approval, by call id: the invocation that
    # follows reads them instead of submitting again.
    decided: dict[str, ActionResult] = {}

    async def submit(arguments: dict[str, Any], call_id: str | None) -> ActionResult:
        key = call_key(KEY_PREFIX, run_id, call_id)
        return await agent.act(run_id, info.name, arguments, idempotency_key=key, reasoning=reasoning)

    async def approval_needed(_ctx: RunContextWrapper[Any], params: dict[str, Any], call_id: str) -> bool:
        result = await submit(params, call_id)
        if result.status == "pending_approval":
            return True
        decided[call_id] = result
        return False

    async def invoke(ctx: ToolContext[Any], raw_arguments: str) -> str:
        call_id = ctx.tool_call_id
        result = decided.pop(call_id, None)
        try:
            if result is None:
                try:
                    arguments = json.loads(raw_arguments or "{}")
                except ValueError:
                    return f"{info.name}: the arguments are not valid JSON; nothing was done."
                if not isinstance(arguments, dict):
                    return f"{info.name}: the arguments must be a JSON object; nothing was done."
                result = await submit(arguments, call_id)
            approval = None
            if result.status == "pending_approval" and result.approval_id is not None:
                approval = await agent.wait_for_approval(result.approval_id, timeout_s=0)
        except (ArgumentsInvalid, ConflictError, NotFound) as exc:
            # Refused before any decision (a malformed request, a reused key): the model can fix it.
            return f"{info.name} was not submitted: {exc.message}"
        return tool_output(result, approval)

    tool: FunctionTool = sdk.FunctionTool(
        name=name,
        description=info.description or info.name,
        params_json_schema=_schema(info.input_schema),
        on_invoke_tool=invoke,
        # The manifest's schemas are JSON Schema as written, not OpenAI's strict subset.
        strict_json_schema=False,
        needs_approval=approval_needed if use_approvals else False,
    )
    return tool


def _schema(schema: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(schema))
    out.setdefault("type", "object")
    out.setdefault("properties", {})
    return dict(out)


async def wait_for_approvals(
    client: object,
    run_id: str,
    result: RunResult,
    *,
    timeout_s: float = DEFAULT_APPROVAL_WAIT_S,
    token: TokenRef | None = None,
) -> RunState[Any]:
    """Wait for people's decisions in Interlock on an interrupted run; return the state to resume.

    For each interruption raised by an Interlock tool, the approval is awaited (all at once, up to
    ``timeout_s``): approved → ``state.approve`` (the resumed call reads the executed outcome),
    rejected, expired or cancelled → ``state.reject`` with the approver's comment for the model,
    still undecided → left pending (resume later). Other tools' interruptions are left alone.
    """
    _sdk()
    agent = async_agent(client, token=token)
    state = result.to_state()
    names = {function_name(info.name): info.name for info in await agent.tools()}

    async def one(item: ToolApprovalItem) -> None:
        raw = item.raw_item
        get = raw.get if isinstance(raw, dict) else (lambda key: getattr(raw, key, None))
        call_id, arguments = get("call_id"), get("arguments")
        tool = names.get(item.tool_name or "")
        if tool is None or not isinstance(call_id, str) or not isinstance(arguments, str):
            return
        try:
            params = json.loads(arguments or "{}")
        except ValueError:
            return
        # The same key and arguments replay the recorded answer: the approval id, or the outcome.
        key = call_key(KEY_PREFIX, run_id, call_id)
        answer = await agent.act(run_id, tool, params, idempotency_key=key)
        if answer.status == "pending_approval" and answer.approval_id is not None:
            view = await agent.wait_for_approval(answer.approval_id, timeout_s=timeout_s)
            if view.state == "approved":
                state.approve(item)  # the resumed call reads the outcome under the same key
            elif view.state in _CLOSED:
                state.reject(item, rejection_message=tool_output(answer, view))
        elif answer.status == "executed":
            state.approve(item)
        else:
            state.reject(item, rejection_message=tool_output(answer))

    await asyncio.gather(*(one(item) for item in result.interruptions))
    return state


__all__ = ["INSTALL_HINT", "interlock_tools", "wait_for_approvals"]
