"""The console's pages through FastAPI's TestClient: sign-in, sessions, CSRF, escaping, roles.

Every test runs on SQLite and PostgreSQL (the ``harness`` fixture). The browser flows live in
``tests/e2e/test_console.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conftest import Harness
from interlock import __version__
from interlock._internal.identity.signin_links import SignInLinks
from interlock._internal.server import create_app
from interlock._internal.ui.console import CSP
from interlock._internal.ui.routes import LOCAL_ADMIN, console_of, sign_in_url
from interlock._internal.ui.session import SESSION_COOKIE, SessionSigner

WF = "support-triage"
REFUND = {"ticket_id": "T-1003", "amount": 120, "currency": "USD", "reason": "charged twice"}
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]*)"')


@dataclass
class Console:
    harness: Harness
    app: Any
    tokens: dict[str, str]

    def client(self, base_url: str = "http://testserver") -> TestClient:
        return TestClient(self.app, base_url=base_url, follow_redirects=False)

    def signed_in(self, operator: str) -> TestClient:
        client = self.client()
        sign_in(client, self.tokens[operator])
        return client

    def pending_refund(self, args: dict[str, Any] | None = None, **kw: Any) -> tuple[str, str]:
        run = self.harness.run()
        result = self.harness.act(run, "payments.refund", args or REFUND, **kw)
        assert result.status == "pending_approval"
        return run, result.approval_id


@pytest.fixture
def console(harness: Harness) -> Console:
    ops = harness.il.operators
    tokens = {
        "approver": ops.create("ana", roles=["approver"], workflows=[WF], actor="test")[1],
        "owner": ops.create("olga", roles=["owner"], workflows=[WF], actor="test")[1],
        "admin": ops.create("adam", roles=["admin"], workflows=None, actor="test")[1],
        "auditor": ops.create("audrey", roles=["auditor"], workflows=[WF], actor="test")[1],
        "stranger": ops.create("sam", roles=["approver", "owner"], workflows=["other-flow"], actor="test")[1],
    }
    return Console(harness, create_app(interlock=harness.il), tokens)


def csrf_of(html: str) -> str:
    found = CSRF_FIELD.search(html)
    assert found, "the page has no CSRF field"
    return found.group(1)


def sign_in(client: TestClient, token: str, *, next_url: str = "") -> Any:
    form = client.get("/ui/login")
    assert form.status_code == 200
    return client.post("/ui/login", data={"token": token, "csrf": csrf_of(form.text), "next": next_url})


def decide(client: TestClient, approval_id: str, decision: str, comment: str = "") -> Any:
    page = client.get(f"/ui/approvals/{approval_id}")
    return client.post(
        f"/ui/approvals/{approval_id}",
        data={"csrf": csrf_of(page.text), "decision": decision, "comment": comment},
    )


# ---- signing in -------------------------------------------------------------------------------


def test_pages_send_a_visitor_to_sign_in_and_back(console: Console) -> None:
    client = console.client()
    response = client.get("/ui/runs?workflow=support-triage")
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login?next=%2Fui%2Fruns%3Fworkflow%3Dsupport-triage"
    signed = sign_in(client, console.tokens["approver"], next_url="/ui/runs?workflow=support-triage")
    assert signed.status_code == 303
    assert signed.headers["location"] == "/ui/runs?workflow=support-triage"
    assert client.get("/ui/runs").status_code == 200


def test_the_session_cookie_is_httponly_strict_signed_and_secure_on_https(console: Console) -> None:
    response = sign_in(console.client(), console.tokens["approver"])
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=v1.")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Path=/ui/" in cookie
    assert "Secure" not in cookie
    assert console.tokens["approver"] not in cookie
    https = sign_in(console.client("https://testserver"), console.tokens["approver"])
    assert "Secure" in https.headers["set-cookie"]


def test_sign_in_refuses_bad_tokens_agent_secrets_and_forged_forms(console: Console) -> None:
    client = console.client()
    wrong = sign_in(client, "ilop_" + "x" * 43)
    assert wrong.status_code == 401
    assert "not accepted" in wrong.text
    assert f"{SESSION_COOKIE}=" not in wrong.headers.get("set-cookie", "")
    agent = sign_in(client, console.harness.secrets["triage-bot"])
    assert agent.status_code == 401
    assert "start with ilop_" in agent.text
    # A form posted from elsewhere has no matching sign-in cookie.
    forged = console.client().post("/ui/login", data={"token": console.tokens["admin"], "csrf": "guess"})
    assert forged.status_code == 403
    assert f"{SESSION_COOKIE}=" not in forged.headers.get("set-cookie", "")


def test_a_tampered_or_foreign_cookie_is_no_session(console: Console) -> None:
    value = console.signed_in("approver").cookies[SESSION_COOKIE]
    version, payload, mac = value.split(".")

    def status_with(cookie: str) -> int:
        headers = {"cookie": f"{SESSION_COOKIE}={cookie}"}
        return console.client().get("/ui/approvals", headers=headers).status_code

    assert status_with(value) == 200
    assert status_with(f"{version}.{payload}x.{mac}") == 303
    assert status_with(f"{version}.{payload}.{mac[:-2]}") == 303
    # The same operator signed with another seed (another deployment) is refused too.
    other, _ = SessionSigner("another-seed").issue("ana", "0" * 16)
    assert status_with(other) == 303


def test_a_disabled_operator_or_rotated_token_is_out_at_once(console: Console) -> None:
    ana = console.signed_in("approver")
    olga = console.signed_in("owner")
    assert ana.get("/ui/approvals").status_code == 200
    console.harness.il.operators.disable("ana", actor="test")
    assert ana.get("/ui/approvals").status_code == 303
    console.harness.il.operators.rotate_token("olga", actor="test")
    assert olga.get("/ui/workflows").status_code == 303


def test_sign_out_needs_the_form_token_and_ends_the_session(console: Console) -> None:
    client = console.signed_in("approver")
    page = client.get("/ui/approvals")
    assert client.post("/ui/logout", data={"csrf": "nope"}).status_code == 403
    out = client.post("/ui/logout", data={"csrf": csrf_of(page.text)})
    assert out.status_code == 303
    assert out.headers["location"] == "/ui/login"
    assert client.get("/ui/approvals").status_code == 303


def test_the_one_time_link_signs_the_local_admin_in_once(console: Console) -> None:
    link = sign_in_url(console.app, "http://testserver/ui")
    assert link is not None
    assert "/ui/login?token=" in link
    code = link.split("token=", 1)[1]
    assert not code.startswith("ilop_")
    record = console.harness.il.operators.get(LOCAL_ADMIN)
    assert record.active
    assert set(record.roles) == {"admin", "owner", "approver", "auditor"}
    client = console.client()
    first = client.get(f"/ui/login?token={code}")
    assert first.status_code == 303
    assert first.headers["location"] == "/ui/approvals"
    assert client.get("/ui/approvals").status_code == 200
    again = console.client().get(f"/ui/login?token={code}")
    assert again.status_code == 400
    assert "already used or has expired" in again.text
    # A disabled local admin gets no link.
    console.harness.il.operators.disable(LOCAL_ADMIN, actor="test")
    assert sign_in_url(console.app, "http://testserver/ui") is None


def test_sign_in_links_live_in_the_database_expire_and_work_once(console: Console) -> None:
    links = console.harness.il.signin_links
    code = links.issue("ana", actor="test", ttl_s=60, now=1000.0)
    assert links.redeem(code, now=1061.0) is None
    code = links.issue("ana", actor="test", ttl_s=60, now=1000.0)
    # Another process on the same database (another replica) redeems it: nothing lives in memory.
    other = SignInLinks(console.harness.il.engine)
    assert other.redeem(code, now=1010.0) == "ana"
    assert links.redeem(code, now=1010.0) is None
    assert links.redeem("", now=1010.0) is None


def test_after_sign_in_the_console_only_redirects_inside_itself(console: Console) -> None:
    for target in ("https://evil.example/", "//evil.example/ui", "/v1/agents", "/ui\\@evil"):
        response = sign_in(console.client(), console.tokens["approver"], next_url=target)
        assert response.headers["location"] == "/ui/approvals", target


# ---- headers, CSRF, escaping ------------------------------------------------------------------


def test_every_console_response_carries_the_security_headers(console: Console) -> None:
    client = console.signed_in("approver")
    for path in ("/ui/login", "/ui/approvals", "/ui/no-such-page", "/ui/static/console.css"):
        response = client.get(path)
        assert response.headers["content-security-policy"] == CSP, path
        assert "default-src 'self'" in CSP
        assert "unsafe-inline" not in CSP
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-content-type-options"] == "nosniff"
    page = client.get("/ui/approvals")
    assert page.headers["cache-control"] == "no-store"
    # One script, from the console's own static files, with nothing inline (the CSP forbids it).
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", page.text, re.S)
    assert scripts == [""]
    assert re.findall(r"<script\b[^>]*>", page.text) == [
        f'<script src="/ui/static/console.js?v={__version__}" defer>'
    ]
    assert " style=" not in page.text
    missing = client.get("/ui/no-such-page")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")


def test_a_post_without_the_session_form_token_changes_nothing(console: Console) -> None:
    _, approval_id = console.pending_refund()
    ana = console.signed_in("approver")
    for token in ("", "forged"):
        response = ana.post(f"/ui/approvals/{approval_id}", data={"csrf": token, "decision": "approve"})
        assert response.status_code == 403
        assert "reload the page" in response.text
    # Another person's form token does not work in Ana's session either.
    olga = console.signed_in("owner")
    olga_token = csrf_of(olga.get(f"/ui/approvals/{approval_id}").text)
    response = ana.post(f"/ui/approvals/{approval_id}", data={"csrf": olga_token, "decision": "approve"})
    assert response.status_code == 403
    assert console.harness.il.approvals.get(approval_id).state == "pending"
    assert olga.post(f"/ui/workflows/{WF}/pause", data={"csrf": "", "reason": "x"}).status_code == 403
    assert not console.harness.il.is_paused(WF)


def test_arguments_reasoning_and_links_are_escaped(console: Console) -> None:
    args = {**REFUND, "reason": '<script>alert("x")</script><img src=x onerror=alert(1)>'}
    _, approval_id = console.pending_refund(
        args,
        reasoning="<b>trust me</b>",
        evidence=["javascript:alert(1)", "https://desk.example.com/tickets/T-1003", "data:text/html,<p>"],
    )
    client = console.signed_in("approver")
    for path in (f"/ui/approvals/{approval_id}", "/ui/approvals", "/ui/runs"):
        html = client.get(path).text
        assert "<script>alert" not in html
        assert "<img src=x" not in html
        assert "<b>trust" not in html
    html = client.get(f"/ui/approvals/{approval_id}").text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "&lt;b&gt;trust me&lt;/b&gt;" in html
    assert 'href="https://desk.example.com/tickets/T-1003"' in html
    assert 'href="javascript:' not in html
    assert 'href="data:' not in html
    assert "javascript:alert(1)" in html  # shown, as text


# ---- the pages --------------------------------------------------------------------------------


def test_the_inbox_lists_in_plain_words_and_filters(console: Console) -> None:
    _, approval_id = console.pending_refund()
    run = console.harness.run()
    email = console.harness.act(
        run,
        "emails.send",
        {"ticket_id": "T-1001", "to": "priya@example.com", "subject": "Your refund", "body": "Done."},
    )
    assert email.status == "pending_approval"
    client = console.signed_in("approver")
    html = client.get("/ui/approvals").text
    assert "Refund 120.00 USD on ticket T-1003" in html
    assert "Send email to p***@example.com on ticket T-1001" in html  # redacted before storage
    assert "triage-bot" in html
    assert "in 23 h" in html
    money = client.get("/ui/approvals?risk=money").text
    assert "Refund 120.00 USD" in money
    assert "Send email" not in money
    assert "Refund 120.00" not in client.get("/ui/approvals?age=1h").text
    assert "Refund 120.00" not in client.get("/ui/approvals?state=approved").text
    assert f'href="/ui/approvals/{approval_id}"' in html


def test_the_approval_page_is_the_whole_decision_package(console: Console) -> None:
    run = console.harness.run()
    console.harness.act(run, "tickets.get", {"ticket_id": "T-1003"})
    result = console.harness.act(
        run, "payments.refund", REFUND, reasoning="Charged twice for March.", evidence=["https://d.example/1"]
    )
    html = console.signed_in("approver").get(f"/ui/approvals/{result.approval_id}").text
    for expected in (
        "Refund 120.00 USD on ticket T-1003",
        "charged twice",  # the arguments
        "Charged twice for March.",  # the reasoning
        'href="https://d.example/1"',
        "leaves the company",  # impact if accepted
        "customer keeps waiting",  # impact if rejected
        "moves money",
        "Refunds above 50 need a person.",
        "Read ticket T-1003",  # the run so far
        'value="approve"',
        'value="reject"',
        '<label for="comment">',
    ):
        assert expected in html, expected


def test_approving_executes_and_the_timeline_names_the_approver(console: Console, desk: Any) -> None:
    run, approval_id = console.pending_refund()
    client = console.signed_in("approver")
    response = decide(client, approval_id, "approve", "duplicate charge, confirmed")
    assert response.status_code == 303
    assert response.headers["location"] == f"/ui/approvals/{approval_id}"
    page = client.get(response.headers["location"]).text
    assert "Approved and executed." in page
    assert "R-0001" in page
    assert "duplicate charge, confirmed" in page
    assert desk.refunds_total() == 120
    timeline = client.get(f"/ui/runs/{run}").text
    assert "What it changed" in timeline
    assert re.search(r"Refund 120.00 USD on ticket T-1003</strong> <span class=\"sub\">in payments", timeline)
    assert 'approved by <span class="approver">ana</span>' in timeline
    # Deciding again is refused with the reason, not a crash.
    olga = console.signed_in("owner")
    again = olga.post(
        f"/ui/approvals/{approval_id}",
        data={"csrf": csrf_of(olga.get("/ui/approvals").text), "decision": "reject", "comment": "no"},
    )
    assert again.status_code == 409


def test_rejecting_needs_a_reason_and_the_agent_gets_it(console: Console, desk: Any) -> None:
    run = console.harness.run()
    pending = console.harness.act(run, "payments.refund", REFUND, idempotency_key="refund-T-1003")
    client = console.signed_in("approver")
    silent = decide(client, pending.approval_id, "reject", "  ")
    assert silent.status_code == 422
    assert "Say why you reject it" in silent.text
    response = decide(client, pending.approval_id, "reject", "the customer was already refunded")
    assert response.status_code == 303
    page = client.get(response.headers["location"]).text
    assert "Rejected; nothing was executed." in page
    retry = console.harness.act(run, "payments.refund", REFUND, idempotency_key="refund-T-1003")
    assert retry.status == "denied"
    assert "the customer was already refunded" in retry.decision.reasons[0].message
    assert desk.refunds_total() == 0


def test_roles_decide_who_sees_decides_pauses_and_revokes(console: Console) -> None:
    _, approval_id = console.pending_refund()
    auditor = console.signed_in("auditor")
    page = auditor.get(f"/ui/approvals/{approval_id}")
    assert page.status_code == 200
    assert 'value="approve"' not in page.text
    refused = auditor.post(
        f"/ui/approvals/{approval_id}", data={"csrf": csrf_of(page.text), "decision": "approve"}
    )
    assert refused.status_code == 403
    assert "may not decide" in refused.text
    assert console.harness.il.approvals.get(approval_id).state == "pending"

    stranger = console.signed_in("stranger")
    assert stranger.get(f"/ui/approvals/{approval_id}").status_code == 404
    assert "Refund 120.00" not in stranger.get("/ui/approvals").text
    assert stranger.get(f"/ui/workflows/{WF}").status_code == 404

    ana = console.signed_in("approver")
    wf = ana.get(f"/ui/workflows/{WF}")
    assert "Pause support-triage" not in wf.text
    denied = ana.post(f"/ui/workflows/{WF}/pause", data={"csrf": csrf_of(wf.text), "reason": "x"})
    assert denied.status_code == 403
    assert not console.harness.il.is_paused(WF)
    agents = ana.get("/ui/agents")
    assert "triage-bot" in agents.text
    assert "/revoke" not in agents.text
    assert ana.post("/ui/agents/reporter/revoke", data={"csrf": csrf_of(agents.text)}).status_code == 403
    assert console.harness.il.agents.get("reporter").active


def test_an_owner_pauses_with_a_reason_and_the_agent_is_denied(console: Console) -> None:
    run = console.harness.run()
    olga = console.signed_in("owner")
    page = olga.get(f"/ui/workflows/{WF}")
    assert "Pause support-triage" in page.text
    blank = olga.post(f"/ui/workflows/{WF}/pause", data={"csrf": csrf_of(page.text), "reason": " "})
    assert blank.status_code == 422
    assert not console.harness.il.is_paused(WF)
    done = olga.post(f"/ui/workflows/{WF}/pause", data={"csrf": csrf_of(page.text), "reason": "refund storm"})
    assert done.status_code == 303
    assert console.harness.il.is_paused(WF)
    paused = olga.get(f"/ui/workflows/{WF}").text
    assert "refund storm" in paused
    assert "operator:olga" in paused
    assert "Resume support-triage" in paused
    result = console.harness.act(run, "tickets.get", {"ticket_id": "T-1001"})
    assert result.status == "denied"
    assert result.decision.reasons[0].code == "workflow_paused"
    olga.post(f"/ui/workflows/{WF}/resume", data={"csrf": csrf_of(paused), "reason": ""})
    assert not console.harness.il.is_paused(WF)


def test_an_admin_revokes_an_agent(console: Console) -> None:
    adam = console.signed_in("admin")
    page = adam.get("/ui/agents")
    assert page.status_code == 200
    assert "/ui/agents/reporter/revoke" in page.text
    done = adam.post("/ui/agents/reporter/revoke", data={"csrf": csrf_of(page.text), "reason": "retired"})
    assert done.status_code == 303
    record = console.harness.il.agents.get("reporter")
    assert not record.active
    assert record.revoked_by == "operator:adam"
    assert "/ui/agents/reporter/revoke" not in adam.get("/ui/agents").text


def test_the_workflow_page_shows_the_operating_model_and_figures(console: Console) -> None:
    console.pending_refund()
    html = console.signed_in("auditor").get(f"/ui/workflows/{WF}").text
    for expected in (
        "support-ops@example.com",
        "Triage incoming support tickets",
        "tickets triaged without human rework",
        "payments.refund when amount &lt;= 50",  # runs alone
        "Refunds above 50 need a person.",  # needs approval
        "Agents never delete customers.",  # forbidden
        "refund-needs-reason",  # stop rule
        "$2.00",  # budget
        "support-lead",  # pause owners
        "This week's figures",
        "Denial rate",
    ):
        assert expected in html, expected
    assert "Owners, admins and the workflow's pause owners can pause it." in html


def test_runs_list_and_timeline_read_in_words(console: Console) -> None:
    run = console.harness.run()
    console.harness.act(run, "tickets.get", {"ticket_id": "T-1001"})
    console.harness.act(run, "customers.delete", {"customer_id": "C-1001"})
    client = console.signed_in("auditor")
    runs = client.get("/ui/runs").text
    assert f"/ui/runs/{run}" in runs
    assert "ticket: T-1001" in runs
    html = client.get(f"/ui/runs/{run}").text
    assert "Read ticket T-1001" in html
    assert "read from helpdesk" in html
    assert "Delete customer C-1001" in html
    assert "Denied" in html
    assert "no-deletes" in html
    assert "Nothing changed in any system." in html
    assert client.get("/ui/runs/run_missing").status_code == 404


def test_the_console_is_mounted_once_and_found(console: Console) -> None:
    found = console_of(console.app)
    assert found is not None
    assert found.interlock is console.harness.il


def test_runs_search_filters_and_pages_after_permissions(console: Console, monkeypatch: Any) -> None:
    from interlock._internal.ui import run_pages

    h = console.harness
    tickets = ["T-1001", "T-1002", "T-1003"]
    runs = [h.il.start_run(h.tokens["triage-bot"], trigger={"ticket": t}).id for t in tickets]
    h.act(runs[0], "tickets.get", {"ticket_id": "T-1001"})
    client = console.signed_in("approver")

    everything = client.get("/ui/runs").text
    assert "3 runs, newest first." in everything
    found = client.get("/ui/runs?q=t-1002").text  # case-insensitive, in the trigger
    assert "1 run, newest first." in found
    assert runs[1] in found
    assert runs[0] not in found
    with_tool = client.get("/ui/runs?tool=tickets.get").text
    assert "1 run, newest first." in with_tool
    assert runs[0] in with_tool
    assert "0 runs" in client.get("/ui/runs?agent=reporter").text
    assert "3 runs" in client.get("/ui/runs?state=running").text

    # Pages count only what the operator may see: someone with no role on the workflow sees none.
    assert "0 runs" in console.signed_in("stranger").get("/ui/runs").text
    monkeypatch.setattr(run_pages, "PAGE_SIZE", 2)
    monkeypatch.setattr("interlock._internal.ui.routes.PAGE_SIZE", 2)
    first = client.get("/ui/runs").text
    assert "page 1 of 2" in first
    assert runs[2] in first
    assert runs[1] in first
    assert runs[0] not in first
    second = client.get("/ui/runs?page=2").text
    assert runs[0] in second
    assert runs[2] not in second
    assert 'rel="prev"' in second
    assert 'rel="next"' not in second
