"""Run replay: recorded runs judged again under the current or a candidate policy, on both engines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from interlock._internal.cli.runs import app
from interlock._internal.gateway.runtime import build_runtime
from interlock._internal.manifest.loader import LoadedManifest, load_manifest_text
from interlock._internal.runs.replay import (
    active_manifest,
    load_run,
    read_export,
    reconcile,
    replay_run,
    write_export,
)
from interlock.exceptions import ConfigError

runner = CliRunner()


def variant(support_manifest_path: Path, old: str, new: str) -> LoadedManifest:
    """The reference manifest with one edit, anchored where its tools live."""
    text = support_manifest_path.read_text(encoding="utf-8")
    assert old in text, old
    return load_manifest_text(text.replace(old, new, 1), base_dir=support_manifest_path.parent)


FORBID_UPDATES = (
    "    - {id: no-deletes,",
    "    - {id: no-updates, tool: tickets.update}\n    - {id: no-deletes,",
)


def record_run(harness: Any) -> str:
    """A run with a bit of everything: reads, writes, refunds either side of 50, an e-mail whose
    address is redacted when stored, a forbidden delete and a schema failure."""
    run = harness.run()
    steps: list[tuple[str, dict[str, Any]]] = [
        ("tickets.search", {"query": "refund", "limit": 5}),
        ("tickets.get", {"ticket_id": "T-1001"}),
        ("tickets.update", {"ticket_id": "T-1001", "fields": {"priority": "high"}}),
        ("replies.draft", {"ticket_id": "T-1001", "body": "We are refunding the duplicate."}),
        ("payments.refund", {"ticket_id": "T-1001", "amount": 30, "currency": "USD", "reason": "duplicate"}),
        ("payments.refund", {"ticket_id": "T-1003", "amount": 120, "currency": "EUR", "reason": "seats"}),
        (
            "emails.send",
            {"ticket_id": "T-1001", "to": "maria.okafor@example.com", "subject": "Refund", "body": "Done."},
        ),
        ("customers.delete", {"customer_id": "C-1007"}),
        ("payments.refund", {"ticket_id": "T-1001", "amount": 10, "currency": "GBP", "reason": "x"}),
        ("tickets.update", {"ticket_id": "T-1002", "fields": {"group": "engineering"}}),
    ]
    for tool, args in steps:
        harness.act(run, tool, args)
    return run


def test_replay_under_the_recorded_policy_changes_nothing_and_is_deterministic(harness) -> None:
    run_id = record_run(harness)
    record = load_run(harness.il.engine, run_id)
    first = replay_run(record, harness.runtime).as_dict()
    second = replay_run(load_run(harness.il.engine, run_id), harness.runtime).as_dict()
    assert first == second
    assert first["summary"] == {"steps": 10, "same": 10, "changed": 0, "not_comparable": 0}
    assert [s["recorded"] for s in first["steps"]] == [
        "allow",
        "allow",
        "allow",
        "allow",
        "allow",
        "require_approval",
        "require_approval",
        "deny",
        "deny",
        "allow",
    ]
    # The e-mail address was masked before storage, so that step's arguments are not exact.
    exact = {s["seq"]: s["arguments_exact"] for s in first["steps"]}
    assert exact[7] is False
    assert all(v for seq, v in exact.items() if seq != 7)


def test_forbidding_a_tool_reports_exactly_its_steps(harness, support_manifest_path: Path) -> None:
    run_id = record_run(harness)
    candidate = build_runtime(variant(support_manifest_path, *FORBID_UPDATES))
    report = replay_run(load_run(harness.il.engine, run_id), candidate)
    changed = [(s.seq, s.tool, s.recorded, s.now) for s in report.changed]
    assert changed == [(3, "tickets.update", "allow", "deny"), (10, "tickets.update", "allow", "deny")]
    assert all(r["policy_id"] == "forbid:no-updates" for s in report.changed for r in s.now_reasons)
    assert report.not_comparable == []
    again = replay_run(load_run(harness.il.engine, run_id), candidate)
    assert again.as_dict() == report.as_dict()


def test_lowering_the_hard_limit_turns_the_approval_into_a_denial(
    harness, support_manifest_path: Path
) -> None:
    run_id = record_run(harness)
    candidate = build_runtime(variant(support_manifest_path, 'when: "amount > 500"', 'when: "amount > 100"'))
    report = replay_run(load_run(harness.il.engine, run_id), candidate)
    assert [(s.seq, s.recorded, s.now) for s in report.changed] == [(6, "require_approval", "deny")]


def test_redacted_arguments_that_fail_a_tighter_schema_are_not_comparable(
    harness, support_manifest_path: Path
) -> None:
    run_id = record_run(harness)
    # Only plain letters before the @: the stored "m***@example.com" fails, the original did not.
    tighter = variant(
        support_manifest_path,
        "to: {type: string, format: email, maxLength: 254}",
        'to: {type: string, format: email, maxLength: 254, pattern: "^[a-z.]+@[a-z.]+$"}',
    )
    report = replay_run(load_run(harness.il.engine, run_id), build_runtime(tighter))
    assert report.changed == []
    [step] = report.not_comparable
    assert (step.seq, step.tool, step.recorded, step.now) == (7, "emails.send", "require_approval", "deny")
    assert step.arguments_exact is False
    assert "redacted" in (step.note or "")


def test_candidate_caps_are_applied_to_the_recorded_counters(harness, support_manifest_path: Path) -> None:
    run_id = record_run(harness)
    candidate = build_runtime(variant(support_manifest_path, "max_tool_calls: 30", "max_tool_calls: 3"))
    report = replay_run(load_run(harness.il.engine, run_id), candidate)
    # Steps 1-3 used the three calls; every later step the policy allows alone now hits the cap.
    assert [(s.seq, s.now, s.now_reasons[0]["code"]) for s in report.changed] == [
        (4, "deny", "tool_call_cap_reached"),
        (5, "deny", "tool_call_cap_reached"),
        (10, "deny", "tool_call_cap_reached"),
    ]


def test_a_paused_workflow_holds_as_recorded(harness, support_manifest_path: Path) -> None:
    run_id = harness.run()
    harness.il.set_paused(harness.workflow, paused=True, actor="test", reason="incident")
    res = harness.act(run_id, "tickets.update", {"ticket_id": "T-1001", "fields": {"priority": "low"}})
    assert res.decision.reason_codes == ["workflow_paused"]
    record = load_run(harness.il.engine, run_id)
    [same] = replay_run(record, harness.runtime).steps
    assert (same.outcome, same.now, same.now_reasons[0]["code"]) == ("same", "deny", "workflow_paused")
    # A candidate that forbids the tool denies it by policy: still a denial, now for that reason.
    [forbidden] = replay_run(record, build_runtime(variant(support_manifest_path, *FORBID_UPDATES))).steps
    assert (forbidden.outcome, forbidden.now_reasons[0]["code"]) == ("same", "forbidden")


def test_reconcile_takes_what_else_decided_as_recorded() -> None:
    assert reconcile("deny", ["workflow_paused"], "allow") == ("deny", "brake")
    assert reconcile("deny", ["workflow_paused"], "deny") == ("deny", "policy")
    assert reconcile("escalate", ["loop_detected"], "allow") == ("escalate", "held")
    assert reconcile("escalate", ["loop_detected"], "require_approval") == ("require_approval", "policy")
    assert reconcile("allow", ["approved", "review_required"], "require_approval") == ("allow", "approved")
    assert reconcile("allow", ["approved", "review_required"], "deny") == ("deny", "policy")
    assert reconcile("allow", ["permitted"], "require_approval") == ("require_approval", "policy")


def test_active_manifest_is_the_stored_version(harness) -> None:
    loaded = active_manifest(harness.il.engine, harness.workflow)
    assert loaded is not None
    assert loaded.version_id == harness.runtime.version_id
    assert active_manifest(harness.il.engine, "no-such-workflow") is None


def test_export_then_replay_from_the_file_alone(harness, support_manifest_path: Path, tmp_path: Path) -> None:
    run_id = record_run(harness)
    out = tmp_path / "run.json"
    exported = runner.invoke(
        app, ["export", run_id, "--out", str(out), "--db", harness.il.settings.database.url, "--json"]
    )
    assert exported.exit_code == 0, exported.output
    data = json.loads(out.read_text())
    assert data["run"]["id"] == run_id
    assert len(data["steps"]) == 10
    assert data["manifest"]["version_id"] == harness.runtime.version_id
    assert "maria.okafor" not in out.read_text()  # redacted as stored
    assert json.loads(exported.stdout)["sha256"] == data["sha256"]
    harness.close()  # the database is gone for the replay: only the file is used

    same = runner.invoke(app, ["replay", "--file", str(out), "--json", "--fail-on-diff"])
    assert same.exit_code == 0, same.output
    assert json.loads(same.stdout)["summary"]["changed"] == 0

    candidate = tmp_path / "workflow.yaml"
    old, new = FORBID_UPDATES
    candidate.write_text(support_manifest_path.read_text().replace(old, new, 1))
    (tmp_path / "support_desk.py").symlink_to(support_manifest_path.parent / "support_desk.py")
    diff = runner.invoke(
        app, ["replay", "--file", str(out), "--manifest", str(candidate), "--json", "--fail-on-diff"]
    )
    assert diff.exit_code == 1, diff.output
    assert [s["seq"] for s in json.loads(diff.stdout)["steps"] if s["outcome"] == "changed"] == [3, 10]
    text = runner.invoke(app, ["replay", "--file", str(out), "--manifest", str(candidate)])
    assert text.exit_code == 0
    assert "2 changed" in text.stdout
    assert "#3 tickets.update: allow → deny" in text.stdout


def test_an_altered_export_is_refused(harness, tmp_path: Path) -> None:
    run_id = record_run(harness)
    out = tmp_path / "run.json"
    write_export(load_run(harness.il.engine, run_id), out)
    data = json.loads(out.read_text())
    data["steps"][7]["decision"]["decision"] = "allow"  # make the forbidden delete look allowed
    out.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as err:
        read_export(out)
    assert err.value.code == "export_altered"
    result = runner.invoke(app, ["replay", "--file", str(out), "--json"])
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["code"] == "export_altered"


def test_replay_from_the_database_uses_the_active_version(harness, support_manifest_path: Path) -> None:
    run_id = record_run(harness)
    same = runner.invoke(app, ["replay", run_id, "--db", harness.il.settings.database.url, "--fail-on-diff"])
    assert same.exit_code == 0, same.output
    assert "0 changed" in same.stdout
    # Activating a stricter version makes it the current policy for every replay.
    harness.il.load_workflow(variant(support_manifest_path, *FORBID_UPDATES))
    diff = runner.invoke(
        app, ["replay", run_id, "--db", harness.il.settings.database.url, "--json", "--fail-on-diff"]
    )
    assert diff.exit_code == 1, diff.output
    assert json.loads(diff.stdout)["summary"]["changed"] == 2
    unknown = runner.invoke(app, ["replay", "run_nope", "--db", harness.il.settings.database.url, "--json"])
    assert unknown.exit_code == 2
    assert json.loads(unknown.stdout)["error"]["code"] == "unknown_run"
