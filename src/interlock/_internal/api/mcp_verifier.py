"""The verifier's MCP tools: a verifier agent lists, reads and decides the requests routed to it.

Only an agent the manifest names under ``verification.verifiers`` sees them in ``tools/list``;
to any other agent they do not exist (``Unknown tool``, like a tool policy hides). They call
the same service as ``/v1/verifications`` (:mod:`interlock._internal.approvals.verifications`).
"""

from __future__ import annotations

import json
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import mcp_types as types

from interlock._internal.approvals.verifications import LIST_STATES, MAX_REASONING_CHARS, VERDICTS
from interlock._internal.gateway.runtime import WorkflowRuntime
from interlock._internal.identity.tokens import AgentPrincipal
from interlock.exceptions import ArgumentsInvalid

if TYPE_CHECKING:
    from interlock._internal.service import Interlock

LIST = "interlock.verifications.list"
GET = "interlock.verifications.get"
VERDICT = "interlock.verifications.verdict"
NAMES = frozenset({LIST, GET, VERDICT})

_ID = {"type": "string", "minLength": 1, "maxLength": 200, "description": "The approval id."}
_TOOLS = (
    types.Tool(
        name=LIST,
        description="The approval requests routed to you, the verifier: awaiting your verdict, or all.",
        input_schema={
            "type": "object",
            "properties": {
                "state": {"enum": list(LIST_STATES)},
                "limit": {"type": "integer", "minimum": 1, "maximum": 500},
            },
            "additionalProperties": False,
        },
        annotations=types.ToolAnnotations(read_only_hint=True, idempotent_hint=True),
    ),
    types.Tool(
        name=GET,
        description="One request with its decision package: action, arguments, reasoning, evidence, "
        "risk, impact if accepted or rejected, and its args_hash.",
        input_schema={
            "type": "object",
            "properties": {"approval_id": _ID},
            "required": ["approval_id"],
            "additionalProperties": False,
        },
        annotations=types.ToolAnnotations(read_only_hint=True, idempotent_hint=True),
    ),
    types.Tool(
        name=VERDICT,
        description="Give your verdict: approve or reject (it settles the request where policy lets "
        "a verifier settle it alone; otherwise a person decides, with your verdict as advice), or "
        "escalate to a person. Name the args_hash you judged, and the model call it took.",
        input_schema={
            "type": "object",
            "properties": {
                "approval_id": _ID,
                "verdict": {"enum": list(VERDICTS)},
                "args_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "reasoning": {"type": "string", "maxLength": MAX_REASONING_CHARS},
                "model": {"type": "string", "minLength": 1, "maxLength": 200},
                "input_tokens": {"type": "integer", "minimum": 0, "maximum": 10**9},
                "output_tokens": {"type": "integer", "minimum": 0, "maximum": 10**9},
                "cost_usd": {"type": "number", "minimum": 0, "maximum": 1_000_000},
                "task": {"type": "string", "pattern": r"^[A-Za-z][A-Za-z0-9_.\-]{0,127}$"},
            },
            "required": ["approval_id", "verdict", "args_hash"],
            "additionalProperties": False,
        },
        annotations=types.ToolAnnotations(
            read_only_hint=False, idempotent_hint=False, destructive_hint=False
        ),
    ),
)


def verifier_tools(runtime: WorkflowRuntime | None, principal: AgentPrincipal) -> tuple[types.Tool, ...]:
    """The verifier tools ``principal`` sees: all three if it is one of the workflow's verifiers."""
    spec = None if runtime is None else runtime.manifest.verification
    if spec is None or spec.verifier(principal.agent_id) is None:
        return ()
    return _TOOLS


def _text(value: Any) -> types.TextContent:
    return types.TextContent(text=json.dumps(value, ensure_ascii=False))


async def call_verifier_tool(
    interlock: Interlock, principal: AgentPrincipal, name: str, arguments: dict[str, Any]
) -> types.CallToolResult:
    """Run one verifier tool; domain errors propagate for the gateway to turn into tool errors."""
    service = interlock.verifications
    if name == LIST:
        state = arguments.get("state", "awaiting")
        limit = arguments.get("limit", 100)
        if not isinstance(state, str) or not isinstance(limit, int) or isinstance(limit, bool):
            raise ArgumentsInvalid("state must be a string and limit an integer", field="state")
        views = await anyio.to_thread.run_sync(partial(service.list, principal, state=state, limit=limit))
        data: Any = {"verifications": [v.model_dump(mode="json") for v in views]}
    else:
        approval_id = arguments.get("approval_id")
        if not isinstance(approval_id, str) or not approval_id:
            raise ArgumentsInvalid("approval_id is required", field="approval_id")
        if name == GET:
            view = await anyio.to_thread.run_sync(service.get, principal, approval_id)
        else:
            view = await anyio.to_thread.run_sync(
                partial(_decide, interlock, principal, approval_id, arguments)
            )
        data = view.model_dump(mode="json")
    return types.CallToolResult(content=[_text(data)], structured_content=data)


def _decide(interlock: Interlock, principal: AgentPrincipal, approval_id: str, args: dict[str, Any]) -> Any:
    def text(key: str) -> str | None:
        value = args.get(key)
        if value is not None and not isinstance(value, str):
            raise ArgumentsInvalid(f"{key} must be a string", field=key)
        return value

    def count(key: str) -> int:
        value = args.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 10**9:
            raise ArgumentsInvalid(f"{key} must be a whole number from 0", field=key)
        return value

    cost = args.get("cost_usd")
    if cost is not None and (isinstance(cost, bool) or not isinstance(cost, int | float) or cost < 0):
        raise ArgumentsInvalid("cost_usd must be a number from 0", field="cost_usd")
    return interlock.verifications.decide(
        principal,
        approval_id,
        verdict=text("verdict") or "",
        args_hash=text("args_hash") or "",
        reasoning=text("reasoning"),
        model=text("model"),
        input_tokens=count("input_tokens"),
        output_tokens=count("output_tokens"),
        cost_usd=None if cost is None else float(cost),
        task=text("task"),
        via="mcp",
    )


__all__ = ["NAMES", "call_verifier_tool", "verifier_tools"]
