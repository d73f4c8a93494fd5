"""The Systems and executive pages in a real browser, with screenshots in test-artifacts/; and the
run timeline and approval page showing the data classes a run carries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from test_console import Server, browser, page, server, shot  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.e2e


def _activity(server: Server) -> tuple[str, Any]:  # noqa: F811
    h = server.harness
    run = h.run()
    h.act(run, "tickets.get", {"ticket_id": "T-1001"})
    h.act(run, "customers.get", {"customer_id": "C-1001"})
    h.act(run, "replies.draft", {"ticket_id": "T-1001", "body": "We are on it."})
    sent = h.act(
        run,
        "emails.send",
        {"ticket_id": "T-1001", "to": "maria@elsewhere.example", "subject": "Invoice", "body": "Refunded."},
    )
    assert sent.status == "pending_approval"
    h.act(run, "customers.delete", {"customer_id": "C-1001"})  # a denial for the figures
    return run, sent


def test_systems_page_draws_the_graph(page: Any, server: Server) -> None:  # noqa: F811
    from playwright.sync_api import expect

    _activity(server)
    page.goto(f"{server.url}/ui/systems")
    expect(page.get_by_role("heading", name="Systems", exact=True)).to_be_visible()
    graph = page.get_by_role("img", name="system graph")
    expect(graph).to_be_visible()
    expect(graph.locator("title", has_text="system:payments")).to_have_count(1)
    crm = page.locator("#system-crm")
    expect(crm).to_contain_text("tier 1")
    expect(crm).to_contain_text("Holds pii")
    expect(crm.get_by_role("heading", name="Who may do what in production")).to_be_visible()
    payments = page.locator("#system-payments")
    expect(payments).to_contain_text("amount <= 50")
    expect(page.locator("#system-helpdesk")).to_contain_text("allow")  # this week's activity
    shot(page, "console-systems.png")


def test_executive_page_shows_the_fleet(page: Any, server: Server) -> None:  # noqa: F811
    from playwright.sync_api import expect

    _activity(server)
    today = datetime.now(UTC).date().isoformat()
    page.goto(f"{server.url}/ui/executive?week_ending={today}")
    expect(page.get_by_role("heading", name="Executive view")).to_be_visible()
    fleet = page.locator("table.figures").first
    expect(fleet.locator("tr[data-figure=autonomy_rate]")).to_contain_text("Autonomy rate")
    expect(fleet.locator("tr[data-figure=denials] td.num").first).not_to_have_text("0")
    expect(page.locator("table.baseline")).to_contain_text("Before agents")
    expect(page.locator("svg.wow").first).to_be_visible()
    shot(page, "console-executive.png")


def test_timeline_and_approval_show_the_runs_data_classes(page: Any, server: Server) -> None:  # noqa: F811
    from playwright.sync_api import expect

    run, sent = _activity(server)
    page.goto(f"{server.url}/ui/runs/{run}")
    expect(page.get_by_role("heading", name="Data it carries")).to_be_visible()
    expect(page.locator("ul.classes")).to_contain_text("pii")
    expect(page.locator("ul.classes")).to_contain_text("customers.get")
    page.goto(f"{server.url}/ui/approvals/{sent.approval_id}")
    expect(page.locator("p.classes")).to_contain_text("pii")
    expect(page.get_by_text("brought in by step 2 (customers.get").first).to_be_visible()
    shot(page, "console-approval-data-classes.png")
