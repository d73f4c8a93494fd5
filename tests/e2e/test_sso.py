"""Single sign-on against a real, certified OpenID provider (the ``oidc-provider`` npm package on
this machine's Node.js, on 127.0.0.1), driven in Debian's chromium through Playwright, on SQLite
and PostgreSQL: authorization code with PKCE, groups mapped to roles and workflows, a person with
no mapped group refused, and the provider's ID token accepted by the operator API.

The provider is installed from ``tests/e2e/oidc/package-lock.json`` (``npm ci --prefix
tests/e2e/oidc``, which ``.ci/run`` does). Without Node.js or that install, or without chromium,
these tests are skipped with a notice, unless ``INTERLOCK_REQUIRE_BROWSER=1`` (as CI sets).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from conftest import REPO, SUPPORT_TRIAGE, Harness
from servers import free_port

pytestmark = pytest.mark.e2e

PROVIDER = REPO / "tests" / "e2e" / "oidc"
SECRET = "interlock-test-client-secret-0123456789"
GROUPS = {
    "alice": ["interlock-approvers", "staff"],
    "bob": ["interlock-admins"],
    "carol": ["staff"],
}
MAPPING = {
    "interlock-approvers": {"roles": ["approver"], "workflows": ["support-triage"]},
    "interlock-admins": {"roles": ["admin", "owner"]},
}
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
REQUIRED = os.environ.get("INTERLOCK_REQUIRE_BROWSER") == "1"


def _missing(message: str) -> None:
    if REQUIRED:
        pytest.fail(message + " (INTERLOCK_REQUIRE_BROWSER=1)")
    pytest.skip(message)


class Capture:
    """A redirect target on loopback that keeps the query the provider sent back."""

    def __init__(self) -> None:
        self.queries: list[dict[str, list[str]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                owner.queries.append(parse_qs(urlsplit(self.path).query))
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"captured")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cb"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[Any]:
    path = os.environ.get("INTERLOCK_CHROMIUM") or shutil.which("chromium")
    if path is None:
        _missing("no chromium to drive: install Debian's chromium or set INTERLOCK_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, headless=True, args=LAUNCH_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    node = shutil.which("node")
    if node is None:
        _missing("no Node.js to run the OpenID provider: install nodejs")
    if not (PROVIDER / "node_modules" / "oidc-provider").is_dir():
        _missing("the OpenID provider is not installed: run `npm ci --prefix tests/e2e/oidc`")
    ui_port, capture = free_port(), Capture()
    port = free_port()
    redirects = f"http://127.0.0.1:{ui_port}/ui/sso/callback,{capture.url}"
    log = tmp_path_factory.mktemp("oidc") / "provider.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [node, "provider.mjs", str(port), redirects, SECRET, json.dumps(GROUPS)],
            cwd=PROVIDER,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    issuer = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the OpenID provider did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield {"issuer": issuer, "ui_port": ui_port, "capture": capture}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        capture.close()


@pytest.fixture
def console(db_url: str, provider: dict[str, Any]) -> Iterator[tuple[Harness, str]]:
    import uvicorn

    from interlock._internal.server import create_app

    url = f"http://127.0.0.1:{provider['ui_port']}"
    oidc = {
        "issuer": provider["issuer"],
        "client_id": "interlock",
        "client_secret": SECRET,
        "groups": MAPPING,
    }
    harness = Harness(db_url, SUPPORT_TRIAGE, server={"public_url": url}, oidc=oidc)
    app = create_app(interlock=harness.il)
    uv = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=provider["ui_port"], log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started, "uvicorn did not start"
    try:
        yield harness, url
    finally:
        uv.should_exit = True
        thread.join(timeout=20)
        harness.close()


def sign_in_at_provider(page: Any, login: str) -> None:
    """The provider's own pages: the sign-in form, then consent (skipped once granted)."""
    page.wait_for_selector("input[name=login]", timeout=60_000)
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", "any password")
    page.click("button[type=submit]")
    page.wait_for_load_state()
    if page.locator("button[type=submit]").count() and "/interaction/" in page.url:
        page.click("button[type=submit]")  # "Continue": consent to the scopes


def test_sign_in_maps_groups_and_refuses_the_unmapped(
    chromium_browser: Any, console: tuple[Harness, str], provider: dict[str, Any]
) -> None:
    harness, url = console
    for login, roles, workflows in (
        ("alice", ("approver",), ("support-triage",)),
        ("bob", ("admin", "owner"), None),
    ):
        context = chromium_browser.new_context()
        page = context.new_page()
        try:
            page.goto(f"{url}/ui/login", timeout=60_000)
            page.click("#sso")
            sign_in_at_provider(page, login)
            page.wait_for_url(f"{url}/ui/approvals", timeout=60_000)
            assert f"sso.{login}" in page.content()
        finally:
            context.close()
        record = harness.il.operators.get(f"sso.{login}")
        assert (record.roles, record.workflows) == (roles, workflows)

    context = chromium_browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{url}/ui/sso/login", timeout=60_000)
        sign_in_at_provider(page, "carol")
        page.wait_for_selector("#login-error", timeout=60_000)
        assert "none of their groups" in page.inner_text("#login-error")
    finally:
        context.close()
    assert [o.id for o in harness.il.operators.list() if o.id.startswith("sso.")] == ["sso.alice", "sso.bob"]


def test_the_operator_api_takes_the_providers_id_token(
    chromium_browser: Any, console: tuple[Harness, str], provider: dict[str, Any]
) -> None:
    from authlib.integrations.httpx_client import OAuth2Client

    from interlock._internal.identity.oidc import OidcService

    harness, url = console
    settings = harness.il.settings.oidc.model_copy(update={"redirect_url": provider["capture"].url})
    flow = OidcService(settings, harness.il.engine, redirect_url=None)
    started = flow.begin()
    assert "code_challenge_method=S256" in started.url
    context = chromium_browser.new_context()
    page = context.new_page()
    try:
        page.goto(started.url, timeout=60_000)
        sign_in_at_provider(page, "alice")
        page.wait_for_url(f"{provider['capture'].url}*", timeout=60_000)
    finally:
        context.close()
    query = next(q for q in reversed(provider["capture"].queries) if "code" in q)  # not a favicon
    assert query["state"] == [started.state]
    with OAuth2Client(
        client_id="interlock", client_secret=SECRET, redirect_uri=provider["capture"].url
    ) as client:
        token = client.fetch_token(
            flow.metadata()["token_endpoint"], code=query["code"][0], code_verifier=started.code_verifier
        )
    id_token = token["id_token"]
    with httpx.Client(base_url=url, timeout=60) as http:
        listed = http.get("/v1/packages", headers={"Authorization": f"Bearer {id_token}"})
        assert listed.status_code == 200, listed.text
        forged = id_token[:-6] + ("AAAAAA" if not id_token.endswith("AAAAAA") else "BBBBBB")
        refused = http.get("/v1/packages", headers={"Authorization": f"Bearer {forged}"})
        assert refused.status_code == 401, refused.text
        # An approver may not issue work packages; the mapping decides, not the provider.
        spec = {"workflow": "support-triage", "agent": "triage-bot", "tools": {"tickets.get": {}}}
        issued = http.post("/v1/packages", json=spec, headers={"Authorization": f"Bearer {id_token}"})
        assert issued.status_code == 403, issued.text
    assert harness.il.operators.get("sso.alice").roles == ("approver",)
