"""``interlock eval`` driven through its Typer app, on a small workflow with a generic reset hook."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from interlock._internal.cli.evals import app

runner = CliRunner()

MANIFEST = """
name: counter
version: "1"
owner: ops@example.com
objective: Count things, a little at a time.
success_metric: {name: counts}
environments: [production]
agents:
  - {id: bot, environment: production, roles: [worker]}
roles:
  worker: {verbs: [update]}
tools:
  - name: counter.bump
    verb: update
    input_schema:
      type: object
      properties: {by: {type: integer, minimum: 1, maximum: 10}}
      required: [by]
    upstream: {kind: python, callable: "counter_tools:bump"}
rules:
  allow:
    - {id: small, tool: counter.bump, when: "by <= 5"}
evaluation: {golden_set: golden.yaml, threshold: 1.0}
"""

TOOLS = """
STATE = {"value": 0, "resets": 0}


def bump(by):
    STATE["value"] += by
    return {"value": STATE["value"]}


def reset():
    STATE["value"] = 0
    STATE["resets"] += 1


def state():
    return dict(STATE)


def value():
    return STATE["value"]
"""

GOLDEN = """
setup: {reset: "counter_tools:reset", state: "counter_tools:state"}
scenarios:
  - id: bump-3
    category: routine
    steps:
      - tool: counter.bump
        arguments: {by: 3}
        expect: {decision: allow, status: executed, policy: "allow:small"}
    expect_final_state:
      - {path: value, equals: 3}
  - id: bump-2-after-reset
    category: routine
    description: The reset hook ran, so the count starts at zero again.
    steps:
      - {tool: counter.bump, arguments: {by: 2}, expect: {decision: allow}}
    expect_final_state:
      - {path: value, equals: 2}
      - {call: "counter_tools:value", equals: 2}
  - id: big-bump
    category: limits
    steps:
      - {tool: counter.bump, arguments: {by: 7}, expect: {decision: deny, reason: no_policy_permits}}
      - {tool: counter.bump, arguments: {by: 11}, expect: {decision: deny, status: invalid}}
    expect_final_state:
      - {path: value, equals: 0}
"""


@pytest.fixture
def workflow(tmp_path: Path) -> Path:
    folder = tmp_path / "counter"
    folder.mkdir()
    (folder / "workflow.yaml").write_text(MANIFEST)
    (folder / "counter_tools.py").write_text(TOOLS)
    (folder / "golden.yaml").write_text(GOLDEN)
    return folder


def test_eval_passes_with_a_reset_hook(workflow: Path) -> None:
    result = runner.invoke(app, [str(workflow)])
    assert result.exit_code == 0, result.output
    assert "PASS 3/3 scenarios (100.0%)" in result.stdout
    assert "routine" in result.stdout
    assert "limits" in result.stdout


def test_eval_json_report(workflow: Path) -> None:
    result = runner.invoke(app, [str(workflow / "workflow.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["categories"] == {"routine": {"passed": 2, "total": 2}, "limits": {"passed": 1, "total": 1}}
    assert (data["passed"], data["total"], data["threshold"], data["ok"]) == (3, 3, 1.0, True)
    assert data["scenarios"][1]["checks"] == [
        {"subject": "value", "ok": True, "expected": "equals 2", "actual": 2},
        {"subject": "counter_tools:value()", "ok": True, "expected": "equals 2", "actual": 2},
    ]


def test_eval_fails_below_the_threshold_and_says_why(workflow: Path) -> None:
    wrong = workflow / "wrong.yaml"
    wrong.write_text(GOLDEN.replace("{decision: deny, reason: no_policy_permits}", "{decision: allow}"))
    result = runner.invoke(app, [str(workflow), "--golden", str(wrong)])
    assert result.exit_code == 1, result.output
    assert "FAIL big-bump (limits)" in result.stdout
    assert "decision: expected allow, got deny" in result.stdout
    assert "FAIL 2/3 scenarios" in result.stdout
    # A lower threshold lets the same result through.
    lenient = runner.invoke(app, [str(workflow), "--golden", str(wrong), "--threshold", "0.6", "--json"])
    assert lenient.exit_code == 0, lenient.output
    failed = [s for s in json.loads(lenient.stdout)["scenarios"] if not s["passed"]]
    assert [s["id"] for s in failed] == ["big-bump"]
    assert failed[0]["failed_steps"][0]["actual"]["reasons"] == ["no_policy_permits"]


def test_eval_state_check_failure_is_reported(workflow: Path) -> None:
    wrong = workflow / "state.yaml"
    wrong.write_text(GOLDEN.replace("{path: value, equals: 3}", "{path: value, equals: 4}"))
    result = runner.invoke(app, [str(workflow), "--golden", str(wrong)])
    assert result.exit_code == 1
    assert "state value: expected equals 4, got 3" in result.stdout


def test_eval_finds_a_configured_workflow_by_name(workflow: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERLOCK_MANIFESTS", json.dumps([str(workflow / "workflow.yaml")]))
    result = runner.invoke(app, ["counter", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["workflow"] == "counter"


def test_eval_usage_errors_exit_2(workflow: Path, tmp_path: Path) -> None:
    missing = runner.invoke(app, [str(workflow), "--golden", str(tmp_path / "none.yaml"), "--json"])
    assert missing.exit_code == 2
    assert json.loads(missing.stdout)["error"]["code"] == "golden_unreadable"
    unknown = runner.invoke(app, ["no-such-workflow", "--json"])
    assert unknown.exit_code == 2
    assert json.loads(unknown.stdout)["error"]["code"] == "unknown_workflow"
    (workflow / "workflow.yaml").write_text(
        MANIFEST.replace("evaluation: {golden_set: golden.yaml, threshold: 1.0}", "")
    )
    none = runner.invoke(app, [str(workflow), "--json"])
    assert none.exit_code == 2
    assert json.loads(none.stdout)["error"]["code"] == "no_golden_set"


def test_a_broken_hook_fails_its_scenarios_not_the_command(workflow: Path) -> None:
    broken = workflow / "broken.yaml"
    broken.write_text(GOLDEN.replace('reset: "counter_tools:reset"', 'reset: "counter_tools:nope"'))
    result = runner.invoke(app, [str(workflow), "--golden", str(broken), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["passed"] == 0
    assert "nope" in data["scenarios"][0]["error"]


def test_eval_writes_junit_and_a_markdown_summary(workflow: Path, tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    wrong = workflow / "wrong.yaml"
    wrong.write_text(GOLDEN.replace("{decision: deny, reason: no_policy_permits}", "{decision: allow}"))
    junit, summary = tmp_path / "out" / "eval.xml", tmp_path / "out" / "eval.md"
    result = runner.invoke(
        app, [str(workflow), "--golden", str(wrong), "--junit", str(junit), "--summary", str(summary)]
    )
    assert result.exit_code == 1, result.output
    root = ET.parse(junit).getroot()  # well-formed, or this raises
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("4", "2", "0")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {"bump-3", "bump-2-after-reset", "big-bump", "pass-rate"}
    failure = cases["big-bump"].find("failure")
    assert failure is not None
    assert "decision: expected allow, got deny" in (failure.text or "")
    assert cases["bump-3"].find("failure") is None
    assert cases["pass-rate"].find("failure") is not None
    text = summary.read_text()
    assert text.startswith("### Interlock eval — `counter` ❌ failed")
    assert "| limits | 0/1 ❌ |" in text
    assert "**big-bump** (limits)" in text
    passing = runner.invoke(app, [str(workflow), "--junit", str(junit)])
    assert passing.exit_code == 0, passing.output
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert suite.get("failures") == "0"
