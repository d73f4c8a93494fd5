"""What an agent may see: the tools listed to it by MCP ``tools/list``, ``GET /v1/tools`` and the SDK.

A tool is hidden when Cedar denies it *because a forbid fired* with no arguments at all: the role
grants (``grant:*``) do not cover it, or a forbid that needs no argument applies
(``customers.delete`` under ``no-deletes``). Forbids that depend on arguments cannot fire on an
empty ``args`` record (Cedar skips a policy whose evaluation errors), so a tool that is only
*sometimes* forbidden stays visible. Visibility is a courtesy: every call still goes through the
pipeline, which decides on the real arguments.

Since only whether a forbid fires decides, and tools of one visibility class get the same answer
(see slices.py), one batch of one request per agent and class, against the forbids alone,
answers for the whole catalogue. :func:`warm_visibility` asks it for every agent of the manifest
when a version is built, so no agent's first ``tools/list`` waits for Cedar.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import cedarpy

from interlock._internal.manifest.models import AgentSpec, ToolSpec
from interlock._internal.policy.compiler import NS

if TYPE_CHECKING:
    from interlock._internal.gateway.runtime import WorkflowRuntime

log = logging.getLogger("interlock.policy")


def visible_tools(
    runtime: WorkflowRuntime, agent_id: str, *, environment: str | None = None
) -> list[ToolSpec]:
    """The tools ``agent_id`` sees in ``tools/list`` (none outside its own environment)."""
    cached: tuple[str, list[ToolSpec]] | None = runtime.memo.get(("visible_tools", agent_id))
    if cached is None:
        agent = runtime.manifest.agent(agent_id)
        if agent is None:
            return []
        # Fixed for a manifest version, and MCP asks on every tools/call: decide once per agent.
        cached = _remember(runtime, agent, _visible(runtime, [agent])[agent.id])
    home, shown = cached
    if environment is not None and environment != home:
        return []
    return list(shown)


def warm_visibility(runtime: WorkflowRuntime) -> None:
    """Decide every agent's list now, in one Cedar batch. Without policy slices every tool is a
    class of its own against the whole set, too slow to pay for agents that may never list."""
    if runtime.compiled.slices is None:
        return
    lists = _visible(runtime, runtime.manifest.agents)
    for agent in runtime.manifest.agents:
        _remember(runtime, agent, lists[agent.id])


def _remember(
    runtime: WorkflowRuntime, agent: AgentSpec, shown: list[ToolSpec]
) -> tuple[str, list[ToolSpec]]:
    found = runtime.memo[("visible_tools", agent.id)] = (agent.environment, shown)
    return found


def _visible(runtime: WorkflowRuntime, agents: Sequence[AgentSpec]) -> dict[str, list[ToolSpec]]:
    manifest = runtime.manifest
    vis = runtime.compiled.visibility()
    heads: dict[str, ToolSpec] = {}
    for tool in manifest.tools:
        head = vis.first.get(tool.name)
        if head is not None and head not in heads:
            heads[head] = runtime.tools[head].spec
    asked = [
        (agent, head, _request(runtime, agent, spec)) for agent in agents for head, spec in heads.items()
    ]
    try:
        results = cedarpy.is_authorized_batch([r for _, _, r in asked], vis.policy_set, vis.entity_set)
        seen = {(a.id, head): _shown(result) for (a, head, _), result in zip(asked, results, strict=True)}
    except (ValueError, TypeError, RuntimeError):
        # One request Cedar rejects fails the batch; judge them one by one so only it is hidden.
        seen = {(a.id, head): _judged(r, vis.policy_set, vis.entity_set, a, head) for a, head, r in asked}
    out: dict[str, list[ToolSpec]] = {}
    for agent in agents:
        shown = out[agent.id] = []
        for tool in manifest.tools:
            head = vis.first.get(tool.name)
            if head is None:  # not among the compiled entities: judge it against its own slice
                request = _request(runtime, agent, tool)
                if _judged(request, *runtime.compiled.for_tool(tool.name), agent, tool.name):
                    shown.append(tool)
            elif seen[(agent.id, head)]:
                shown.append(tool)
    return out


def _request(runtime: WorkflowRuntime, agent: AgentSpec, tool: ToolSpec) -> dict[str, Any]:
    return {
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


def _judged(request: dict[str, Any], policy_set: Any, entity_set: Any, agent: AgentSpec, tool: str) -> bool:
    try:
        return _shown(cedarpy.is_authorized(request, policy_set, entity_set))
    except (ValueError, TypeError, RuntimeError):  # fail closed: hide what cannot be judged
        log.exception("tools/list: policy evaluation failed for agent %s, tool %s", agent.id, tool)
        return False


def _shown(result: Any) -> bool:
    # Hidden only when a forbid fired (Deny with reasons); Deny by default, no permit, shows it.
    return bool(result.allowed or not result.diagnostics.reasons)


__all__ = ["visible_tools", "warm_visibility"]
