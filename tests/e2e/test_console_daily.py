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
