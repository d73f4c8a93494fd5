"""``interlock pause | resume | pauses`` and ``interlock handoffs`` on SQLite and PostgreSQL, acting as a
named operator on the database directly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from conftest import Harness
from interlock._internal.cli import ops

runner = CliRunner()
WF = "support-triage"
TICKET = {"ticket_id": "T-1001"}

# The commands as `interlock` registers them (cli/main.py), on an app of their own.
app = typer.Typer()
app.command("pause")(ops.pause)
app.command("resume")(ops.resume)
app.command("pauses")(ops.pauses)
app.add_typer(ops.handoffs_app, name="handoffs")


@pytest.fixture(autouse=True)
def _clean_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No interlock.toml or INTERLOCK_* from the machine running the tests.
    monkeypatch.chdir(tmp_path)
    for name in ("INTERLOCK_IDENTITY__SIGNING_SEED", "INTERLOCK_AUDIT__SIGNING_SEED", "INTERLOCK_MANIFESTS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def setup(db_url: str) -> Iterator[tuple[Harness, str]]:
    h = Harness(db_url)
    for op_id, roles, workflows in (
        ("admin", ["admin"], None),
        ("olga", ["owner"], [WF]),
        ("ana", ["approver"], [WF]),
        ("audrey", ["auditor"], [WF]),
        ("oncall", ["approver"], [WF]),  # a pause owner in the reference manifest
    ):
        h.il.operators.create(op_id, roles=roles, workflows=workflows, actor="test")
    yield h, db_url
    h.close()


def cli(*args: str) -> Any:
    return runner.invoke(app, list(args))


def cli_json(*args: str) -> Any:
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def cli_error(*args: str) -> dict[str, Any]:
    result = cli(*args, "--json")
    assert result.exit_code == 1, result.stdout + result.stderr
    error: dict[str, Any] = json.loads(result.stdout)["error"]
    return error


def looped(h: Harness) -> tuple[str, str]:
    run = h.run()
    for _ in range(3):
        assert h.act(run, "tickets.get", TICKET).executed
    assert h.act(run, "tickets.get", TICKET).status == "escalated"
    [handoff] = [x for x in h.il.handoffs.list(workflow=WF) if x.run_id == run]
    return run, handoff.id


def test_pause_and_resume_an_agent(setup: tuple[Harness, str]) -> None:
    h, db = setup
    run = h.run()
    paused = cli_json("pause", "agent", "triage-bot", "--reason", "odd refunds", "--as", "olga", "--db", db)
    assert paused["created"] is True
    assert paused["paused_by"] == "operator:olga"
    assert paused["workflow"] == WF
    assert h.act(run, "tickets.get", TICKET).decision.reason_codes == ["agent_paused"]

    [listed] = cli_json("pauses", "--db", db)
    assert (listed["scope"], listed["key"], listed["reason"]) == ("agent", "triage-bot", "odd refunds")
    text = cli("pauses", "--db", db)
    assert text.exit_code == 0
    assert "triage-bot" in text.stdout
    assert "odd refunds" in text.stdout
    again = cli_json("pause", "agent", "triage-bot", "--reason", "twice", "--as", "olga", "--db", db)
    assert again["created"] is False
    assert again["reason"] == "odd refunds"

    assert cli_error("resume", "agent", "triage-bot", "--as", "ana", "--db", db)["code"] == "forbidden"
    resumed = cli("resume", "agent", "triage-bot", "--as", "olga", "--db", db)
    assert resumed.exit_code == 0, resumed.stdout + resumed.stderr
    assert "resumed agent triage-bot" in resumed.stdout
    assert h.act(run, "tickets.get", TICKET).executed
    assert cli_json("pauses", "--db", db) == []
    assert cli_error("resume", "agent", "triage-bot", "--as", "olga", "--db", db)["code"] == "not_paused"


def test_pause_an_environment_needs_an_admin_and_a_reason(setup: tuple[Harness, str]) -> None:
    h, db = setup
    run = h.run()
    refused = cli_error(
        "pause", "environment", "production", "--reason", "incident", "--as", "ana", "--db", db
    )
    assert refused["code"] == "forbidden"
    assert (
        cli_error("pause", "environment", "production", "--reason", " ", "--as", "admin", "--db", db)["code"]
        == "invalid_request"
    )
    assert (
        cli_error("pause", "environment", "moon", "--reason", "x", "--as", "admin", "--db", db)["code"]
        == "unknown_environment"
    )
    assert (
        cli_error("pause", "agent", "ghost", "--reason", "x", "--as", "admin", "--db", db)["code"]
        == "unknown_agent"
    )
    assert (
        cli_error("pause", "agent", "triage-bot", "--reason", "x", "--as", "nobody", "--db", db)["code"]
        == "not_found"
    )
    assert cli("pause", "tool", "x", "--reason", "x", "--as", "admin", "--db", db).exit_code == 2

    done = cli("pause", "environment", "production", "--reason", "incident", "--as", "admin", "--db", db)
    assert done.exit_code == 0, done.stdout + done.stderr
    assert "paused environment production" in done.stdout
    assert h.act(run, "tickets.get", TICKET).decision.reason_codes == ["environment_paused"]
    cli_json("resume", "environment", "production", "--as", "admin", "--db", db)
    assert h.act(run, "tickets.get", TICKET).executed


def test_pause_a_workflow_as_a_pause_owner(setup: tuple[Harness, str]) -> None:
    h, db = setup
    assert (
        cli_error("pause", "workflow", WF, "--reason", "storm", "--as", "ana", "--db", db)["code"]
        == "forbidden"
    )
    cli_json("pause", "workflow", WF, "--reason", "storm", "--as", "oncall", "--db", db)
    assert h.il.is_paused(WF)
    [listed] = cli_json("pauses", "--as", "audrey", "--db", db)
    assert listed["paused_by"] == "operator:oncall"
    cli_json("resume", "workflow", WF, "--as", "oncall", "--db", db)
    assert not h.il.is_paused(WF)
    unknown = cli_error("pause", "workflow", "no-such-flow", "--reason", "x", "--as", "admin", "--db", db)
    assert unknown["code"] == "unknown_workflow"


def test_handoffs_list_show_and_stop(setup: tuple[Harness, str]) -> None:
    h, db = setup
    run, handoff_id = looped(h)
    [item] = cli_json("handoffs", "list", "--db", db)
    assert item["id"] == handoff_id
    assert item["reason_code"] == "loop_detected"
    assert cli_json("handoffs", "list", "--run", run, "--as", "audrey", "--db", db)[0]["id"] == handoff_id
    assert cli_json("handoffs", "list", "--state", "stopped", "--db", db) == []
    assert cli_error("handoffs", "list", "--state", "closed", "--db", db)["code"] == "invalid_request"
    text = cli("handoffs", "list", "--db", db)
    assert text.exit_code == 0
    assert handoff_id in text.stdout
    assert cli_json("handoffs", "show", handoff_id, "--db", db)["arguments"] == TICKET
    shown = cli("handoffs", "show", handoff_id, "--db", db)
    assert shown.exit_code == 0
    assert "already ran 3 times" in shown.stdout
    assert "T-1001" in shown.stdout

    refused = cli_error("handoffs", "resolve", handoff_id, "--action", "stop", "--as", "audrey", "--db", db)
    assert refused["code"] == "forbidden"
    stopped = cli_json(
        "handoffs", "resolve", handoff_id, "--action", "stop", "--comment", "loops", "--as", "ana", "--db", db
    )
    assert stopped["handoff"]["state"] == "stopped"
    assert stopped["handoff"]["resolved_by"] == "operator:ana"
    assert stopped["action_result"] is None
    assert h.il.get_run(run).state == "stopped"
    again = cli_error("handoffs", "resolve", handoff_id, "--action", "resume", "--as", "ana", "--db", db)
    assert again["code"] == "already_decided"
    assert cli_error("handoffs", "show", "nope", "--db", db)["code"] == "unknown_handoff"


def test_resolve_with_edited_arguments_runs_the_action(setup: tuple[Harness, str]) -> None:
    h, db = setup
    run, handoff_id = looped(h)
    base = ("handoffs", "resolve", handoff_id, "--as", "olga", "--db", db)
    assert (
        cli_error(*base, "--action", "resume-with-arguments", "--args", "{nope")["code"]
        == "invalid_arguments"
    )
    assert (
        cli_error(*base, "--action", "resume-with-arguments", "--args", "[1]")["code"] == "invalid_arguments"
    )
    missing = cli_error(*base, "--action", "resume-with-arguments")
    assert missing["code"] == "invalid_arguments"
    assert "arguments" in missing["message"]
    assert h.il.handoffs.get(handoff_id).state == "open"

    done = cli(*base, "--action", "resume-with-arguments", "--args", '{"ticket_id": "T-1002"}')
    assert done.exit_code == 0, done.stdout + done.stderr
    assert "resumed" in done.stdout
    assert "edited action  executed" in done.stdout
    assert h.il.get_run(run).state == "running"
    [step] = [s for s in h.il.get_run(run).steps_detail if (s.arguments or {}).get("ticket_id") == "T-1002"]
    assert step.status == "executed"


def test_resolve_resume_as_json(setup: tuple[Harness, str]) -> None:
    h, db = setup
    run, handoff_id = looped(h)
    body = cli_json("handoffs", "resolve", handoff_id, "--action", "resume", "--as", "admin", "--db", db)
    assert body["handoff"]["state"] == "resumed"
    assert body["handoff"]["resolution"]["action"] == "resume"
    assert h.il.get_run(run).state == "running"


def _widest(text: str) -> int:
    return max((len(line) for line in text.splitlines()), default=0)


@pytest.mark.parametrize("columns", [80, 160])
def test_handoffs_and_pauses_lists_are_readable_at_80_columns(
    setup: tuple[Harness, str], columns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    h, db = setup
    run, handoff_id = looped(h)
    listed = cli("handoffs", "list", "--db", db)
    assert listed.exit_code == 0, listed.output
    assert _widest(listed.stdout) <= columns
    assert handoff_id in listed.stdout  # whole: it is what the next command needs
    assert run in listed.stdout
    flat = " ".join(listed.stdout.split())
    assert "ticket_id T-1001" in flat
    assert "already" in flat  # why it was handed over (a table cell may wrap the sentence)
    if columns == 80:  # one block per handoff, id first, then what it holds and its state
        first = listed.stdout.splitlines()[0]
        assert first.startswith(handoff_id)
        assert "tickets.get" in first
        assert "open" in first
        assert "already ran 3 times" in flat

    cli_json(
        "pause", "agent", "triage-bot", "--reason", "odd refunds seen by finance", "--as", "olga", "--db", db
    )
    paused = cli("pauses", "--db", db)
    assert paused.exit_code == 0, paused.output
    assert _widest(paused.stdout) <= columns
    assert "odd refunds" in " ".join(paused.stdout.split())
    if columns == 80:
        assert paused.stdout.splitlines()[0].startswith("triage-bot")
