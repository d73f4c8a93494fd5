"""Policies sliced per tool, so that a decision costs the same with 10 tools or 1,000.

A policy whose scope names one tool (``resource == Tool::"x"``, or ``resource in`` it: tools have
no parents) can only match requests on that tool; every other policy may match any tool. A tool's
slice is every policy of the second kind plus its own, kept under their ids in the whole set, so
reasons and errors read exactly as over the whole set. Its entities are the agents and roles,
the tool itself and any tool its slice's policies name: a request reaches no other entity (the
context holds no entity references). Slices are built on first use, once per manifest version.

Visibility (``tools/list``) asks the same question of every tool with empty arguments, and only
whether a forbid fires (see visibility.py), so only forbids matter to it. Tools that no shared
forbid names, whose own forbids are the same up to the tool's name, and whose entity attributes
agree, get the same answer: one request on the first tool of such a class answers for all of them.
The classes, and one policy set holding the shared forbids and the own forbids of each class's
first tool, are built with the slices, once per manifest version. A tool's own forbids only match
requests on it, and a request reaches only the entities its policies name, so that set, with the
whole entity set, answers each of those tools exactly as its slice would. Forbids that read
``context.tool`` (a tool's name as a string) put every tool in a class of its own.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import cedarpy

TOOL = "Interlock::Tool"
_SELF = '"type": "Interlock::Tool", "id": "\\u0000self"'


@dataclass(frozen=True)
class VisibilitySet:
    """What ``tools/list`` asks Cedar, once per agent: one request per class, on its first tool."""

    first: Mapping[str, str]  # tool → the first tool of its visibility class (itself, often)
    policy_set: Any  # cedarpy.PolicySet
    entity_set: Any  # cedarpy.Entities


@dataclass(frozen=True)
class VisibilityPolicies:
    """A :class:`VisibilitySet` but for the entities, which are the compiled set's."""

    first: Mapping[str, str]
    policy_set: Any  # the shared forbids and each class's first tool's own forbids


class PolicySlices:
    def __init__(self, text: str, entities: list[dict[str, Any]], schema_json: str) -> None:
        est = json.loads(cedarpy.policies_to_json_str(text))
        if est.get("templates") or est.get("templateLinks"):
            raise ValueError("policy templates are not sliced")
        self._schema_json = schema_json
        self._shared: dict[str, Any] = {}
        self._own: dict[str, dict[str, Any]] = {}
        for pid, policy in est.get("staticPolicies", {}).items():
            tool = _scoped_tool(policy)
            if tool is None:
                self._shared[pid] = policy
            else:
                self._own.setdefault(tool, {})[pid] = policy
        self._tools = {e["uid"]["id"]: e for e in entities if e["uid"]["type"] == TOOL}
        self._others = [e for e in entities if e["uid"]["type"] != TOOL]
        self._named_by_shared = set(_named_tools(self._shared.values()))
        self._cache: dict[str, tuple[Any, Any]] = {}
        self._lock = threading.Lock()
        self.visibility = self._visibility()

    def for_tool(self, tool: str) -> tuple[Any, Any]:
        """The tool's ``(cedarpy.PolicySet, cedarpy.Entities)``."""
        got = self._cache.get(tool)
        if got is None:
            with self._lock:  # build each slice once, even when requests race for it
                got = self._cache.get(tool)
                if got is None:
                    got = self._cache[tool] = self._build(tool)
        return got

    def _build(self, tool: str) -> tuple[Any, Any]:
        policies = {**self._shared, **self._own.get(tool, {})}
        named = {tool, *self._named_by_shared, *_named_tools(self._own.get(tool, {}).values())}
        entities = self._others + [self._tools[t] for t in sorted(named) if t in self._tools]
        policy_set = cedarpy.PolicySet.from_json_str(
            json.dumps({"templates": {}, "staticPolicies": policies, "templateLinks": []})
        )
        return policy_set, cedarpy.Entities.from_json_str(json.dumps(entities), self._schema_json)

    def _visibility(self) -> VisibilityPolicies:
        shared = {pid: p for pid, p in self._shared.items() if p.get("effect") == "forbid"}
        own = {
            tool: forbids
            for tool, policies in self._own.items()
            if (forbids := {pid: p for pid, p in policies.items() if p.get("effect") == "forbid"})
        }
        # A tool a shared forbid names, or every tool when a forbid reads the name, stands alone.
        named = set(_named_tools(shared.values()))
        apart = set(self._tools) if '"attr": "tool"' in json.dumps([shared, own]) else named
        first: dict[str, str] = {}
        classes: dict[Hashable, str] = {}
        for tool, entity in self._tools.items():
            if tool in apart:
                first[tool] = tool
                continue
            shapes: list[str] = []
            if tool in own:
                me = json.dumps({"type": TOOL, "id": tool})[1:-1]
                shapes = sorted(
                    json.dumps({k: v for k, v in policy.items() if k != "annotations"}).replace(me, _SELF)
                    for policy in own[tool].values()
                )
            # Equal reprs are equal attributes (keys in another order only split a class).
            key = (repr(entity["attrs"]), tuple(shapes))
            first[tool] = classes.setdefault(key, tool)
        policies = dict(shared)
        for tool in set(first.values()):
            policies.update(own.get(tool, {}))
        policy_set = cedarpy.PolicySet.from_json_str(
            json.dumps({"templates": {}, "staticPolicies": policies, "templateLinks": []})
        )
        return VisibilityPolicies(first=first, policy_set=policy_set)


def _scoped_tool(policy: dict[str, Any]) -> str | None:
    scope = policy.get("resource", {})
    entity = scope.get("entity")
    if scope.get("op") in ("==", "in") and isinstance(entity, dict) and entity.get("type") == TOOL:
        return str(entity["id"])
    return None


def _named_tools(policies: Iterable[Any]) -> Iterable[str]:
    stack = list(policies)
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == TOOL and isinstance(node.get("id"), str):
                yield node["id"]
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
