"""``interlock approvals`` on SQLite and PostgreSQL: list, show, approve, reject and cancel as a
named operator, working on the database directly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import Harness
from interlock._internal.audit.chain import iter_events
from interlock._internal.cli import approvals

runner = CliRunner()
REFUND = {"ticket_id": "T-1003", "amount": 120, "currency": "EUR", "reason": "broken item"}
EMAIL = {"ticket_id": "T-1001", "to": "customer@example.com", "subject": "Your order", "body": "On its way."}


@pytest.fixture(autouse=True)
def _clean_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No interlock.toml or INTERLOCK_* from the machine running the tests.
    monkeypatch.chdir(tmp_path)
    for name in ("INTERLOCK_IDENTITY__SIGNING_SEED", "INTERLOCK_AUDIT__SIGNING_SEED", "INTERLOCK_MANIFESTS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def setup(db_url: str) -> Iterator[tuple[Harness, str]]:
    h = Harness(db_url)
    for op_id, roles in (("alice", ["approver"]), ("bob", ["approver"]), ("audrey", ["auditor"])):
        h.il.operators.create(op_id, roles=roles, workflows=None, actor="test")
    yield h, db_url
    h.close()


def cli(*args: str) -> Any:
    return runner.invoke(approvals.app, list(args))


def cli_json(*args: str) -> Any:
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def cli_error(*args: str) -> dict[str, Any]:
    result = cli(*args, "--json")
    assert result.exit_code == 1, result.stdout + result.stderr
    error: dict[str, Any] = json.loads(result.stdout)["error"]
    return error


def test_list_show_approve(setup: tuple[Harness, str], desk: Any) -> None:
    h, db = setup
    run = h.run()
    approval_id = h.act(
        run, "payments.refund", REFUND, idempotency_key="k-1", reasoning="arrived broken"
    ).approval_id

    [item] = cli_json("list", "--db", db)
    assert item["id"] == approval_id
    assert item["package"]["reasoning"] == "arrived broken"
    assert [a["id"] for a in cli_json("list", "--as", "alice", "--risk", "money", "--db", db)] == [
        approval_id
    ]
    assert cli_json("list", "--risk", "external", "--db", db) == []
    assert cli_json("list", "--min-age", "3600", "--db", db) == []
    assert cli_json("show", approval_id, "--db", db)["state"] == "pending"

    text = cli("list", "--db", db)
    assert text.exit_code == 0
    assert approval_id in text.stdout
    shown = cli("show", approval_id, "--db", db)
    assert shown.exit_code == 0
    assert "refund via payments.refund" in shown.stdout
    assert "arrived broken" in shown.stdout
    assert "0/1 to approve" in shown.stdout

    view = cli_json("approve", approval_id, "--as", "alice", "-m", "photo checks out", "--db", db)
    assert view["state"] == "approved"
    assert view["decided_by"] == ["alice"]
    assert view["execution"] == "done"
    assert view["outcome"]["status"] == "executed"
    assert desk.refunds_total() == 120
    retry = h.act(run, "payments.refund", REFUND, idempotency_key="k-1")
    assert retry.status == "executed"
    assert retry.replayed

    again = cli_error("approve", approval_id, "--as", "bob", "--db", db)
    assert again["code"] == "already_decided"
    assert desk.refunds_total() == 120
    shown = cli("show", approval_id, "--db", db)
    assert "approved" in shown.stdout
    assert "alice" in shown.stdout
    assert "photo checks out" in shown.stdout
    [event] = list(iter_events(h.il.engine, kinds=["approval.approved"]))
    assert event.actor == "operator:alice"
    assert event.data["via"].startswith("cli")
    assert event.data["comment"] == "photo checks out"
    assert cli_json("list", "--db", db) == []
    assert [a["id"] for a in cli_json("list", "--state", "all", "--db", db)] == [approval_id]


def test_reject_and_cancel(setup: tuple[Harness, str], desk: Any) -> None:
    h, db = setup
    run = h.run()
    refund = h.act(run, "payments.refund", REFUND, idempotency_key="k-2").approval_id
    email = h.act(run, "emails.send", EMAIL).approval_id

    view = cli_json("reject", refund, "--as", "bob", "--comment", "refund 50 instead", "--db", db)
    assert view["state"] == "rejected"
    assert view["comment"] == "refund 50 instead"
    retry = h.act(run, "payments.refund", REFUND, idempotency_key="k-2")
    assert retry.status == "denied"
    assert "refund 50 instead" in retry.decision.reasons[0].message
    assert desk.refunds_total() == 0

    human = cli("cancel", email, "--as", "alice", "-m", "ticket closed", "--db", db)
    assert human.exit_code == 0, human.stdout + human.stderr
    assert "cancelled" in human.stdout
    assert h.il.approvals.get(email).state == "cancelled"


def test_acting_as_someone_is_checked(setup: tuple[Harness, str]) -> None:
    h, db = setup
    approval_id = h.act(h.run(), "emails.send", EMAIL).approval_id
    assert cli_error("approve", approval_id, "--as", "nobody", "--db", db)["code"] == "not_found"
    assert cli_error("approve", approval_id, "--as", "audrey", "--db", db)["code"] == "not_eligible"
    h.il.operators.disable("bob", actor="test")
    assert cli_error("reject", approval_id, "--as", "bob", "--db", db)["code"] == "operator_disabled"
    assert cli_error("show", "apr_missing", "--db", db)["code"] == "unknown_approval"
    h.il.operators.create("elsa", roles=["approver"], workflows=["billing"], actor="test")
    assert cli_json("list", "--as", "elsa", "--db", db) == []
    assert cli_error("show", approval_id, "--as", "elsa", "--db", db)["code"] == "unknown_approval"
    missing_as = cli("approve", approval_id, "--db", db)
    assert missing_as.exit_code == 2  # --as is required to decide
    assert h.il.approvals.get(approval_id).state == "pending"
    human = cli("approve", approval_id, "--as", "audrey", "--db", db)
    assert human.exit_code == 1
    assert "may not decide" in human.stderr


def _width(result: Any) -> int:
    return max((len(line) for line in result.stdout.splitlines()), default=0)


@pytest.mark.parametrize("columns", ["80", "160"])
def test_the_list_is_readable_at_80_columns_and_shows_the_amount(
    setup: tuple[Harness, str], desk: Any, columns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    h, db = setup
    run = h.run()
    approval_id = h.act(run, "payments.refund", REFUND, idempotency_key="k-80").approval_id
    text = cli("list", "--db", db)
    assert text.exit_code == 0, text.output
    assert _width(text) <= int(columns)
    assert approval_id in text.stdout  # whole, never wrapped: it is what the next command needs
    assert "amount 120 EUR" in " ".join(text.stdout.split())
    if columns == "80":  # one block per approval, not a table of slivers
        first = text.stdout.splitlines()[0]
        assert first.startswith(approval_id)
        assert "payments.refund" in first
        assert "pending" in first
