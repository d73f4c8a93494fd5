"""A person settles an unknown outcome from every face: the REST API, the CLI and the console.

The rules are in-process tests (test_journal.py); here each face must carry the three resolutions
(it happened, with evidence; it did not; retry now with the same upstream key) to the one service,
refuse what the service refuses with the face's own error, and leave the audit chain whole.
On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest import SUPPORT_TRIAGE, Harness
from interlock._internal.audit.chain import iter_events
from interlock._internal.cli import ops
from interlock._internal.gateway import records
from interlock._internal.gateway.recovery import recover_expired
from interlock._internal.server import create_app
from interlock.exceptions import StorageError
from interlock.testing import InMemoryUpstream

WF = "support-triage"
REFUND = {"ticket_id": "T-1003", "amount": 30, "currency": "USD", "reason": "late delivery"}
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]*)"')

cli_app = typer.Typer()
cli_app.add_typer(ops.handoffs_app, name="handoffs")


class Kit:
    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.h = Harness(db_url)
        self.upstream = InMemoryUpstream()
        self.upstream.stub("payments.refund", self._refunded)
        self.h.il.load_workflow(SUPPORT_TRIAGE, transports={"*": self.upstream})
        ops_ = self.h.il.operators
        self.tokens = {
            "approver": ops_.create("ana", roles=["approver"], workflows=[WF], actor="test")[1],
            "auditor": ops_.create("audrey", roles=["auditor"], workflows=[WF], actor="test")[1],
        }
        self.app = create_app(interlock=self.h.il)

    def _refunded(self, **args: Any) -> dict[str, Any]:
        n = len(self.upstream.calls)
        return {
            **{k: args[k] for k in ("ticket_id", "amount", "currency")},
            "refund_id": f"R-{n}",
            "status": "succeeded",
        }

    def unknown(self, key: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
        """A refund whose call went out and whose outcome was never recorded, found by recovery."""
        run = self.h.run()
        real = records.write_step

        def failing(*args: Any, **kwargs: Any) -> None:
            if args[5] in ("executed", "failed"):
                raise StorageError("injected: the database went away")
            real(*args, **kwargs)

        with monkeypatch.context() as patch:
            patch.setattr(records, "write_step", failing)
            with pytest.raises(StorageError):
                self.h.act(run, "payments.refund", REFUND, idempotency_key=key)
        recover_expired(self.h.il.engine, now=10**10)
        [handoff] = [x for x in self.h.il.handoffs.list(state="open") if x.run_id == run]
        assert handoff.reason_code == "outcome_unknown"
        return run, handoff.id

    def resolutions(self) -> list[dict[str, Any]]:
        return [e.data for e in iter_events(self.h.il.engine) if e.kind == "action.outcome_resolved"]


@pytest.fixture
def kit(db_url: str) -> Iterator[Kit]:
    k = Kit(db_url)
    yield k
    k.h.close()


# ---- REST ------------------------------------------------------------------------------------------


def test_rest_settles_each_resolution_and_refuses_happened_without_evidence(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    http = TestClient(kit.app)
    approver = {"Authorization": f"Bearer {kit.tokens['approver']}"}
    auditor = {"Authorization": f"Bearer {kit.tokens['auditor']}"}

    _, happened = kit.unknown("k-happened", monkeypatch)
    path = f"/v1/handoffs/{happened}/resolve"
    listed = http.get("/v1/handoffs", headers=approver).json()
    assert [x["reason_code"] for x in listed if x["id"] == happened] == ["outcome_unknown"]
    no_evidence = http.post(path, headers=approver, json={"action": "happened"})
    assert no_evidence.status_code == 422, no_evidence.text
    assert "evidence" in no_evidence.json()["error"]["message"]
    plain_resume = http.post(path, headers=approver, json={"action": "resume"})
    assert plain_resume.status_code == 422, plain_resume.text
    by_auditor = http.post(path, headers=auditor, json={"action": "happened", "evidence": "R-1"})
    assert by_auditor.status_code == 403, by_auditor.text
    settled = http.post(
        path, headers=approver, json={"action": "happened", "evidence": "refund R-1 in the ledger"}
    )
    assert settled.status_code == 200, settled.text
    assert settled.json()["handoff"]["state"] == "resolved"
    assert settled.json()["action_result"]["status"] == "executed"
    again = http.post(path, headers=approver, json={"action": "retry"})
    assert again.status_code == 409, again.text

    _, not_happened = kit.unknown("k-not", monkeypatch)
    answer = http.post(
        f"/v1/handoffs/{not_happened}/resolve",
        headers=approver,
        json={"action": "not_happened", "comment": "not in the ledger"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["action_result"]["status"] == "failed"

    _, retried = kit.unknown("k-retry", monkeypatch)
    calls_before = len(kit.upstream.calls)
    answer = http.post(f"/v1/handoffs/{retried}/resolve", headers=approver, json={"action": "retry"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["action_result"]["status"] == "executed"
    assert len(kit.upstream.calls) == calls_before + 1
    last, first = kit.upstream.calls[-1], kit.upstream.calls[calls_before - 1]
    assert last.idempotency_key == first.idempotency_key  # the same upstream key as the lost call

    assert [(r["resolution"], r.get("evidence")) for r in kit.resolutions()] == [
        ("happened", "refund R-1 in the ledger"),
        ("not_happened", None),
        ("retry", None),
    ]
    assert kit.h.il.verify_audit().ok


# ---- CLI -------------------------------------------------------------------------------------------


def test_the_cli_settles_an_unknown_outcome_and_names_what_is_missing(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    _, handoff = kit.unknown("k-cli", monkeypatch)
    base = ["handoffs", "resolve", handoff, "--as", "ana", "--db", kit.db_url]
    missing = runner.invoke(cli_app, [*base, "--action", "happened"])
    assert missing.exit_code != 0
    assert "evidence" in (missing.stdout + missing.stderr)
    refused = runner.invoke(
        cli_app,
        ["handoffs", "resolve", handoff, "--as", "audrey", "--db", kit.db_url, "--action", "not-happened"],
    )
    assert refused.exit_code != 0
    done = runner.invoke(cli_app, [*base, "--action", "not-happened", "--comment", "not in ledger", "--json"])
    assert done.exit_code == 0, done.stdout + done.stderr
    body = json.loads(done.stdout)
    assert body["handoff"]["state"] == "resolved"
    assert body["action_result"]["status"] == "failed"
    assert [r["resolution"] for r in kit.resolutions()] == ["not_happened"]
    assert len(kit.upstream.calls) == 1  # the CLI settled it; nothing called the upstream again


# ---- console ---------------------------------------------------------------------------------------


def _csrf(page: str) -> str:
    found = CSRF_FIELD.search(page)
    assert found, "the page has no CSRF field"
    return found.group(1)


def test_the_console_offers_the_three_resolutions_and_keeps_the_evidence(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = TestClient(kit.app, follow_redirects=False)
    login = client.get("/ui/login")
    signed = client.post("/ui/login", data={"token": kit.tokens["approver"], "csrf": _csrf(login.text)})
    assert signed.status_code == 303
    _, handoff = kit.unknown("k-ui", monkeypatch)

    page = client.get(f"/ui/handoffs/{handoff}")
    assert page.status_code == 200
    for action in ("happened", "not_happened", "retry"):
        assert f'name="action" value="{action}"' in page.text, action
    csrf = _csrf(page.text)
    empty = client.post(f"/ui/handoffs/{handoff}", data={"csrf": csrf, "action": "happened", "evidence": " "})
    assert empty.status_code in (200, 422)
    assert "what shows it happened" in empty.text.lower()
    assert kit.resolutions() == []

    done = client.post(
        f"/ui/handoffs/{handoff}",
        data={"csrf": csrf, "action": "happened", "evidence": "refund R-1 in the ledger"},
    )
    assert done.status_code == 303, done.text
    after = client.get(done.headers["location"])
    assert "refund R-1 in the ledger" in after.text
    assert [(r["resolution"], r["evidence"]) for r in kit.resolutions()] == [
        ("happened", "refund R-1 in the ledger")
    ]
    assert len(kit.upstream.calls) == 1
    assert kit.h.il.verify_audit().ok
