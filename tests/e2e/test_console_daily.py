"""The console for daily work in a real browser, with screenshots in test-artifacts/: the history of
a record on the approval page, nested values as lists, and the run's timing waterfall."""

from __future__ import annotations

from typing import Any

import pytest
from test_console import REFUND, Server, browser, in_view, page, server, shot  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.e2e


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
