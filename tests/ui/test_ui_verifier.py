"""The console shows a verifier's verdict and reasoning on the approval page, and the verdict as a
step of the run's timeline (SQLite and PostgreSQL, through FastAPI's TestClient)."""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from conftest import Harness
from interlock._internal.identity.tokens import authenticate_agent
from interlock._internal.server import create_app
from verifier_manifest import verifier_manifest

CSRF_FIELD = re.compile(r'name="csrf" value="([^"]*)"')
BIG_REFUND = {"ticket_id": "T-1004", "amount": 300, "currency": "EUR", "reason": "double charge"}


@pytest.fixture
def h(db_url: str) -> Iterator[Harness]:
    harness = Harness(db_url, manifest=verifier_manifest())
    yield harness
    harness.close()


def signed_in(harness: Harness) -> TestClient:
    _, token = harness.il.operators.create("ana", roles=["approver"], workflows=None, actor="test")
    client = TestClient(create_app(interlock=harness.il), follow_redirects=False)
    form = client.get("/ui/login")
    found = CSRF_FIELD.search(form.text)
    assert found
    assert client.post("/ui/login", data={"token": token, "csrf": found.group(1)}).status_code == 303
    return client


def test_the_approval_page_and_the_timeline_show_the_verdict(h: Harness) -> None:
    run = h.run()
    pending = h.act(run, "payments.refund", BIG_REFUND)
    client = signed_in(h)
    waiting = client.get(f"/ui/approvals/{pending.approval_id}").text
    assert 'id="verifier"' in waiting
    assert "waits for the verifier" in waiting

    checker = authenticate_agent(h.tokens["refund-checker"], tokens=h.il.tokens, store=h.il.agents)
    args_hash = h.il.verifications.get(checker, str(pending.approval_id)).args_hash
    h.il.verifications.decide(
        checker,
        str(pending.approval_id),
        verdict="approve",
        args_hash=args_hash,
        reasoning="The customer was charged twice for order 4411.",
        model="mid-1",
        input_tokens=1000,
        output_tokens=100,
    )
    page = html_lib.unescape(client.get(f"/ui/approvals/{pending.approval_id}").text)
    section = page[page.index('id="verifier"') :]
    section = section[: section.index("</section>")]
    assert "refund-checker" in section
    assert "approve" in section
    assert "advice: policy says a person must decide this" in section
    assert "The customer was charged twice for order 4411." in section
    assert "never-settle:big-refunds-need-a-person" in section
    assert "Model mid-1" in section
    assert 'name="decision" value="approve"' in page  # the person still decides

    timeline = html_lib.unescape(client.get(f"/ui/runs/{run}").text)
    assert "Verifier refund-checker: approve on payments.refund (model mid-1)" in timeline
    assert "Verifier's reasoning: The customer was charged twice for order 4411." in timeline
    assert "Sent to a person" in timeline
