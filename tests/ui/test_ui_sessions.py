"""Console sessions end on sign-out on every replica, and after an idle timeout (SQLite and PostgreSQL)."""

from __future__ import annotations

import re
import time
from typing import Any

from fastapi.testclient import TestClient
from test_ui_pages import csrf_of, sign_in

from conftest import Harness
from interlock import Interlock, Settings
from interlock._internal.server import create_app
from interlock._internal.ui.routes import console_of
from interlock._internal.ui.session import SESSION_COOKIE, SessionSigner


def _client(app: Any) -> TestClient:
    return TestClient(app, base_url="http://testserver", follow_redirects=False)


def test_a_cookie_copied_before_sign_out_no_longer_works_on_any_replica(harness: Harness) -> None:
    token = harness.il.operators.create("ana", roles=["approver"], workflows=None, actor="test")[1]
    # A second replica: its own Interlock and app over the same database.
    other = Interlock(Settings(database={"url": str(harness.il.settings.database.url)}))  # type: ignore[arg-type]
    try:
        one, two = create_app(interlock=harness.il), create_app(interlock=other)
        browser = _client(one)
        sign_in(browser, token)
        stolen = browser.cookies[SESSION_COOKIE]
        thief = _client(two)
        thief.cookies.set(SESSION_COOKIE, stolen)
        assert thief.get("/ui/approvals").status_code == 200
        page = browser.get("/ui/approvals")
        assert browser.post("/ui/logout", data={"csrf": csrf_of(page.text)}).status_code == 303
        # The copied cookie is still well signed and unexpired; the generation in the database moved.
        assert thief.get("/ui/approvals").status_code == 303
        again = _client(one)
        again.cookies.set(SESSION_COOKIE, stolen)
        assert again.get("/ui/approvals").status_code == 303
        # Signing in again works.
        sign_in(browser, token)
        assert browser.get("/ui/approvals").status_code == 200
    finally:
        other.close()


def test_disabling_an_operator_ends_their_sessions(harness: Harness) -> None:
    token = harness.il.operators.create("bo", roles=["approver"], workflows=None, actor="test")[1]
    browser = _client(create_app(interlock=harness.il))
    sign_in(browser, token)
    assert browser.get("/ui/approvals").status_code == 200
    harness.il.operators.disable("bo", actor="test")
    assert browser.get("/ui/approvals").status_code == 303


def test_idle_sessions_end_and_active_ones_are_refreshed() -> None:
    signer = SessionSigner("seed", ttl_s=8 * 3600, idle_s=600)
    start = 1_000_000.0
    cookie, session = signer.issue("ana", "f" * 16, now=start)
    assert signer.read(cookie, now=start + 599) is not None
    assert signer.read(cookie, now=start + 601) is None  # idle too long
    fresh, _ = signer.refresh(session, now=start + 500)
    assert signer.read(fresh, now=start + 1000) is not None
    assert signer.read(fresh, now=start + 8 * 3600 + 1) is None  # the absolute limit holds


def test_a_request_refreshes_the_idle_clock(harness: Harness) -> None:
    token = harness.il.operators.create("cy", roles=["approver"], workflows=None, actor="test")[1]
    app = create_app(interlock=harness.il)
    browser = _client(app)
    sign_in(browser, token)
    console = console_of(app)
    assert console is not None
    old = console.signer.read(browser.cookies[SESSION_COOKIE])
    assert old is not None
    # Pretend the cookie was last used two minutes ago.
    aged, _ = console.signer.refresh(old, now=time.time() - 120)
    later = _client(app)
    later.cookies.set(SESSION_COOKIE, aged)
    response = later.get("/ui/approvals")
    assert response.status_code == 200
    found = re.search(SESSION_COOKIE + r"=([^;]+)", response.headers.get("set-cookie", ""))
    assert found
    renewed = console.signer.read(found.group(1))
    assert renewed is not None
    assert renewed.seen_at > time.time() - 60
