"""Per-tool policy slices decide exactly as the whole policy set does, and visibility classes
answer tools/list exactly as one request per tool would."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import cedarpy
import pytest
import yaml

from interlock._internal.gateway.decide import Intent, evaluate
from interlock._internal.gateway.runtime import WorkflowRuntime, build_runtime
from interlock._internal.manifest.loader import load_manifest
from interlock._internal.policy.compiler import NS
from interlock._internal.policy.visibility import visible_tools

REPO = Path(__file__).resolve().parents[2]


def _scale_manifest(n_tools: int) -> str:
    spec = importlib.util.spec_from_file_location("bench_scale", REPO / "bench" / "scale.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.manifest_text(n_tools))


def _whole(runtime: WorkflowRuntime) -> WorkflowRuntime:
    """The same runtime, evaluating every request against the whole policy set."""
    return dataclasses.replace(runtime, compiled=dataclasses.replace(runtime.compiled, slices=None), memo={})


def _fresh(runtime: WorkflowRuntime) -> WorkflowRuntime:
    runtime.memo.clear()
    return runtime


def _golden_calls(path: Path) -> list[tuple[str, Any]]:
    data = yaml.safe_load(path.read_text())
    return [
        (s["tool"], s["arguments"]) for sc in data["scenarios"] for s in sc.get("steps", []) if "tool" in s
    ]


def _same_decisions(runtime: WorkflowRuntime, calls: list[tuple[str, Any]]) -> int:
    whole = _whole(runtime)
    compared = 0
    for agent in runtime.manifest.agents:
        for tool, args in calls:
            for confidence in (None, 0.5, 0.99):
                intent = Intent(tool=tool, arguments=args, confidence=confidence)
                got = evaluate(runtime, agent_id=agent.id, environment=agent.environment, intent=intent)
                want = evaluate(whole, agent_id=agent.id, environment=agent.environment, intent=intent)
                assert got.decision == want.decision, (agent.id, tool, args)
                assert got.status == want.status
                compared += 1
    return compared


def _every_tool_visible_alone(runtime: WorkflowRuntime, agent_id: str) -> list[str]:
    """tools/list the slow way: one request per tool against the whole policy set."""
    manifest = runtime.manifest
    agent = manifest.agent(agent_id)
    assert agent is not None
    shown = []
    for tool in manifest.tools:
        request = {
            "principal": {"type": f"{NS}::Agent", "id": agent_id},
            "action": {"type": f"{NS}::Action", "id": tool.verb},
            "resource": {"type": f"{NS}::Tool", "id": tool.name},
            "context": {
                "workflow": manifest.name,
                "environment": agent.environment,
                "tool": tool.name,
                "risk": sorted(tool.traits),
                "steps": 0,
                "tool_calls": 0,
                "args": {},
            },
        }
        result = cedarpy.is_authorized(request, runtime.compiled.policy_set, runtime.compiled.entity_set)
        if result.allowed or not result.diagnostics.reasons:
            shown.append(tool.name)
    return shown


@pytest.mark.parametrize("example", ["support-triage", "invoice-matching"])
def test_examples_decide_the_same_sliced(example: str) -> None:
    base = REPO / "examples" / example
    runtime = build_runtime(load_manifest(base / "workflow.yaml"))
    try:
        assert runtime.compiled.slices is not None
        calls = _golden_calls(base / "golden.yaml")
        calls += [(t.name, {}) for t in runtime.manifest.tools]  # invalid arguments, too
        assert _same_decisions(runtime, calls) > 50
        for agent in runtime.manifest.agents:
            shown = [t.name for t in visible_tools(_fresh(runtime), agent.id, environment=agent.environment)]
            assert shown == _every_tool_visible_alone(runtime, agent.id)
    finally:
        runtime.close()


def test_a_large_catalogue_decides_the_same_sliced(tmp_path: Path) -> None:
    (tmp_path / "noop_tool.py").write_text("def noop(record_id, **kw):\n    return {'ok': True}\n")
    path = tmp_path / "workflow.yaml"
    path.write_text(_scale_manifest(120))
    runtime = build_runtime(load_manifest(path))
    try:
        calls = []
        for tool in runtime.manifest.tools:
            for args in (
                {"record_id": "R-1"},
                {"record_id": "R-1", "limit": 95},
                {"record_id": "R-1", "amount": 80, "limit": 5},
            ):
                calls.append((tool.name, args))
        _same_decisions(runtime, calls)
        for agent in ("bot", "viewer"):
            shown = [t.name for t in visible_tools(_fresh(runtime), agent, environment=None)]
            assert shown == _every_tool_visible_alone(runtime, agent)
            assert shown  # the classes answered for many tools at once, and some are shown
    finally:
        runtime.close()


USER_POLICIES = """
// no @id: Cedar names it by position, and the slices must keep that name
forbid (principal, action, resource == Interlock::Tool::"payments.refund")
when { context has confidence && context.confidence.lessThan(decimal("0.7")) };

@id("user:no-search-by-reporter")
forbid (principal == Interlock::Agent::"reporter", action, resource)
when { context.tool like "tickets.search*" };

@id("user:never-delete-customers")
forbid (principal, action, resource in Interlock::Tool::"customers.delete");
"""


def test_user_policies_keep_their_ids_and_meaning(tmp_path: Path) -> None:
    src = REPO / "examples" / "support-triage"
    text = (src / "workflow.yaml").read_text()
    (tmp_path / "extra.cedar").write_text(USER_POLICIES)
    marker = "\ntools:\n"
    assert marker in text
    text = text.replace(marker, "\npolicies: [extra.cedar]\n" + marker, 1)
    (tmp_path / "workflow.yaml").write_text(text)
    for helper in src.glob("*.py"):
        (tmp_path / helper.name).write_text(helper.read_text())
    runtime = build_runtime(load_manifest(tmp_path / "workflow.yaml"))
    try:
        calls = _golden_calls(src / "golden.yaml")
        calls.append(
            ("payments.refund", {"ticket_id": "T-1001", "amount": 20, "currency": "USD", "reason": "x"})
        )
        _same_decisions(runtime, calls)
        low = evaluate(
            runtime,
            agent_id="triage-bot",
            environment="production",
            intent=Intent(
                tool="payments.refund",
                arguments={"ticket_id": "T-1001", "amount": 20, "currency": "USD", "reason": "x"},
                confidence=0.5,
            ),
        )
        assert low.decision.decision == "deny"
        assert any(p.startswith("policy") for p in low.decision.policy_ids), low.decision
        # A policy that reads the tool's name as a string is judged tool by tool.
        for agent in runtime.manifest.agents:
            shown = [t.name for t in visible_tools(_fresh(runtime), agent.id, environment=None)]
            assert shown == _every_tool_visible_alone(runtime, agent.id)
        reporter = [t.name for t in visible_tools(_fresh(runtime), "reporter", environment=None)]
        assert "tickets.search" not in reporter
        assert "tickets.get" in reporter
    finally:
        runtime.close()
