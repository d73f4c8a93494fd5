"""tools/list decided in one batch per version (visibility classes, forbids only, warmed when the
runtime is built) shows every agent exactly what one Cedar request per tool against the whole
policy set shows it, over generated manifests, agents, roles, rules and users' own policies."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import cedarpy
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_policy_slices import _every_tool_visible_alone

from interlock._internal.gateway.runtime import WorkflowRuntime, build_runtime
from interlock._internal.manifest.loader import load_manifest
from interlock._internal.policy.visibility import visible_tools

VERBS = ["read", "draft", "create", "update", "send", "refund", "delete"]
TRAITS = ["pii", "money", "write", "external"]
ENVS = ["production", "staging"]
SCHEMA = {
    "type": "object",
    "properties": {"limit": {"type": "integer"}, "note": {"type": "string"}},
}

# Users' own policies: a tool's name read as a string, a shared forbid naming one tool, a tool's
# own forbid reading another tool's attributes, an agent singled out, an attribute condition.
USER_POLICIES = [
    'forbid (principal == Interlock::Agent::"a0", action, resource) when { context.tool like "t1*" };',
    'forbid (principal, action, resource) when { resource == Interlock::Tool::"t2" && context.environment == "staging" };',
    'forbid (principal, action, resource == Interlock::Tool::"t3") when { Interlock::Tool::"t0".verb == "read" };',
    'forbid (principal, action, resource == Interlock::Tool::"t1") when { Interlock::Tool::"t6".verb == "draft" };',
    'forbid (principal == Interlock::Agent::"a1", action, resource) when { resource.traits.contains("pii") };',
    'forbid (principal, action == Interlock::Action::"send", resource == Interlock::Tool::"t4");',
    '@id("review:user") permit (principal, action, resource == Interlock::Tool::"t5");',
]


@st.composite
def manifests(draw: Any) -> tuple[str, list[str]]:
    n_tools = draw(st.integers(min_value=1, max_value=14))
    # Few verbs and traits per catalogue, so that many tools share a class and rules split them.
    verbs = draw(st.lists(st.sampled_from(VERBS), unique=True, min_size=1, max_size=3))
    traits = draw(st.lists(st.sampled_from(TRAITS), unique=True, max_size=2))
    tools = []
    for i in range(n_tools):
        tools.append(
            {
                "name": f"t{i}",
                "verb": draw(st.sampled_from(verbs)),
                "traits": draw(st.lists(st.sampled_from(traits), unique=True, max_size=1)) if traits else [],
                "input_schema": SCHEMA,
            }
        )
    names = [t["name"] for t in tools]
    roles = {}
    for r in range(draw(st.integers(min_value=1, max_value=3))):
        grant: dict[str, Any] = {"verbs": draw(st.lists(st.sampled_from(VERBS), unique=True, max_size=5))}
        if draw(st.booleans()):
            grant["tools"] = draw(st.lists(st.sampled_from(names), unique=True, max_size=3))
        roles[f"r{r}"] = grant
    agents = [
        {
            "id": f"a{a}",
            "environment": draw(st.sampled_from(ENVS)),
            "roles": draw(st.lists(st.sampled_from(sorted(roles)), unique=True, min_size=1, max_size=2)),
        }
        for a in range(draw(st.integers(min_value=1, max_value=4)))
    ]
    rule = st.fixed_dictionaries(
        {},
        optional={
            "verb": st.lists(st.sampled_from(VERBS), unique=True, min_size=1, max_size=2),
            "trait": st.lists(st.sampled_from(TRAITS), unique=True, min_size=1, max_size=2),
            "roles": st.lists(st.sampled_from(sorted(roles)), unique=True, min_size=1, max_size=2),
            "environments": st.lists(st.sampled_from(ENVS), unique=True, min_size=1, max_size=1),
        },
    )
    tool_rule = st.fixed_dictionaries(
        {"tool": st.sampled_from(names)},
        optional={
            "when": st.sampled_from(["limit > 90", 'note == "x"']),
            "environments": st.lists(st.sampled_from(ENVS), unique=True, min_size=1, max_size=1),
        },
    )
    some_rules = st.lists(tool_rule | rule.filter(lambda r: "verb" in r or "trait" in r), max_size=6)
    rules = {kind: draw(some_rules) for kind in ("allow", "require_approval", "forbid")}
    manifest = {
        "name": "gen",
        "version": "1",
        "owner": "owner@example.com",
        "objective": "generated",
        "success_metric": {"name": "x"},
        "environments": ENVS,
        "agents": agents,
        "roles": roles,
        "tools": tools,
        "rules": rules,
    }
    user = draw(st.lists(st.sampled_from(USER_POLICIES), unique=True, max_size=3))
    return yaml.safe_dump(manifest, sort_keys=False), user


def _names(runtime: WorkflowRuntime, agent_id: str, environment: str | None) -> list[str]:
    return [t.name for t in visible_tools(runtime, agent_id, environment=environment)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests())
def test_batched_visibility_equals_every_tool_visible_alone(generated: tuple[str, list[str]]) -> None:
    text, user = generated
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        if user:
            (base / "user.cedar").write_text("\n".join(user) + "\n")
            text += "policies: [user.cedar]\n"
        (base / "workflow.yaml").write_text(text)
        runtime = build_runtime(load_manifest(base / "workflow.yaml"))
    try:
        assert runtime.compiled.slices is not None
        lazy = dataclasses.replace(runtime, memo={})  # nothing warmed: decided on the first list
        whole = dataclasses.replace(  # no slices: every tool alone against the whole set
            runtime, compiled=dataclasses.replace(runtime.compiled, slices=None), memo={}
        )
        for agent in runtime.manifest.agents:
            want = _every_tool_visible_alone(runtime, agent.id)
            assert _names(runtime, agent.id, agent.environment) == want
            assert _names(runtime, agent.id, None) == want
            assert _names(lazy, agent.id, agent.environment) == want
            assert _names(whole, agent.id, agent.environment) == want
            other = next(e for e in ENVS if e != agent.environment)
            assert _names(runtime, agent.id, other) == []  # outside its environment: nothing
        assert _names(runtime, "ghost", None) == []
    finally:
        runtime.close()


def test_the_batch_asks_cedar_once_per_class_not_per_tool(tmp_path: Path) -> None:
    tools = "\n".join(
        f"  - {{name: t{i}, verb: {VERBS[i % 3]}, input_schema: {{type: object, properties: {{}}}}}}"
        for i in range(300)
    )
    (tmp_path / "workflow.yaml").write_text(
        "\n".join(
            [
                "name: many",
                'version: "1"',
                "owner: owner@example.com",
                "objective: many tools",
                "success_metric: {name: x}",
                "environments: [production]",
                "agents: [{id: bot, environment: production, roles: [worker]}]",
                "roles: {worker: {verbs: [read, draft]}}",
                "tools:",
                tools,
                "rules: {allow: [{verb: read}], forbid: [{tool: t7}]}",
            ]
        )
        + "\n"
    )
    runtime = build_runtime(load_manifest(tmp_path / "workflow.yaml"))
    try:
        vis = runtime.compiled.visibility()
        # Three verbs, and t7 (its own forbid) apart: four classes for 300 tools.
        assert len(set(vis.first.values())) == 4
        shown = _names(runtime, "bot", "production")
        assert "t7" not in shown
        assert shown == [f"t{i}" for i in range(300) if i % 3 != 2 and i != 7]
    finally:
        runtime.close()


def test_a_forbid_reading_another_tools_attributes_sees_that_tool(tmp_path: Path) -> None:
    # t3 shares t2's class and is not asked about, yet t1's own forbid reads it.
    (tmp_path / "user.cedar").write_text(
        'forbid (principal, action, resource == Interlock::Tool::"t1")\n'
        'when { Interlock::Tool::"t3".verb == "draft" };\n'
    )
    (tmp_path / "workflow.yaml").write_text(
        "\n".join(
            [
                "name: m",
                'version: "1"',
                "owner: owner@example.com",
                "objective: x",
                "success_metric: {name: x}",
                "environments: [production]",
                "agents: [{id: a0, environment: production, roles: [r0]}]",
                "roles: {r0: {verbs: [read, draft]}}",
                "tools:",
                *(f"  - {{name: t{i}, verb: {'read' if i < 2 else 'draft'}}}" for i in range(4)),
                "policies: [user.cedar]",
                "rules: {allow: [{verb: read}]}",
            ]
        )
        + "\n"
    )
    runtime = build_runtime(load_manifest(tmp_path / "workflow.yaml"))
    try:
        assert runtime.compiled.visibility().first["t3"] == "t2"
        assert _names(runtime, "a0", None) == ["t0", "t2", "t3"] == _every_tool_visible_alone(runtime, "a0")
    finally:
        runtime.close()


SUPPORT_TRIAGE = Path(__file__).resolve().parents[2] / "examples" / "support-triage" / "workflow.yaml"


def test_a_built_runtime_lists_without_asking_cedar_again(monkeypatch: pytest.MonkeyPatch) -> None:
    batches: list[int] = []
    real = cedarpy.is_authorized_batch

    def counting(requests: list[Any], *args: Any, **kwargs: Any) -> Any:
        batches.append(len(requests))
        return real(requests, *args, **kwargs)

    monkeypatch.setattr(cedarpy, "is_authorized_batch", counting)
    runtime = build_runtime(load_manifest(SUPPORT_TRIAGE))
    try:
        assert len(batches) == 1  # every agent's list, in one batch with the version
        want = {a.id: _every_tool_visible_alone(runtime, a.id) for a in runtime.manifest.agents}

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("tools/list asked Cedar")

        monkeypatch.setattr(cedarpy, "is_authorized_batch", refuse)
        for agent in runtime.manifest.agents:
            assert _names(runtime, agent.id, agent.environment) == want[agent.id]
    finally:
        runtime.close()


def test_a_request_cedar_rejects_hides_only_its_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = build_runtime(load_manifest(SUPPORT_TRIAGE))
    try:
        want = _every_tool_visible_alone(runtime, "triage-bot")
        real, real_batch = cedarpy.is_authorized, cedarpy.is_authorized_batch

        def reject_batch(requests: list[Any], *args: Any, **kwargs: Any) -> Any:
            if len(requests) > 1:  # the list's batch; is_authorized itself sends a batch of one
                raise ValueError("malformed request")
            return real_batch(requests, *args, **kwargs)

        def reject_one(request: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            if request["resource"]["id"] == "tickets.get":
                raise ValueError("malformed request")
            return real(request, *args, **kwargs)

        monkeypatch.setattr(cedarpy, "is_authorized_batch", reject_batch)
        monkeypatch.setattr(cedarpy, "is_authorized", reject_one)
        lazy = dataclasses.replace(runtime, memo={})
        shown = _names(lazy, "triage-bot", None)
        hidden = {t for t, head in runtime.compiled.visibility().first.items() if head == "tickets.get"}
        assert "tickets.get" in want
        assert shown == [t for t in want if t not in hidden]
    finally:
        runtime.close()
