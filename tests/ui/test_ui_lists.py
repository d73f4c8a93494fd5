"""Approvals and runs lists: search, filters and pages applied after the permission filter, in the
console and in the REST list endpoints, on SQLite and PostgreSQL; and the inbox's live counts.

Before, the inbox took the newest 500 approvals and then dropped what the operator may not see, so
a busy workflow they cannot see pushed theirs off the list. Now the permission filter is in the
query: pages and totals count only what the operator may see.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conftest import SUPPORT_TRIAGE, Harness
from interlock._internal.manifest.loader import load_manifest_text
from interlock._internal.server import create_app

WF, OTHER = "support-triage", "other-flow"
REFUND = {"ticket_id": "T-1003", "amount": 120, "currency": "USD", "reason": "charged twice"}
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]*)"')


@dataclass
class Setup:
    harness: Harness
    app: Any
    tokens: dict[str, str]
    other_token: str

    def console(self, operator: str) -> TestClient:
        client = TestClient(self.app, follow_redirects=False)
        form = client.get("/ui/login")
        found = CSRF_FIELD.search(form.text)
        assert found is not None
        answer = client.post("/ui/login", data={"token": self.tokens[operator], "csrf": found.group(1)})
        assert answer.status_code == 303
        return client

    def api(self, operator: str) -> TestClient:
        return TestClient(self.app, headers={"Authorization": f"Bearer {self.tokens[operator]}"})

    def refund(self, *, ticket: str = "T-1003", other: bool = False) -> str:
        il = self.harness.il
        token = self.other_token if other else self.harness.tokens["triage-bot"]
        run = il.start_run(token, trigger={"ticket": ticket}).id
        result = il.act(token, run, "payments.refund", {**REFUND, "ticket_id": ticket})
        assert result.status == "pending_approval"
        return str(result.approval_id)


@pytest.fixture
def setup(harness: Harness) -> Setup:
    il = harness.il
    text = SUPPORT_TRIAGE.read_text()
    text = text.replace("name: support-triage", f"name: {OTHER}", 1).replace(
        "id: triage-bot", "id: other-bot"
    )
    il.load_workflow(load_manifest_text(text, base_dir=SUPPORT_TRIAGE.parent))
    creds = il.agents.create("other-bot", workflow=OTHER, environment="production", actor="test")
    other_token = il.issue_token(creds.client_id, creds.client_secret).token
    ops = il.operators
    tokens = {
        "ana": ops.create("ana", roles=["approver"], workflows=[WF], actor="test")[1],
        "otto": ops.create("otto", roles=["approver"], workflows=[OTHER], actor="test")[1],
        "adam": ops.create("adam", roles=["admin"], workflows=None, actor="test")[1],
    }
    return Setup(harness, create_app(interlock=il), tokens, other_token)


def test_the_inbox_pages_and_counts_only_what_the_operator_may_see(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    from interlock._internal.ui import approval_pages

    mine = [setup.refund(ticket=f"T-100{n}") for n in range(1, 4)]  # older
    theirs = [setup.refund(ticket=f"T-200{n}", other=True) for n in range(1, 6)]  # newer
    monkeypatch.setattr(approval_pages, "PAGE_SIZE", 2)
    ana = setup.console("ana")

    first = ana.get("/ui/approvals?state=all").text  # newest first
    assert "3 approvals in any state; page 1 of 2." in first
    assert mine[2] in first
    assert mine[1] in first
    assert mine[0] not in first
    assert not any(t in first for t in theirs)
    second = ana.get("/ui/approvals?state=all&page=2").text
    assert mine[0] in second
    assert 'rel="prev"' in second
    assert 'rel="next"' not in second
    # Filters ride along on the page links.
    assert "/ui/approvals?state=all&amp;page=2" in first

    pending = ana.get("/ui/approvals").text  # oldest first
    assert mine[0] in pending
    assert mine[1] in pending
    assert mine[2] not in pending
    # Asking for a workflow they cannot see shows all of theirs, never the other's.
    assert "3 approvals pending" in ana.get(f"/ui/approvals?workflow={OTHER}").text
    assert (
        "5 approvals pending, oldest first; page 1 of 3." in setup.console("otto").get("/ui/approvals").text
    )


def test_the_inbox_searches_by_agent_tool_and_text(setup: Setup) -> None:
    first = setup.refund(ticket="T-1001")
    second = setup.refund(ticket="T-1002")
    h = setup.harness
    run = h.run()
    sent = h.act(
        run,
        "emails.send",
        {"ticket_id": "T-1002", "to": "maria@elsewhere.example", "subject": "Refund", "body": "Done."},
    )
    assert sent.status == "pending_approval"
    adam = setup.console("adam")

    found = adam.get("/ui/approvals?q=t-1002").text  # in the arguments, any case
    assert "2 approvals pending" in found
    assert second in found
    assert sent.approval_id in found
    assert first not in found
    by_tool = adam.get("/ui/approvals?tool=emails.send").text
    assert "1 approval pending" in by_tool
    assert sent.approval_id in by_tool
    assert "0 approvals" in adam.get("/ui/approvals?agent=reporter").text
    assert "3 approvals" in adam.get("/ui/approvals?agent=triage-bot").text
    assert "2 approvals" in adam.get("/ui/approvals?risk=money").text
    assert "1 approval " in adam.get("/ui/approvals?risk=external").text
    assert "0 approvals" in adam.get("/ui/approvals?q=100%25").text  # LIKE wildcards are literal
    assert 'value="t-1002"' in found  # the search stays in its field


def test_rest_approvals_search_and_page_after_permissions(setup: Setup) -> None:
    mine = [setup.refund(ticket=f"T-100{n}") for n in range(1, 4)]
    theirs = [setup.refund(ticket=f"T-200{n}", other=True) for n in range(1, 4)]
    api = setup.api("ana")

    page = api.get("/v1/approvals", params={"state": "all", "limit": 2})
    assert page.status_code == 200
    assert page.headers["X-Total-Count"] == "3"
    assert [a["id"] for a in page.json()] == [mine[2], mine[1]]
    rest = api.get("/v1/approvals", params={"state": "all", "limit": 2, "offset": 2})
    assert [a["id"] for a in rest.json()] == [mine[0]]
    assert rest.headers["X-Total-Count"] == "3"

    found = api.get("/v1/approvals", params={"q": "T-1002"})
    assert [a["id"] for a in found.json()] == [mine[1]]
    assert found.headers["X-Total-Count"] == "1"
    assert api.get("/v1/approvals", params={"tool": "emails.send"}).json() == []
    assert api.get("/v1/approvals", params={"agent": "other-bot"}).json() == []
    hidden = api.get("/v1/approvals", params={"workflow": OTHER})
    assert hidden.json() == []
    assert hidden.headers["X-Total-Count"] == "0"
    everything = setup.api("adam").get("/v1/approvals", params={"limit": 500})
    assert everything.headers["X-Total-Count"] == "6"
    assert {a["id"] for a in everything.json()} == set(mine + theirs)
    assert api.get("/v1/approvals", params={"offset": -1}).status_code == 422


def test_rest_runs_list_searches_and_pages_after_permissions(setup: Setup) -> None:
    il, h = setup.harness.il, setup.harness
    mine = [il.start_run(h.tokens["triage-bot"], trigger={"ticket": f"T-10{n}"}).id for n in range(10, 13)]
    theirs = [il.start_run(setup.other_token, trigger={"ticket": f"T-20{n}"}).id for n in range(10, 14)]
    h.act(mine[0], "tickets.get", {"ticket_id": "T-1001"})
    api = setup.api("ana")

    page = api.get("/v1/runs", params={"limit": 2})
    assert page.status_code == 200
    assert page.headers["X-Total-Count"] == "3"
    assert [r["id"] for r in page.json()] == [mine[2], mine[1]]
    rest = api.get("/v1/runs", params={"limit": 2, "offset": 2})
    assert [r["id"] for r in rest.json()] == [mine[0]]
    assert [r["id"] for r in api.get("/v1/runs", params={"tool": "tickets.get"}).json()] == [mine[0]]
    assert [r["id"] for r in api.get("/v1/runs", params={"q": "t-1011"}).json()] == [mine[1]]
    assert api.get("/v1/runs", params={"workflow": OTHER}).json() == []
    assert api.get("/v1/runs", params={"state": "completed"}).headers["X-Total-Count"] == "0"
    assert setup.api("otto").get("/v1/runs").headers["X-Total-Count"] == str(len(theirs))
    # Agents do not list runs.
    agent = TestClient(setup.app, headers={"Authorization": f"Bearer {h.tokens['triage-bot']}"})
    assert agent.get("/v1/runs").status_code == 401


def test_the_live_counts_follow_requests_and_decisions(setup: Setup) -> None:
    ana = setup.console("ana")
    before = ana.get("/ui/live").json()
    assert before["approvals"]["waiting"] == 0
    approval = setup.refund()
    setup.refund(other=True)  # not on a workflow ana may see
    after = ana.get("/ui/live").json()
    assert after["approvals"]["waiting"] == 1
    assert after["approvals"]["version"] != before["approvals"]["version"]
    assert after["handoffs"] == before["handoffs"]
    page = ana.get("/ui/approvals").text
    assert f'data-version="{after["approvals"]["version"]}"' in page
    assert 'src="/ui/static/console.js' in page

    il = setup.harness.il
    found = il.operators.with_token_hash("ana")
    assert found is not None
    il.approvals.decide(approval, operator=found[0].principal(), approve=False, comment="no")
    decided = ana.get("/ui/live").json()
    assert decided["approvals"]["waiting"] == 0
    assert decided["approvals"]["version"] != after["approvals"]["version"]
    # Signed out, the poll gets no counts.
    assert TestClient(setup.app, follow_redirects=False).get("/ui/live").status_code == 303


def test_polling_does_not_keep_an_idle_session_alive(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    from interlock._internal.ui import console as console_module

    ana = setup.console("ana")
    monkeypatch.setattr(console_module, "SESSION_REFRESH_S", 0)
    polled = ana.get("/ui/live")
    assert polled.status_code == 200
    assert "set-cookie" not in polled.headers  # the idle clock did not restart
    live_reload = ana.get("/ui/approvals", headers={"X-Interlock-Live": "1"})
    assert "set-cookie" not in live_reload.headers
    assert "set-cookie" in ana.get("/ui/approvals").headers  # a person's request does restart it
