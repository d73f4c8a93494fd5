"""The console's machinery: templates, sessions, CSRF, security headers and error pages.

The console is its own small ASGI app mounted under ``/ui`` (see :mod:`.routes`), so its errors are
HTML pages for people while the REST API keeps its JSON error shape.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import fastapi
from fastapi import Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from interlock import __version__
from interlock._internal.identity.operators import Operator
from interlock._internal.identity.secrets import credential_fingerprint
from interlock._internal.service import Interlock
from interlock._internal.ui import words
from interlock._internal.ui.session import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_REFRESH_S,
    Session,
    SessionSigner,
)
from interlock.exceptions import AuthenticationError, PermissionDenied

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
SIGN_IN_REQUIRED = "console_sign_in"

# No inline script or style anywhere: every page works with this policy, and without JavaScript.
CSP = (
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
    "object-src 'none'; img-src 'self'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=()",
}


@dataclass(frozen=True, slots=True)
class SignedIn:
    operator: Operator
    session: Session
    csrf: str


class Console:
    """One console per app: the Interlock it shows and its session signer."""

    def __init__(self, interlock: Interlock) -> None:
        self.interlock = interlock
        server = interlock.settings.server
        self.signer = SessionSigner(
            interlock.settings.identity.signing_seed, ttl_s=server.session_ttl_s, idle_s=server.session_idle_s
        )
        self.public_https = (interlock.settings.server.public_url or "").lower().startswith("https://")
        # How often an inbox page asks whether its list changed (static/console.js).
        self.refresh_ms = int(server.console_refresh_s * 1000)
        self.env = Environment(
            loader=FileSystemLoader(str(TEMPLATES)),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.globals["version"] = __version__

    # ---- sign-in ------------------------------------------------------------------------------

    def active_operator(self, operator_id: str) -> tuple[Operator, str] | None:
        """The active operator and the fingerprint of their current token, or None."""
        found = self.interlock.operators.with_token_hash(operator_id)
        if found is None or not found[0].active:
            return None
        record, token_hash = found
        return record.principal(), credential_fingerprint(token_hash)

    def signed_in(self, request: Request, *, refresh: bool = True) -> SignedIn:
        """The operator behind the request's session cookie, checked against the database now.
        ``refresh=False`` for requests a page makes on its own (live refresh), which must not keep
        an unattended session from idling out."""
        session = self.signer.read(request.cookies.get(SESSION_COOKIE))
        found = None if session is None else self.active_operator(session.operator_id)
        if session is None or found is None or not hmac.compare_digest(found[1], session.token_fingerprint):
            raise AuthenticationError("sign in to use the console", code=SIGN_IN_REQUIRED)
        if refresh and time.time() - session.seen_at >= SESSION_REFRESH_S:
            # The idle clock restarts; SecurityHeaders puts the cookie on whatever response follows.
            cookie, session = self.signer.refresh(session)
            carrier = Response()
            self._set_cookie(request, carrier, cookie, session)
            request.state.session_cookie = carrier.headers["set-cookie"]
        return SignedIn(operator=found[0], session=session, csrf=self.signer.csrf_token(session))

    def start_session(self, request: Request, response: Response, operator_id: str) -> bool:
        found = self.active_operator(operator_id)
        if found is None:
            return False
        cookie, session = self.signer.issue(operator_id, found[1])
        self._set_cookie(request, response, cookie, session)
        response.delete_cookie(LOGIN_CSRF_COOKIE, path=base(request) + "/", httponly=True, samesite="strict")
        return True

    def _set_cookie(self, request: Request, response: Response, cookie: str, session: Session) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=max(1, int(session.expires_at - time.time())),
            path=base(request) + "/",
            secure=self.secure(request),
            httponly=True,
            samesite="strict",
        )

    def sign_out(self, request: Request, response: Response, signed: SignedIn) -> None:
        """End this operator's sessions everywhere (every browser, every replica), then this cookie."""
        self.interlock.operators.end_sessions(signed.operator.id, actor=f"operator:{signed.operator.id}")
        self.end_session(request, response)

    def end_session(self, request: Request, response: Response) -> None:
        response.delete_cookie(
            SESSION_COOKIE,
            path=base(request) + "/",
            secure=self.secure(request),
            httponly=True,
            samesite="strict",
        )

    def secure(self, request: Request) -> bool:
        return request.url.scheme == "https" or self.public_https

    def check_csrf(self, signed: SignedIn, presented: str | None) -> None:
        if not self.signer.csrf_ok(signed.session, presented):
            raise PermissionDenied(
                "this form is out of date or did not come from the console; reload the page and try again",
                code="csrf_failed",
            )

    # ---- rendering ----------------------------------------------------------------------------

    def render(
        self,
        request: Request,
        template: str,
        *,
        signed: SignedIn | None,
        status_code: int = 200,
        nav: str = "",
        **context: Any,
    ) -> HTMLResponse:
        html = self.env.get_template(template).render(
            base=base(request),
            operator=None if signed is None else signed.operator,
            csrf="" if signed is None else signed.csrf,
            nav=nav,
            now=words.fmt_time(time.time()),
            **context,
        )
        return HTMLResponse(html, status_code=status_code)


def base(request: Request) -> str:
    """Where the console is mounted (``/ui``), so every link stays inside it."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def safe_next(request: Request, target: str | None) -> str:
    """A post-sign-in destination inside the console; anything else goes to the inbox."""
    home = base(request) + "/approvals"
    if not target or len(target) > 500 or "\\" in target or any(ord(c) < 32 for c in target):
        return home
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or target.startswith("//"):
        return home
    if not (parts.path == base(request) or parts.path.startswith(base(request) + "/")):
        return home
    return target


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


class SecurityHeaders:
    """Adds the security headers to every console response; pages are never cached."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = "/static/" in str(scope.get("path", ""))

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                refreshed = scope.get("state", {}).get("session_cookie")
                if refreshed and not any(
                    v.startswith(SESSION_COOKIE + "=") for v in headers.getlist("set-cookie")
                ):
                    headers.append("set-cookie", refreshed)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                headers["cache-control"] = "public, max-age=300" if static else "no-store"
            await send(message)

        await self.app(scope, receive, with_headers)


# ---- what routes depend on ---------------------------------------------------------------------

_MAX_TEXT = 2000


def get_console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


ConsoleDep = Annotated[Console, Depends(get_console)]


LIVE_HEADER = "x-interlock-live"


def signed_in(request: Request, console: ConsoleDep) -> SignedIn:
    # A list reloaded by the page's live refresh (static/console.js) is not the person's doing.
    return console.signed_in(request, refresh=request.headers.get(LIVE_HEADER) != "1")


SignedDep = Annotated[SignedIn, Depends(signed_in)]


def watching(request: Request, console: ConsoleDep) -> SignedIn:
    """:func:`signed_in` for a page's own polling: it does not restart the idle clock."""
    return console.signed_in(request, refresh=False)


WatchingDep = Annotated[SignedIn, Depends(watching)]
IdPath = Annotated[str, fastapi.Path(min_length=1, max_length=200)]
Text = Annotated[str, Form(max_length=_MAX_TEXT)]
Short = Annotated[str, Query(max_length=200)]


__all__ = [
    "CSP",
    "LIVE_HEADER",
    "SECURITY_HEADERS",
    "SIGN_IN_REQUIRED",
    "STATIC",
    "TEMPLATES",
    "Console",
    "ConsoleDep",
    "IdPath",
    "SecurityHeaders",
    "Short",
    "SignedDep",
    "SignedIn",
    "Text",
    "WatchingDep",
    "base",
    "get_console",
    "safe_next",
    "see_other",
    "signed_in",
    "watching",
]
