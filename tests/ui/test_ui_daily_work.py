"""The console for daily work, through FastAPI's TestClient on SQLite and PostgreSQL: the history of
a record on the approval page, nested values as lists, step durations and the timing waterfall.

The same features in a real browser (with screenshots) are in ``tests/e2e/test_console_daily.py``.
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
from interlock._internal.ui import words
from interlock._internal.ui.run_pages import WATERFALL_WIDTH
from interlock.exceptions import ManifestError

WF = "support-triage"
REFUND = {"ticket_id": "T-1003", "amount": 120, "currency": "USD", "reason": "charged twice"}
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]*)"')


@dataclass
class Console:
    harness: Harness
    app: Any
    tokens: dict[str, str]

    def signed_in(self, operator: str) -> TestClient:
        client = TestClient(self.app, follow_redirects=False)
        form = client.get("/ui/login")
        csrf = CSRF_FIELD.search(form.text)
        assert csrf is not None
        answer = client.post("/ui/login", data={"token": self.tokens[operator], "csrf": csrf.group(1)})
        assert answer.status_code == 303
        return client

    def pending(self, tool: str, args: dict[str, Any], run: str | None = None) -> tuple[str, str]:
        run = run or self.harness.run()
        result = self.harness.act(run, tool, args)
        assert result.status == "pending_approval", result
        return run, str(result.approval_id)


@pytest.fixture
def console(harness: Harness) -> Console:
    ops = harness.il.operators
    tokens = {
        "approver": ops.create("ana", roles=["approver"], workflows=[WF], actor="test")[1],
        "stranger": ops.create("sam", roles=["approver"], workflows=["other-flow"], actor="test")[1],
    }
    return Console(harness, create_app(interlock=harness.il), tokens)


def section(html: str, section_id: str) -> str:
    found = re.search(rf'<section[^>]*id="{section_id}".*?</section>', html, re.S)
    assert found is not None, f"no section #{section_id}"
    return found.group(0)


# ---- history of this record ---------------------------------------------------------------------


def test_the_approval_page_shows_what_was_done_before_on_the_same_ticket(console: Console) -> None:
    il, h = console.harness.il, console.harness
    # An earlier run refunded T-1003 (approved), another was rejected; a third touched T-1004.
    _, first = console.pending("payments.refund", REFUND)
    il.approvals.decide(first, operator=_op(il, "ana"), approve=True, comment="duplicate charge")
    _, second = console.pending("payments.refund", {**REFUND, "amount": 80})
    il.approvals.decide(second, operator=_op(il, "ana"), approve=False, comment="already paid back")
    other = h.run()
    assert h.act(other, "tickets.update", {"ticket_id": "T-1004", "fields": {"priority": "high"}}).status == (
        "executed"
    )
    touched = h.run()
    h.act(touched, "tickets.get", {"ticket_id": "T-1003"})  # a read: not something done to it
    assert h.act(
        touched, "tickets.update", {"ticket_id": "T-1003", "fields": {"group": "billing"}}
    ).status == ("executed")

    run, now = console.pending("payments.refund", {**REFUND, "amount": 95})
    client = console.signed_in("approver")
    history = section(client.get(f"/ui/approvals/{now}").text, "history")
    assert "ticket id <strong>T-1003</strong>" in history
    assert "Refund 120.00 USD on ticket T-1003" in history
    assert "duplicate charge" in history
    assert "ana" in history
    # The approved refund is one line (its request, approved, and done), not two.
    assert history.count("Refund 120.00 USD on ticket T-1003") == 1
    assert re.search(r"Refund 120.00 USD on ticket T-1003</strong> <span[^>]*>Done</span>", history)
    assert "Refund 80.00 USD on ticket T-1003" in history
    assert "already paid back" in history
    assert "Update ticket T-1003 (group → billing)" in history
    assert "T-1004" not in history  # another ticket
    assert "Read ticket" not in history  # reads left out
    assert f"/ui/runs/{run}" not in history  # the run itself is in "The run so far"
    # Newest first: the ticket update came after both refunds.
    assert history.index("group → billing") < history.index("Refund 80.00") < history.index("Refund 120.00")


def test_the_history_only_shows_runs_the_operator_may_see(console: Console) -> None:
    _, first = console.pending("payments.refund", REFUND)
    il = console.harness.il
    found, more = il.runs.history({"ticket_id": "T-1003"}, workflows=["other-flow"])
    assert found == []
    assert more is False
    found, _ = il.runs.history({"ticket_id": "T-1003"}, workflows=[WF])
    assert [f.tool for f in found] == ["payments.refund"]
    assert found[0].approval_id == first
    assert found[0].approval_state == "pending"
    assert found[0].matched == ("ticket_id",)


def test_history_matches_a_key_exactly_not_as_a_prefix_or_nested(console: Console) -> None:
    h = console.harness
    run = h.run()
    h.act(run, "tickets.update", {"ticket_id": "T-10031", "fields": {"priority": "low"}})
    h.act(run, "tickets.update", {"ticket_id": "T-1002", "fields": {"tags": ["T-1003"]}})
    found, _ = h.il.runs.history({"ticket_id": "T-1003"}, workflows=[WF])
    assert found == []
    found, _ = h.il.runs.history({"ticket_id": "T-10031"}, workflows=[WF])
    assert len(found) == 1


def test_history_says_when_only_the_latest_are_shown(console: Console) -> None:
    h = console.harness
    run = h.run()
    for n in range(5):
        h.act(
            run, "tickets.update", {"ticket_id": "T-1003", "fields": {"priority": "high" if n % 2 else "low"}}
        )
    found, more = h.il.runs.history({"ticket_id": "T-1003"}, workflows=[WF], limit=3)
    assert len(found) == 3
    assert more is True
    found, more = h.il.runs.history({"ticket_id": "T-1003"}, workflows=[WF], limit=5)
    assert len(found) == 5
    assert more is False


def test_record_keys_in_the_manifest_choose_the_key_and_are_checked() -> None:
    text = SUPPORT_TRIAGE.read_text()
    declared = text.replace(
        '    upstream: {kind: python, callable: "support_desk:send_email"}',
        '    upstream: {kind: python, callable: "support_desk:send_email"}\n    record_keys: [to]',
    )
    manifest = load_manifest_text(declared, base_dir=SUPPORT_TRIAGE.parent).manifest
    spec = manifest.tool("emails.send")
    assert spec is not None
    args = {"ticket_id": "T-1", "to": "ana@example.com", "subject": "s", "body": "b"}
    assert spec.key_arguments(args) == {"to": "ana@example.com"}
    refund = manifest.tool("payments.refund")
    assert refund is not None
    assert refund.key_arguments(REFUND) == {"ticket_id": "T-1003"}
    with pytest.raises(ManifestError, match="record_keys names 'recipient'"):
        load_manifest_text(
            declared.replace("record_keys: [to]", "record_keys: [recipient]"), base_dir=SUPPORT_TRIAGE.parent
        )


# ---- nested values ------------------------------------------------------------------------------


def test_nested_values_are_lists_not_json() -> None:
    value = {"fields": {"priority": "high", "tags": ["login", "vip"]}, "n": 3}
    items = words.argument_items(value)
    assert [k for k, _ in items] == ["fields", "n"]
    fields = items[0][1]
    assert fields.entries is not None
    assert [k for k, _ in fields.entries] == ["priority", "tags"]
    tags = dict(fields.entries)["tags"]
    assert tags.elements is not None
    assert [str(e) for e in tags.elements] == ["login", "vip"]
    assert str(items[1][1]) == "3"
    assert not items[1][1].nested
    long = words.shown(list(range(60)))
    assert long.elements is not None
    assert len(long.elements) == 50
    assert long.more == 10


def test_the_run_page_draws_nested_results_as_lists(console: Console) -> None:
    h = console.harness
    run = h.run()
    h.act(
        run, "tickets.update", {"ticket_id": "T-1002", "fields": {"group": "engineering", "tags": ["login"]}}
    )
    page = console.signed_in("approver").get(f"/ui/runs/{run}").text
    assert '<dl class="kv nested">' in page
    assert '<ul class="nested">' in page
    assert "<dt>group</dt>" in page
    assert "<li>login</li>" in page
    assert '{"group"' not in page
    assert "{&#34;group" not in page


# ---- durations and the waterfall --------------------------------------------------------------


def test_the_run_page_shows_step_durations_and_a_waterfall(console: Console) -> None:
    h = console.harness
    run = h.run()
    h.act(run, "tickets.get", {"ticket_id": "T-1003"})
    h.act(run, "tickets.update", {"ticket_id": "T-1003", "fields": {"priority": "high"}})
    h.act(run, "payments.refund", REFUND)  # sent for approval: nothing measured
    page = console.signed_in("approver").get(f"/ui/runs/{run}").text
    timing = section(page, "timing")
    assert timing.count("<tr>") == 4  # head and three steps
    assert "3 steps over" in timing
    rects = re.findall(r'<rect class="bar-(\w+) status-(\w+)" x="([\d.]+)" y="0" width="([\d.]+)"', timing)
    assert [(k, s) for k, s, _, _ in rects] == [
        ("read", "executed"),
        ("write", "executed"),
        ("write", "pending_approval"),
    ]
    for _, _, x, width in rects:
        assert float(x) >= 0
        assert float(x) + float(width) <= WATERFALL_WIDTH
    xs = [float(x) for _, _, x, _ in rects]
    assert xs == sorted(xs)
    assert len(re.findall(r'took <span class="took">[^<]*(ms|s)</span>', page)) == 2
    assert "—" in timing  # the approval request took no measured time


def _op(il: Any, operator_id: str) -> Any:
    found = il.operators.with_token_hash(operator_id)
    assert found is not None
    return found[0].principal()


# ---- unmasked values ----------------------------------------------------------------------------

EMAIL = {
    "ticket_id": "T-1001",
    "to": "maria.lopez@elsewhere.example",
    "subject": "Your refund",
    "body": "Hello Maria, your refund is on its way. Token sk_live_abcdefghijklmnopqrstuv stays here.",
}


@pytest.fixture
def entitled(db_url: str) -> Any:
    text = SUPPORT_TRIAGE.read_text().replace(
        "  allow_self_approval: false", "  allow_self_approval: false\n  unmasked_roles: [approver]"
    )
    h = Harness(db_url, load_manifest_text(text, base_dir=SUPPORT_TRIAGE.parent))
    ops = h.il.operators
    tokens = {
        "approver": ops.create("ana", roles=["approver"], workflows=[WF], actor="test")[1],
        "owner": ops.create("olga", roles=["owner"], workflows=[WF], actor="test")[1],
    }
    yield Console(h, create_app(interlock=h.il), tokens)
    h.close()


def test_an_entitled_approver_sees_unmasked_values_and_it_is_audited(entitled: Console) -> None:
    from interlock._internal.audit.chain import iter_events

    _, approval = entitled.pending("emails.send", EMAIL)
    ana = entitled.signed_in("approver")
    page = ana.get(f"/ui/approvals/{approval}").text
    assert "m***@elsewhere.example" in page
    assert "maria.lopez@" not in page
    assert "Masked before storage: to." in page
    assert "Show unmasked values" in page
    csrf = CSRF_FIELD.search(page)
    assert csrf is not None

    shown = ana.post(f"/ui/approvals/{approval}/unmask", data={"csrf": csrf.group(1)})
    assert shown.status_code == 200
    assert "<dd>maria.lopez@elsewhere.example</dd>" in shown.text
    assert "Hello Maria" in shown.text
    assert "sk_live_" not in shown.text  # credentials stay masked
    assert "[REDACTED:api_key]" in shown.text
    assert "The audit log records that you saw them." in shown.text
    assert shown.headers["cache-control"] == "no-store"
    [event] = [e for e in iter_events(entitled.harness.il.engine) if e.kind == "approval.unmasked"]
    assert event.actor == "operator:ana"
    assert event.data == {"approval": approval, "operator": "ana", "fields": ["to"], "via": "console"}
    assert entitled.harness.il.verify_audit().ok

    # Without the form token nothing is shown.
    assert ana.post(f"/ui/approvals/{approval}/unmask", data={"csrf": "forged"}).status_code == 403


def test_others_still_see_masked_values(entitled: Console) -> None:
    _, approval = entitled.pending("emails.send", EMAIL)
    olga = entitled.signed_in("owner")  # may decide, but owner is not in unmasked_roles
    page = olga.get(f"/ui/approvals/{approval}").text
    assert "Masked before storage" in page
    assert "Show unmasked values" not in page
    csrf = CSRF_FIELD.search(page)
    assert csrf is not None
    refused = olga.post(f"/ui/approvals/{approval}/unmask", data={"csrf": csrf.group(1)})
    assert refused.status_code == 403
    assert "maria.lopez" not in refused.text


def test_without_unmasked_roles_nobody_sees_unmasked_values(console: Console) -> None:
    _, plain = console.pending("emails.send", EMAIL)
    assert "Show unmasked values" not in console.signed_in("approver").get(f"/ui/approvals/{plain}").text


def test_a_decided_approval_has_no_values_left_to_unmask(entitled: Console) -> None:
    from interlock.exceptions import ConflictError

    il = entitled.harness.il
    _, approval = entitled.pending("emails.send", EMAIL)
    ana = _op(il, "ana")
    il.approvals.decide(approval, operator=ana, approve=False, comment="wrong recipient")
    assert il.approvals.masked_fields(approval) == []
    with pytest.raises(ConflictError, match="kept only while it waits"):
        il.approvals.unmask(approval, operator=ana)
    assert "Show unmasked values" not in entitled.signed_in("approver").get(f"/ui/approvals/{approval}").text


def test_history_is_found_when_payloads_are_encrypted_at_rest(db_url: str) -> None:
    import secrets

    h = Harness(db_url, storage={"encryption_keys": {"k1": secrets.token_hex(32)}, "encryption_key_id": "k1"})
    try:
        run = h.run()
        h.act(run, "tickets.update", {"ticket_id": "T-1003", "fields": {"priority": "high"}})
        h.act(run, "tickets.update", {"ticket_id": "T-10031", "fields": {"priority": "low"}})
        found, more = h.il.runs.history({"ticket_id": "T-1003"}, workflows=[WF])
        assert [f.arguments["ticket_id"] for f in found] == ["T-1003"]
        assert more is False
        # The inbox's text search still finds by id, agent and tool (not inside encrypted arguments).
        other = h.run()
        pending = h.act(other, "payments.refund", REFUND)
        views, total = h.il.approvals.search(workflows=[WF], text="refund")
        assert total == 1
        assert views[0].id == pending.approval_id
        assert h.il.approvals.search(workflows=[WF], text="T-1003")[1] == 0
    finally:
        h.close()
