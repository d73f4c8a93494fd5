"""The console shows value-limit headroom on the approval page and cached steps on the run page
(SQLite and PostgreSQL, through FastAPI's TestClient)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from conftest import Harness
from interlock._internal.server import create_app

CSRF_FIELD = re.compile(r'name="csrf" value="([^"]*)"')


def signed_in(harness: Harness) -> TestClient:
    _, token = harness.il.operators.create("ana", roles=["approver"], workflows=None, actor="test")
    client = TestClient(create_app(interlock=harness.il), follow_redirects=False)
    form = client.get("/ui/login")
    found = CSRF_FIELD.search(form.text)
    assert found
    assert client.post("/ui/login", data={"token": token, "csrf": found.group(1)}).status_code == 303
    return client


def test_the_approval_page_shows_the_headroom_of_each_value_limit(harness: Harness) -> None:
    run = harness.run()
    refund = {"ticket_id": "T-1003", "currency": "USD", "reason": "charged twice"}
    assert harness.act(run, "payments.refund", {**refund, "amount": 45.5}).executed
    pending = harness.act(run, "payments.refund", {**refund, "amount": 460})
    assert pending.status == "pending_approval"
    page = signed_in(harness).get(f"/ui/approvals/{pending.approval_id}")
    assert page.status_code == 200
    html = page.text
    assert 'id="value-limits"' in html
    row = html[html.index('data-limit="refunds-per-ticket-day"') :]
    row = row[: row.index("</tr>")]
    assert "for ticket_id T-1003" in row
    assert "500 USD" in row
    assert "45.5 USD" in row
    assert '<td class="num headroom">454.5 USD</td>' in row
    assert "exceeds the headroom" in row  # 460 asked, 454.5 left
    other = html[html.index('data-limit="refunds-per-workflow-day"') :]
    assert '<td class="num headroom">4,954.5 USD</td>' in other[: other.index("</tr>")]


def test_the_run_page_marks_a_cached_step(harness: Harness) -> None:
    first = harness.act(harness.run(), "tickets.get", {"ticket_id": "T-1001"})
    run = harness.run()
    cached = harness.act(run, "tickets.get", {"ticket_id": "T-1001"})
    assert cached.executed
    page = signed_in(harness).get(f"/ui/runs/{run}")
    assert page.status_code == 200
    assert (
        f"Answered from the cache (fetched by step {first.step_id}); the upstream was not called."
        in page.text
    )
    assert ">Cached</span>" in page.text
