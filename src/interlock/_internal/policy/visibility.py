"""What an agent may see: the tools listed to it by MCP ``tools/list``, ``GET /v1/tools`` and the SDK."""

from __future__ import annotations

import logging
from collections.abc import Hashable

import cedarpy

from interlock._internal.gateway.runtime import WorkflowRuntime
from interlock._internal.manifest.models import AgentSpec, ToolSpec
from interlock._internal.policy.compiler import NS

log = logging.getLogger("interlock.policy")


def visible_tools(
    runtime: WorkflowRuntime, agent_id: str, *, environment: str | None = None
) -> list[ToolSpec]:
    """The tools ``agent_id`` sees in ``tools/list``.

    A tool is hidden when Cedar denies it *because a forbid fired* with no arguments at all:
    the role grants (``grant:*``) do not cover it, or a forbid that needs no argument applies
    (``customers.delete`` under ``no-deletes``). Forbids that depend on arguments cannot fire on
    an empty ``args`` record (Cedar skips a policy whose evaluation errors), so a tool that is
    only *sometimes* forbidden stays visible. Visibility is a courtesy: every call still goes
    through the pipeline, which decides on the real arguments.
    """
    key = ("visible_tools", agent_id, environment)
    cached: list[ToolSpec] | None = runtime.memo.get(key)
    if cached is None:
        # Fixed for a manifest version, and MCP asks on every tools/call: decide once per agent.
        cached = runtime.memo[key] = _visible_tools(runtime, agent_id, environment=environment)
    return list(cached)


def _visible_tools(runtime: WorkflowRuntime, agent_id: str, *, environment: str | None) -> list[ToolSpec]:
    manifest = runtime.manifest
    agent = manifest.agent(agent_id)
    if agent is None or (environment is not None and environment != agent.environment):
        return []
    # One request answers for every tool of a visibility class (see slices.py), so the first
    # list of a large catalogue costs a handful of Cedar requests, not one per tool.
    answers: dict[Hashable, bool] = {}
    shown = []
    for tool in manifest.tools:
        key = runtime.compiled.visibility_class(tool.name)
        seen = answers.get(key)
        if seen is None:
            seen = answers[key] = _visible(runtime, agent, tool)
        if seen:
            shown.append(tool)
    return shown


def _visible(runtime: WorkflowRuntime, agent: AgentSpec, tool: ToolSpec) -> bool:
    request = {
        "principal": {"type": f"{NS}::Agent", "id": agent.id},
        "action": {"type": f"{NS}::Action", "id": tool.verb},
        "resource": {"type": f"{NS}::Tool", "id": tool.name},
        "context": {
            "workflow": runtime.manifest.name,
            "environment": agent.environment,
            "tool": tool.name,
            # Risk conditions only ever add traits, so the static ones are the least risk.
            "risk": sorted(tool.traits),
            "steps": 0,
            "tool_calls": 0,
            "args": {},
        },
    }
    try:
        result = cedarpy.is_authorized(request, *runtime.compiled.for_tool(tool.name))
    except (ValueError, TypeError, RuntimeError):  # fail closed: hide what cannot be judged
        log.exception("tools/list: policy evaluation failed for agent %s, tool %s", agent.id, tool.name)
        return False
    return bool(result.allowed or not result.diagnostics.reasons)


__all__ = ["visible_tools"]
