"""The evaluation gate: the reference golden set passes on the reference manifest and fails on a
weakened one. Every scenario runs through the real pipeline on its own fresh databases."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from interlock._internal.cli.evals import app
from interlock._internal.evals.golden import MISSING, StateCheck, load_golden, resolve_path, run_check
from interlock._internal.evals.runner import golden_path, run_golden
from interlock._internal.manifest.loader import load_manifest, load_manifest_text
from interlock.exceptions import ConfigError

runner = CliRunner()
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support-triage"
REQUIRED_CATEGORIES = {
    "routine",
    "refunds",
    "approvals",
    "forbidden",
    "adversarial",
    "schema",
    "identity",
    "limits",
}


def test_reference_golden_set_passes_on_the_reference_manifest(support_manifest_path: Path) -> None:
    loaded = load_manifest(support_manifest_path)
    golden = load_golden(golden_path(loaded))
    assert len(golden.scenarios) >= 40
    assert {s.category for s in golden.scenarios} >= REQUIRED_CATEGORIES
    before = os.environ["SUPPORT_DESK_DB"]
    seen: list[str] = []
    report = run_golden(loaded, golden, progress=lambda result: seen.append(result.id))
    failures = {r.id: r.as_dict() for r in report.results if not r.passed}
    assert failures == {}
    assert report.ok
    assert report.pass_rate == 1.0
    assert seen == [s.id for s in golden.scenarios]
    assert os.environ["SUPPORT_DESK_DB"] == before  # the per-scenario override is undone
    # Each scenario had its own desk: the two single-refund scenarios both saw exactly their refund.
    by_id = {r.id: r for r in report.results}
    assert [c.actual for c in by_id["refund-10"].checks] == [10]
    two = by_id["refund-two-small"].checks
    assert [len(two[0].actual), two[1].actual] == [2, 49.5]


def weakened(tmp_path: Path, support_manifest_path: Path) -> Path:
    """The reference manifest without the hard refund limit and the delete forbid."""
    text = support_manifest_path.read_text(encoding="utf-8")
    for line in (
        '    - {id: refund-hard-limit, tool: payments.refund, when: "amount > 500", description: Refunds'
        " above 500 are never made by an agent.}\n",
        "    - {id: no-deletes, tool: customers.delete, description: Agents never delete customers.}\n",
    ):
        assert line in text, line
        text = text.replace(line, "")
    path = tmp_path / "workflow.yaml"
    path.write_text(text, encoding="utf-8")
    for name in ("support_desk.py", "golden.yaml"):
        (tmp_path / name).symlink_to(EXAMPLE / name)
    load_manifest_text(text, base_dir=tmp_path)  # still a valid manifest
    return path


def test_a_weakened_manifest_fails_the_gate(tmp_path: Path, support_manifest_path: Path) -> None:
    path = weakened(tmp_path, support_manifest_path)
    result = runner.invoke(app, [str(path), "--json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is False
    assert data["pass_rate"] < data["threshold"] == 0.95
    failed = {s["id"] for s in data["scenarios"] if not s["passed"]}
    assert failed >= {
        "refund-500.01",
        "refund-900",
        "delete-forbidden",
        "delete-by-reporter-forbidden",
        "injection-bulk-search-then-refund",
    }
    refund = next(s for s in data["scenarios"] if s["id"] == "refund-900")
    [step] = refund["failed_steps"]
    assert step["expected"]["decision"] == "deny"
    assert step["actual"]["decision"] == "require_approval"
    # Without its forbid the delete is still denied, by default: the gate notices the reason changed.
    delete = next(s for s in data["scenarios"] if s["id"] == "delete-forbidden")
    [step] = delete["failed_steps"]
    assert step["actual"]["reasons"] == ["no_policy_permits"]
    assert all(c["ok"] for c in delete["checks"])


# ---- the golden file format and the check language -----------------------------------------------


def test_golden_jsonl_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "golden.jsonl"
    step = {"tool": "tickets.get", "arguments": {"ticket_id": "T-1001"}, "expect": {"decision": "allow"}}
    path.write_text(
        json.dumps({"setup": {"fresh_files": ["SUPPORT_DESK_DB"], "reset": "support_desk:reset"}})
        + "\n\n"
        + json.dumps({"id": "a", "category": "routine", "steps": [step]})
        + "\n"
    )
    golden = load_golden(path)
    assert golden.setup.fresh_files == ["SUPPORT_DESK_DB"]
    assert [s.id for s in golden.scenarios] == ["a"]

    dup = tmp_path / "dup.yaml"
    dup.write_text(
        "- {id: a, category: x, steps: [{tool: t, expect: {decision: allow}}]}\n"
        "- {id: a, category: x, steps: [{tool: t, expect: {decision: allow}}]}\n"
    )
    with pytest.raises(ConfigError, match="used twice"):
        load_golden(dup)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {id: b, category: x, steps: [{tool: t, expect: {decision: maybe}}]}\n")
    with pytest.raises(ConfigError, match=r"scenario 'b': steps\.0\.expect\.decision"):
        load_golden(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        "- {id: c, category: x, steps: [{tool: t, expect: {decision: deny, reasons: forbidden}}]}\n"
    )
    with pytest.raises(ConfigError, match="reasons"):
        load_golden(typo)


STATE = {
    "tickets": {"T-1001": {"priority": "high", "tags": ["billing"]}},
    "refunds": [{"amount": 0.1}, {"amount": 0.2}],
    "outbox": [],
    "flag": None,
}


@pytest.mark.parametrize(
    ("check", "ok"),
    [
        ({"path": "tickets.T-1001.priority", "equals": "high"}, True),
        ({"path": "tickets.T-1001.priority", "not_equals": "high"}, False),
        ({"path": "tickets.T-1001.tags", "contains": "billing"}, True),
        ({"path": "refunds.*.amount", "sum": 0.3}, True),
        ({"path": "refunds.*.amount", "sum": 0.31}, False),
        ({"path": "refunds", "count": 2}, True),
        ({"path": "refunds.1.amount", "at_least": 0.2, "at_most": 0.2}, True),
        ({"path": "refunds.-1.amount", "equals": 0.2}, True),
        ({"path": "outbox", "count": 0}, True),
        ({"path": "tickets.T-9999", "exists": False}, True),
        ({"path": "tickets.T-9999", "equals": None}, False),
        ({"path": "flag", "equals": None}, True),
        ({"path": "refunds.0.amount", "equals": True}, False),
    ],
)
def test_state_checks(check: dict[str, object], ok: bool) -> None:
    parsed = StateCheck.model_validate(check)
    assert parsed.path is not None
    assert run_check(parsed, resolve_path(STATE, parsed.path)).ok is ok


def test_state_check_needs_a_source_and_an_operation() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        StateCheck.model_validate({"equals": 1})
    with pytest.raises(ValueError, match="at least one"):
        StateCheck.model_validate({"path": "a"})
    assert resolve_path(STATE, "tickets.T-1001.priority.x") is MISSING
