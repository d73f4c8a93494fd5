"""What an agent may see: the tools listed to it by MCP ``tools/list``, ``GET /v1/tools`` and the SDK."""

from __future__ import annotations

import logging

import cedarpy

from interlock._internal.gateway.runtime import WorkflowRuntime
from interlock._internal.manifest.models import ToolSpec
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
    requests = [
        {
            "principal": {"type": f"{NS}::Agent", "id": agent_id},
            "action": {"type": f"{NS}::Action", "id": tool.verb},
            "resource": {"type": f"{NS}::Tool", "id": tool.name},
            "context": {
                "workflow": manifest.name,
                "environment": agent.environment,
                "tool": tool.name,
                # Risk conditions only ever add traits, so the static ones are the least risk.
                "risk": sorted(tool.traits),
                "steps": 0,
                "tool_calls": 0,
                "args": {},
            },
        }
        for tool in manifest.tools
    ]
    compiled = runtime.compiled
    try:
        results = cedarpy.is_authorized_batch(requests, compiled.policy_set, compiled.entity_set)
    except (ValueError, TypeError, RuntimeError):  # fail closed: show nothing rather than too much
        log.exception("tools/list: policy evaluation failed for agent %s", agent_id)
        return []
    return [
        tool
        for tool, result in zip(manifest.tools, results, strict=True)
        if result.allowed or not result.diagnostics.reasons
    ]


__all__ = ["visible_tools"]
