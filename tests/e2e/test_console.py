"""The operator console in a real browser (Debian's chromium through Playwright) against the real
server on 127.0.0.1: sign in, approve and reject refunds, pause the workflow, and a phone-width inbox.

The browser is ``$INTERLOCK_CHROMIUM`` or ``chromium`` on PATH. Without one these tests are skipped
with a notice, unless ``INTERLOCK_REQUIRE_BROWSER=1`` (as CI sets), which makes that a failure.
Screenshots land in ``test-artifacts/`` (gitignored) for people to look at.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, SUPPORT_TRIAGE, Harness
from servers import free_port

pytestmark = pytest.mark.e2e

WF = "support-triage"
ARTIFACTS = REPO / "test-artifacts"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
REFUND = {
    "ticket_id": "T-1003",
    "amount": 120,
    "currency": "USD",
    "reason": "Charged twice for the March invoice",
}
PHRASE = "Refund 120.00 USD on ticket T-1003"


def chromium() -> str | None:
    return os.environ.get("INTERLOCK_CHROMIUM") or shutil.which("chromium")


@dataclass
class Server:
    url: str
    harness: Harness
    app: Any
    token: str
    problems: list[str] = field(default_factory=list)

    def refund(self, **kw: Any) -> tuple[str, Any]:
        run = self.harness.run()
        self.harness.act(run, "tickets.get", {"ticket_id": "T-1003"})
        result = self.harness.act(
            run,
            "payments.refund",
            REFUND,
            reasoning="The customer was billed twice for March; the ticket shows both charges.",
            evidence=["https://desk.example.com/tickets/T-1003", "javascript:alert(1)"],
            **kw,
        )
        assert result.status == "pending_approval"
        return run, result


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium()
    if path is None:
        message = (
            "no chromium to drive: install Debian's chromium (apt-get install -y chromium) or set "
            "INTERLOCK_CHROMIUM to its path"
        )
        if os.environ.get("INTERLOCK_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " (INTERLOCK_REQUIRE_BROWSER=1)")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, headless=True, args=LAUNCH_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    import uvicorn

    from interlock._internal.server import create_app

    db = tmp_path_factory.mktemp("console") / "interlock.db"
    harness = Harness(f"sqlite:///{db}", SUPPORT_TRIAGE)
    _, token = harness.il.operators.create("olga", roles=["owner", "approver"], workflows=[WF], actor="test")
    app = create_app(interlock=harness.il)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started, "uvicorn did not start"
    try:
        yield Server(url=f"http://127.0.0.1:{port}", harness=harness, app=app, token=token)
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        harness.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    """A fresh browser context signed in as Olga through the sign-in form; no console errors allowed."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    errors: list[str] = []

    def on_console(msg: Any) -> None:
        # A form sent back for a correction answers 422 on purpose; any other error is a fault.
        if msg.type == "error" and "status of 422" not in msg.text:
            errors.append(msg.text)

    tab.on("console", on_console)
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    sign_in(tab, server)
    yield tab
    context.close()
    assert not errors, f"the browser reported errors (CSP violations included): {errors}"


def sign_in(tab: Any, server: Server) -> None:
    from playwright.sync_api import expect

    tab.goto(f"{server.url}/ui/approvals")
    expect(tab).to_have_url(f"{server.url}/ui/login?next=%2Fui%2Fapprovals")
    tab.get_by_label("Operator API token").fill(server.token)
    tab.get_by_role("button", name="Sign in").click()
    expect(tab).to_have_url(f"{server.url}/ui/approvals")
    expect(tab.get_by_role("heading", name="Approvals", exact=True)).to_be_visible()


def shot(tab: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    tab.screenshot(path=str(path), full_page=True)
    return path


def no_horizontal_scroll(tab: Any) -> bool:
    return bool(tab.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth"))


def test_approve_a_refund_and_read_the_timeline(page: Any, server: Server, desk: Any) -> None:
    from playwright.sync_api import expect

    run, pending = server.refund()
    page.reload()
    row = page.get_by_role("row").filter(has_text=PHRASE)
    expect(row).to_be_visible()
    expect(row).to_contain_text("triage-bot")
    expect(row).to_contain_text("money")
    expect(row).to_contain_text("in 23 h")
    shot(page, "console-inbox.png")

    row.get_by_role("link", name=PHRASE).click()
    expect(page).to_have_url(f"{server.url}/ui/approvals/{pending.approval_id}")
    expect(page.get_by_role("heading", level=1)).to_have_text(PHRASE)
    for heading in (
        "What it will do",
        "Why the agent asks",
        "If you approve",
        "If you reject",
        "Why it needs a person",
        "The run so far",
    ):
        expect(page.get_by_role("heading", name=heading)).to_be_visible()
    expect(page.get_by_role("link", name="https://desk.example.com/tickets/T-1003")).to_be_visible()
    expect(page.get_by_role("link", name="javascript:alert(1)")).to_have_count(0)
    expect(page.get_by_text("Refunds above 50 need a person.")).to_be_visible()
    expect(page.get_by_text("Read ticket T-1003")).to_be_visible()
    shot(page, "console-approval.png")

    page.get_by_label("Comment").fill("Confirmed the duplicate charge in the billing system.")
    page.get_by_role("button", name="Approve").click()
    outcome = page.locator("#outcome")
    expect(outcome).to_contain_text("Approved and executed.")
    expect(outcome).to_contain_text("olga")
    expect(outcome).to_contain_text("R-0001")
    assert desk.refunds_total() == 120

    page.get_by_role("link", name="See the whole run").click()
    expect(page).to_have_url(f"{server.url}/ui/runs/{run}")
    changes = page.locator("#changes")
    expect(changes).to_contain_text(PHRASE)
    expect(changes).to_contain_text("in payments")
    expect(changes).to_contain_text("approved by olga")
    expect(page.get_by_text("Read ticket T-1003 in helpdesk")).to_be_visible()
    expect(page.locator(".timeline > li")).to_have_count(3)
    shot(page, "console-timeline.png")


def test_reject_by_keyboard_and_the_agent_learns_why(page: Any, server: Server, desk: Any) -> None:
    from playwright.sync_api import expect

    run, pending = server.refund(idempotency_key="refund-T-1003-reject")
    page.goto(f"{server.url}/ui/approvals/{pending.approval_id}")
    # Rejecting without a reason is refused, and says so.
    page.get_by_role("button", name="Reject").click()
    expect(page.get_by_role("alert")).to_contain_text("Say why you reject it")

    page.get_by_label("Comment").fill("Already refunded by hand yesterday.")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent.trim()") == "Approve"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent.trim()") == "Reject"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
    page.keyboard.press("Enter")
    expect(page.locator("#outcome")).to_contain_text("Rejected; nothing was executed.")
    expect(page.locator("#outcome")).to_contain_text("Already refunded by hand yesterday.")

    retry = server.harness.act(run, "payments.refund", REFUND, idempotency_key="refund-T-1003-reject")
    assert retry.status == "denied"
    assert retry.decision.reasons[0].code == "rejected"
    assert "Already refunded by hand yesterday." in retry.decision.reasons[0].message
    assert desk.refunds_total() == 0


def in_view(tab: Any, locator: Any) -> bool:
    """Whether the element lies wholly inside the viewport as the page first shows (no scrolling)."""
    box = locator.bounding_box()
    height = tab.evaluate("window.innerHeight")
    scrolled = tab.evaluate("window.scrollY")
    return bool(
        box is not None and box["y"] + scrolled >= 0 and box["y"] + box["height"] + scrolled <= height
    )


def test_decision_controls_and_errors_are_in_view_at_1280_by_900(
    page: Any, server: Server, desk: Any
) -> None:
    from playwright.sync_api import expect

    _, pending = server.refund(idempotency_key="refund-T-1003-fold")
    page.goto(f"{server.url}/ui/approvals/{pending.approval_id}")
    assert page.viewport_size == {"width": 1280, "height": 900}
    for name in ("Approve", "Reject"):
        assert in_view(page, page.get_by_role("button", name=name)), f"{name} is below the fold"
    shot(page, "console-approval-above-the-fold.png")
    page.get_by_role("button", name="Reject").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("Say why you reject it")
    assert in_view(page, alert), "the refusal is out of sight"
    assert page.evaluate("document.activeElement.id") == "comment"  # ready to type the reason
    shot(page, "console-reject-needs-a-reason.png")


def test_pause_in_the_console_denies_the_agents_next_action(page: Any, server: Server) -> None:
    from playwright.sync_api import expect

    run = server.harness.run()
    page.get_by_role("link", name="Workflows").click()
    page.get_by_role("link", name=WF).click()
    expect(page.get_by_role("heading", name="Operating model")).to_be_visible()
    expect(page.get_by_role("heading", name="This week's figures")).to_be_visible()
    page.get_by_label("Reason for pausing").fill("Refund errors reported by finance")
    page.get_by_role("button", name=f"Pause {WF}").click()
    switch = page.locator("#kill-switch")
    expect(switch).to_contain_text("Paused")
    expect(switch).to_contain_text("Refund errors reported by finance")
    shot(page, "console-workflow-paused.png")
    try:
        denied = server.harness.act(run, "tickets.get", {"ticket_id": "T-1001"})
        assert denied.status == "denied"
        assert denied.decision.reasons[0].code == "workflow_paused"
    finally:
        page.get_by_role("button", name=f"Resume {WF}").click()
        expect(switch).to_contain_text("Running")
    assert server.harness.act(run, "tickets.get", {"ticket_id": "T-1001"}).status == "executed"


def test_the_inbox_fits_a_phone(browser: Any, server: Server) -> None:
    from playwright.sync_api import expect

    server.refund()
    context = browser.new_context(viewport={"width": 375, "height": 812}, is_mobile=True, has_touch=True)
    try:
        tab = context.new_page()
        sign_in(tab, server)
        expect(tab.get_by_text(PHRASE).first).to_be_visible()
        assert no_horizontal_scroll(tab), "the inbox scrolls sideways at 375 px"
        shot(tab, "console-inbox-375.png")
        tab.get_by_role("link", name=PHRASE).first.click()
        expect(tab.get_by_role("button", name="Approve")).to_be_visible()
        assert no_horizontal_scroll(tab), "the approval page scrolls sideways at 375 px"
        shot(tab, "console-approval-375.png")
    finally:
        context.close()


def test_the_printed_sign_in_link_works_once(browser: Any, server: Server) -> None:
    from playwright.sync_api import expect

    from interlock._internal.ui.routes import sign_in_url

    link = sign_in_url(server.app, f"{server.url}/ui")
    assert link is not None
    context = browser.new_context()
    try:
        tab = context.new_page()
        tab.goto(link)
        expect(tab).to_have_url(f"{server.url}/ui/approvals")
        expect(tab.locator(".who")).to_contain_text("local-admin")
        other = browser.new_context()
        again = other.new_page()
        again.goto(link)
        expect(again.get_by_role("alert")).to_contain_text("already used")
        other.close()
    finally:
        context.close()
