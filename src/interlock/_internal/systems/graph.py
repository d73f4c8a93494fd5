"""The system graph: workflows, agents, tools, systems, environments and data classes, and how
they connect, across every workflow given. Printed as JSON or Graphviz DOT by ``interlock graph``
and drawn by the console's Systems page.

Node ids are ``kind:name`` (agents and tools are ``kind:workflow/name``, since two workflows may
use the same names); edges are ``{source, target, kind}`` plus what the kind needs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from interlock._internal.gateway.bindings import credential_ref
from interlock._internal.manifest.models import Manifest, RuleSpec, ToolSpec

NODE_KINDS = ("workflow", "agent", "tool", "system", "environment", "data_class")


def _rules_for(rules: list[RuleSpec], tool: ToolSpec, environment: str, roles: list[str]) -> list[RuleSpec]:
    out = []
    for rule in rules:
        if rule.tool is not None and tool.name not in rule.tool_list():
            continue
        if rule.verb is not None and tool.verb not in rule.verb_list():
            continue
        if rule.trait is not None and not set(rule.trait_list()) & set(tool.traits):
            # A trait an argument condition may add (risk_conditions) counts too.
            extra = {t for rc in tool.risk_conditions for t in rc.traits}
            if not set(rule.trait_list()) & extra:
                continue
        if rule.environments is not None and environment not in rule.environments:
            continue
        if rule.roles is not None and not set(rule.roles) & set(roles):
            continue
        out.append(rule)
    return out


def permissions(
    manifest: Manifest, tool: ToolSpec, environment: str, roles: list[str]
) -> list[dict[str, Any]]:
    """What the manifest's rules say an agent with ``roles`` may do with ``tool`` in
    ``environment``: each outcome with its condition. A static reading of the rules (extra
    ``.cedar`` files are not read); the pipeline decides each action."""
    granted = any(
        tool.verb in manifest.roles[r].verbs or tool.name in manifest.roles[r].tools
        for r in roles
        if r in manifest.roles
    )
    if not granted:
        return [{"outcome": "not_granted", "when": None, "rule": None}]
    out: list[dict[str, Any]] = []
    for outcome, rules, prefix in (
        ("forbidden", manifest.rules.forbid, "forbid"),
        ("approval", manifest.rules.require_approval, "require_approval"),
        ("alone", manifest.rules.allow, "allow"),
    ):
        everyone = manifest.rules.model_dump()[prefix]
        for rule in _rules_for(rules, tool, environment, roles):
            index = everyone.index(rule.model_dump())
            out.append({"outcome": outcome, "when": rule.when, "rule": rule.id or f"{prefix}[{index}]"})
    if not out:
        out.append({"outcome": "denied", "when": None, "rule": None})  # deny by default
    return out


def build_graph(manifests: Iterable[Manifest]) -> dict[str, Any]:
    """The graph of every manifest given, as JSON-ready data: ``nodes``, ``edges`` and, per
    system, ``access`` (per environment, which agent may do what with which tool)."""
    nodes: dict[str, dict[str, Any]] = {}
    edges: list[dict[str, Any]] = []
    access: dict[str, dict[str, list[dict[str, Any]]]] = {}

    def node(kind: str, key: str, label: str, **attrs: Any) -> str:
        ident = f"{kind}:{key}"
        if ident not in nodes:
            nodes[ident] = {"id": ident, "kind": kind, "label": label, **attrs}
        else:
            for name, value in attrs.items():
                nodes[ident].setdefault(name, value)
        return ident

    def edge(source: str, target: str, kind: str, **attrs: Any) -> None:
        item = {"source": source, "target": target, "kind": kind, **attrs}
        if item not in edges:
            edges.append(item)

    for m in sorted(manifests, key=lambda x: x.name):
        wf = node("workflow", m.name, m.name, owner=m.owner, version=m.version)
        for env in m.environments:
            edge(wf, node("environment", env, env), "runs_in")
        for system in m.systems:
            sid = node(
                "system",
                system.name,
                system.name,
                owner=system.owner,
                tier=system.tier,
                data_classes=sorted(system.data_classes),
            )
            for cls in system.data_classes:
                edge(sid, node("data_class", cls, cls), "holds")
            for env, binding in sorted(system.bindings.items()):
                edge(
                    sid,
                    node("environment", env, env),
                    "bound_in",
                    endpoint=binding.url or (f"mcp:{binding.mcp_server}" if binding.mcp_server else None),
                    credential=credential_ref(binding.credential),
                )
        for tool in m.tools:
            destination = tool.destination
            tid = node(
                "tool",
                f"{m.name}/{tool.name}",
                tool.name,
                workflow=m.name,
                verb=tool.verb,
                destination=None if destination is None else destination.kind,
                cleared=None if destination is None else sorted({"public", *destination.cleared}),
            )
            edge(wf, tid, "has_tool")
            if tool.system is not None:
                edge(tid, f"system:{tool.system}", "acts_on")
            for cls in tool.returns:
                edge(tid, node("data_class", cls, cls), "returns")
        for agent in m.agents:
            aid = node(
                "agent", f"{m.name}/{agent.id}", agent.id, workflow=m.name, environment=agent.environment
            )
            edge(wf, aid, "has_agent")
            edge(aid, f"environment:{agent.environment}", "acts_in")
            for tool in m.tools:
                may = permissions(m, tool, agent.environment, agent.roles)
                if all(p["outcome"] in ("not_granted", "denied") for p in may):
                    continue
                edge(aid, f"tool:{m.name}/{tool.name}", "may", outcomes=sorted({p["outcome"] for p in may}))
                on = tool.system or "(no system)"
                access.setdefault(on, {}).setdefault(agent.environment, []).append(
                    {"workflow": m.name, "agent": agent.id, "tool": tool.name, "verb": tool.verb, "may": may}
                )
    for tool_node in [n for n in nodes.values() if n["kind"] == "tool"]:
        for e in edges:
            if e["source"] == tool_node["id"] and e["kind"] == "acts_on" and e["target"] not in nodes:
                name = e["target"].split(":", 1)[1]
                node("system", name, name)
    return {
        "nodes": sorted(nodes.values(), key=lambda n: (NODE_KINDS.index(n["kind"]), n["id"])),
        "edges": edges,
        "access": access,
    }


def _dot_id(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid, escaped DOT quoted id


_SHAPES = {
    "workflow": "box3d",
    "agent": "ellipse",
    "tool": "box",
    "system": "cylinder",
    "environment": "octagon",
    "data_class": "note",
}


def to_dot(graph: dict[str, Any]) -> str:
    """Graphviz DOT text of the graph (``dot -Tsvg`` draws it)."""
    lines = ["digraph interlock {", "  rankdir=LR;", '  node [fontname="Helvetica"];']
    for n in graph["nodes"]:
        label = n["label"]
        if n["kind"] == "system" and "tier" in n:
            label += f"\ntier {n['tier']}"
        lines.append(f"  {_dot_id(n['id'])} [label={_dot_id(label)} shape={_SHAPES[n['kind']]}];")
    for e in graph["edges"]:
        label = e["kind"]
        if e["kind"] == "may":
            label = "may: " + ", ".join(e["outcomes"])
        elif e["kind"] == "bound_in" and e.get("endpoint"):
            label = f"bound: {e['endpoint']}"
        lines.append(f"  {_dot_id(e['source'])} -> {_dot_id(e['target'])} [label={_dot_id(label)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


__all__ = ["NODE_KINDS", "build_graph", "permissions", "to_dot"]
