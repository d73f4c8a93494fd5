"""The console for daily work in a real browser, with screenshots in test-artifacts/: the history of
a record on the approval page, nested values as lists, and the run's timing waterfall."""

from __future__ import annotations

from typing import Any

import pytest
from test_console import REFUND, Server, browser, in_view, page, server, shot  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.e2e


def on_screen(locator: Any) -> bool:
    """Whether the element lies wholly inside the viewport as it is scrolled now."""
    return bool(
        locator.evaluate(
            "e => { const r = e.getBoundingClientRect(); return r.top >= 0 && r.bottom <= innerHeight; }"
        )
    )


def test_the_approval_page_tells_the_ticket_was_refunded_before(page: Any, server: Server) -> None:  # noqa: F811
    from playwright.sync_api import expect

    h = server.harness
    earlier = h.run()
    first = h.act(earlier, "payments.refund", REFUND, reasoning="Charged twice.")
    assert first.status == "pending_approval"
    page.goto(f"{server.url}/ui/approvals/{first.approval_id}")
    page.get_by_label("Comment").fill("Duplicate charge confirmed.")
    page.get_by_role("button", name="Approve").click()
    expect(page.locator("#outcome")).to_contain_text("Approved and executed.")

    _, again = server.refund(idempotency_key="history-again")
    page.goto(f"{server.url}/ui/approvals/{again.approval_id}")
    history = page.locator("#history")
    expect(history.get_by_role("heading", name="History of this record")).to_be_visible()
    expect(history).to_contain_text("ticket id T-1003")
    line = history.get_by_role("listitem").filter(has_text="Refund 120.00 USD on ticket T-1003")
    expect(line).to_have_count(1)
    expect(line).to_contain_text("Done")
    expect(line).to_contain_text("Approved by olga")
    expect(line).to_contain_text("Duplicate charge confirmed.")
    # Deciding stays in view: the history sits below the controls.
    assert in_view(page, page.get_by_role("button", name="Approve"))
    shot(page, "console-approval-history.png")
    line.get_by_role("link", name="run").click()
    expect(page).to_have_url(f"{server.url}/ui/runs/{earlier}")


def test_nested_values_read_as_lists_and_the_run_has_a_waterfall(page: Any, server: Server) -> None:  # noqa: F811
    from playwright.sync_api import expect

    h = server.harness
    run = h.run()
    h.act(run, "tickets.get", {"ticket_id": "T-1002"})
    h.act(
        run,
        "tickets.update",
        {"ticket_id": "T-1002", "fields": {"group": "engineering", "tags": ["login", "sso"]}},
    )
    h.act(run, "payments.refund", {**REFUND, "ticket_id": "T-1002"})
    page.goto(f"{server.url}/ui/runs/{run}")

    timing = page.locator("#timing")
    expect(timing.get_by_role("heading", name="Timing")).to_be_visible()
    expect(timing.locator("tbody tr")).to_have_count(3)
    expect(timing.get_by_role("img", name="step 1:")).to_be_visible()
    boxes = [timing.locator("rect").nth(i).bounding_box() for i in range(3)]
    assert all(b is not None and b["width"] > 0 for b in boxes)
    starts = [b["x"] for b in boxes if b is not None]
    assert starts == sorted(starts), "bars are not on one time axis"
    expect(page.locator(".took").first).to_contain_text("ms")

    step = page.locator(".timeline > li").nth(1)
    step.get_by_text("Details sent").click()
    details = step.locator("details").first
    expect(details.locator("dl.kv.nested dt", has_text="group")).to_be_visible()
    expect(details.locator("ul.nested li", has_text="sso")).to_be_visible()
    expect(details).not_to_contain_text('{"group"')
    shot(page, "console-run-waterfall.png")


def test_the_inbox_searches_and_refreshes_itself_without_losing_typing(page: Any, server: Server) -> None:  # noqa: F811
    from playwright.sync_api import expect

    from interlock._internal.ui.routes import console_of

    console = console_of(server.app)
    assert console is not None
    console.refresh_ms = 500
    try:
        server.refund(idempotency_key="live-1")
        page.goto(f"{server.url}/ui/approvals")
        live = page.locator("#approvals-live")
        expect(live.get_by_role("link", name="Refund 120.00 USD on ticket T-1003").first).to_be_visible()
        before = live.get_by_role("row").count()

        # Half-typed search text outside the list survives the refresh.
        page.get_by_label("Search").fill("T-100")
        run = server.harness.run()
        email = server.harness.act(
            run,
            "emails.send",
            {"ticket_id": "T-1007", "to": "maria@elsewhere.example", "subject": "Refund", "body": "Done."},
        )
        assert email.status == "pending_approval"
        new_row = page.get_by_role("link", name="Send email to m***@elsewhere.example on ticket T-1007")
        expect(new_row).to_be_visible(timeout=10_000)
        assert page.locator("#approvals-live").get_by_role("row").count() == before + 1
        expect(page.get_by_label("Search")).to_have_value("T-100")
        expect(page.locator("#approvals-live-note")).to_contain_text("Updated")
        shot(page, "console-inbox-live.png")

        # Searching narrows the list; the count says how many match.
        page.get_by_label("Search").fill("T-1007")
        page.get_by_role("button", name="Show").click()
        expect(page.locator("#inbox-count")).to_contain_text("1 approval pending")
        expect(new_row).to_be_visible()
        page.get_by_label("Tool").fill("payments.refund")
        page.get_by_label("Search").fill("")
        page.get_by_role("button", name="Show").click()
        expect(new_row).to_have_count(0)
        shot(page, "console-inbox-search.png")
    finally:
        console.refresh_ms = 10_000


def test_the_handoffs_list_refreshes_without_losing_a_half_typed_reason(page: Any, server: Server) -> None:  # noqa: F811
    from playwright.sync_api import expect

    from interlock._internal.ui.routes import console_of

    console = console_of(server.app)
    assert console is not None
    console.refresh_ms = 500
    try:
        page.goto(f"{server.url}/ui/handoffs")
        reason = page.locator("#kill-switches input[name=reason]").first
        reason.fill("Investigating odd refunds")
        run = server.harness.run()
        low = server.harness.act(
            run, "tickets.update", {"ticket_id": "T-1008", "fields": {"priority": "low"}}, confidence=0.2
        )
        assert low.status == "escalated"
        expect(page.locator("#handoffs-live").get_by_text("T-1008").first).to_be_visible(timeout=10_000)
        expect(reason).to_have_value("Investigating odd refunds")
        shot(page, "console-handoffs-live.png")
    finally:
        console.refresh_ms = 10_000


def test_a_handoff_is_corrected_in_a_form_built_from_the_schema(page: Any, server: Server) -> None:  # noqa: F811
    from playwright.sync_api import expect

    h = server.harness
    run = h.run()
    held = h.act(
        run, "tickets.update", {"ticket_id": "T-1009", "fields": {"priority": "low"}}, confidence=0.2
    )
    assert held.status == "escalated"
    [handoff] = [x for x in h.il.handoffs.list(workflow="support-triage") if x.run_id == run]
    page.goto(f"{server.url}/ui/handoffs/{handoff.id}")
    form = page.locator("#correct")
    expect(form.get_by_label("ticket id")).to_have_value("T-1009")
    expect(form.get_by_label("priority")).to_have_value("low")
    expect(form.get_by_label("tags")).to_have_value("")
    form.get_by_label("ticket id").fill("1009")  # not the ticket pattern
    form.get_by_label("priority").select_option("urgent")
    form.get_by_label("tags").fill("billing\nvip")
    form.get_by_role("button", name="Resume with these details").click()

    error = page.locator("#arg-ticket_id-error")
    expect(error).to_contain_text("does not match")
    # The field with the error has the focus, and the page shows it and its message.
    assert on_screen(error), "the field's error is out of sight"
    assert page.evaluate("document.activeElement.id") == "arg-ticket_id"
    expect(page.locator("#correct").get_by_label("priority")).to_have_value("urgent")  # typed values kept
    expect(page.locator("#correct").get_by_label("tags")).to_have_value("billing\nvip")
    shot(page, "console-handoff-form-error.png")

    page.locator("#correct").get_by_label("ticket id").fill("T-1009")
    page.locator("#correct").get_by_role("button", name="Resume with these details").click()
    expect(page.locator("#outcome")).to_contain_text("Resumed with edited arguments")
    expect(page.locator("#outcome")).to_contain_text("Update ticket T-1009 (priority → urgent")
    shot(page, "console-handoff-form-done.png")
    last = h.il.get_run(run).steps_detail[-1]
    assert last.arguments == {
        "ticket_id": "T-1009",
        "fields": {"priority": "urgent", "tags": ["billing", "vip"]},
    }


def test_an_entitled_approver_unmasks_the_recipient(page: Any, server: Server) -> None:  # noqa: F811
    from playwright.sync_api import expect

    from conftest import SUPPORT_TRIAGE
    from interlock._internal.audit.chain import iter_events
    from interlock._internal.manifest.loader import load_manifest_text

    il = server.harness.il
    text = SUPPORT_TRIAGE.read_text()
    entitled = text.replace(
        "  allow_self_approval: false", "  allow_self_approval: false\n  unmasked_roles: [approver]"
    )
    il.load_workflow(load_manifest_text(entitled, base_dir=SUPPORT_TRIAGE.parent))
    try:
        run = server.harness.run()
        sent = server.harness.act(
            run,
            "emails.send",
            {
                "ticket_id": "T-1011",
                "to": "maria.lopez@elsewhere.example",
                "subject": "Refund",
                "body": "Done.",
            },
        )
        assert sent.status == "pending_approval"
        page.goto(f"{server.url}/ui/approvals/{sent.approval_id}")
        expect(page.locator("#masked-note")).to_contain_text("Masked before storage: to.")
        expect(page.get_by_text("m***@elsewhere.example").first).to_be_visible()
        page.get_by_role("button", name="Show unmasked values").click()
        expect(page.get_by_text("maria.lopez@elsewhere.example").first).to_be_visible()
        expect(page.locator("#unmasked-note")).to_contain_text("The audit log records that you saw them.")
        assert in_view(page, page.get_by_role("button", name="Approve"))
        shot(page, "console-approval-unmasked.png")
        events = [e for e in iter_events(il.engine) if e.kind == "approval.unmasked"]
        assert [(e.actor, e.data["fields"]) for e in events] == [("operator:olga", ["to"])]
    finally:
        il.load_workflow(load_manifest_text(text, base_dir=SUPPORT_TRIAGE.parent))
