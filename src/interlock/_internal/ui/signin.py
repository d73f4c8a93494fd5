"""Signing in to the console: the token form, single sign-on, one-time links, signing out, and the
local admin.

``interlock serve`` prints a link that signs in the ``local-admin`` operator, and ``interlock operators
signin-link ID`` one for any operator: a random code good for one use within ten minutes, kept in the
database (any replica accepts it; see :mod:`interlock._internal.operations.signin`). The link never
carries an API token. Everyone else signs in with their operator API token through the form.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import RedirectResponse, Response
from starlette.routing import Mount

from interlock._internal.identity.secrets import OPERATOR_TOKEN_PREFIX
from interlock._internal.operations.signin import LOCAL_ADMIN, ensure_local_admin, local_admin_link
from interlock._internal.ui.console import (
    Console,
    ConsoleDep,
    SignedDep,
    Text,
    base,
    safe_next,
    see_other,
)
from interlock._internal.ui.session import LOGIN_CSRF_COOKIE, new_login_csrf, same_secret
from interlock.exceptions import AuthenticationError, InterlockError

SSO_COOKIE = "interlock_console_sso"
SSO_TTL_S = 600

router = APIRouter()


def login_page(
    request: Request, console: Console, *, target: str | None = None, error: str = "", status_code: int = 200
) -> Response:
    token = new_login_csrf()
    response = console.render(
        request,
        "login.html",
        signed=None,
        status_code=status_code,
        login_csrf=token,
        next=safe_next(request, target),
        error=error,
        sso=None if console.interlock.oidc is None else console.interlock.oidc.settings.display_name,
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        max_age=1800,
        path=base(request) + "/",
        secure=console.secure(request),
        httponly=True,
        samesite="strict",
    )
    return response


@router.get("/")
def home(request: Request) -> Response:
    return see_other(base(request) + "/approvals")


@router.get("/login")
def login_form(
    request: Request,
    console: ConsoleDep,
    token: Annotated[str | None, Query(max_length=200)] = None,
    next: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    if token is not None:
        operator_id = console.interlock.signin_links.redeem(token)
        response = see_other(safe_next(request, next))
        if operator_id is not None and console.start_session(request, response, operator_id):
            return response
        return login_page(
            request,
            console,
            target=next,
            error="This sign-in link was already used or has expired. Sign in with your operator token, "
            "or ask for a new link (interlock operators signin-link ID).",
            status_code=400,
        )
    try:
        console.signed_in(request)
        return see_other(safe_next(request, next))
    except AuthenticationError:
        return login_page(request, console, target=next)


@router.post("/login")
def login(
    request: Request,
    console: ConsoleDep,
    token: Text = "",
    csrf: Text = "",
    next: Text = "",
) -> Response:
    if not same_secret(csrf, request.cookies.get(LOGIN_CSRF_COOKIE)):
        return login_page(
            request,
            console,
            target=next,
            error="The sign-in form expired or did not come from this console. Please try again.",
            status_code=403,
        )
    token = token.strip()
    if not token.startswith(OPERATOR_TOKEN_PREFIX):
        return login_page(
            request,
            console,
            target=next,
            error=f"Operator tokens start with {OPERATOR_TOKEN_PREFIX}. Agent secrets and access tokens "
            "cannot sign in to the console.",
            status_code=401,
        )
    try:
        operator = console.interlock.operators.authenticate(token)
    except AuthenticationError:
        return login_page(
            request,
            console,
            target=next,
            error="That token was not accepted: it is unknown or was rotated, or its operator is disabled.",
            status_code=401,
        )
    response = see_other(safe_next(request, next))
    console.start_session(request, response, operator.id)
    return response


@router.post("/logout")
def logout(request: Request, console: ConsoleDep, signed: SignedDep, csrf: Text = "") -> Response:
    console.check_csrf(signed, csrf)
    response = see_other(base(request) + "/login")
    console.sign_out(request, response, signed)
    return response


# ---- single sign-on (OpenID Connect, authorization code with PKCE) -------------------------------


@router.get("/sso/login")
def sso_login(
    request: Request, console: ConsoleDep, next: Annotated[str | None, Query(max_length=500)] = None
) -> Response:
    """Send the browser to the identity provider; what the callback needs rides in a signed cookie."""
    sso = console.interlock.oidc
    if sso is None:
        return login_page(
            request, console, target=next, error="Single sign-on is not configured.", status_code=404
        )
    try:
        started = sso.begin()
    except InterlockError as exc:
        return login_page(
            request, console, target=next, error=f"Single sign-on failed: {exc}", status_code=502
        )
    sealed = console.signer.seal(
        "sso",
        {
            "state": started.state,
            "nonce": started.nonce,
            "verifier": started.code_verifier,
            "next": safe_next(request, next),
        },
        ttl_s=SSO_TTL_S,
    )
    response = RedirectResponse(started.url, status_code=303)
    # Lax, not Strict: the provider's redirect back is a cross-site navigation that must carry it.
    response.set_cookie(
        SSO_COOKIE,
        sealed,
        max_age=SSO_TTL_S,
        path=base(request) + "/sso/",
        secure=console.secure(request),
        httponly=True,
        samesite="lax",
    )
    return response


@router.get("/sso/callback")
def sso_callback(
    request: Request,
    console: ConsoleDep,
    code: Annotated[str | None, Query(max_length=2000)] = None,
    state: Annotated[str | None, Query(max_length=500)] = None,
    error: Annotated[str | None, Query(max_length=200)] = None,
    error_description: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    sso = console.interlock.oidc
    kept = console.signer.unseal("sso", request.cookies.get(SSO_COOKIE))
    if sso is None or kept is None:
        return login_page(
            request, console, error="The single sign-on attempt expired; please start again.", status_code=400
        )
    if error or not code or not state:
        why = error_description or error or "no code"
        return login_page(
            request, console, error=f"The identity provider did not sign you in: {why}", status_code=401
        )
    try:
        operator = sso.finish(
            code=code,
            state=state,
            expected_state=kept["state"],
            nonce=kept["nonce"],
            code_verifier=kept["verifier"],
        )
    except InterlockError as exc:
        return login_page(request, console, error=exc.message, status_code=403)
    target = safe_next(request, kept.get("next"))
    # A page, not a redirect: the session cookie is SameSite=Strict, and a browser that arrived
    # from the provider (another site) would not send it on a redirect chain that began there.
    response = console.render(request, "sso_done.html", signed=None, target=target)
    response.delete_cookie(SSO_COOKIE, path=base(request) + "/sso/", httponly=True, samesite="lax")
    if not console.start_session(request, response, operator.id):
        return login_page(request, console, error="Your operator account is disabled.", status_code=403)
    return response


# ---- the local admin's one-time link ------------------------------------------------------------


def console_of(app: FastAPI) -> Console | None:
    """The console mounted on ``app``, if any."""
    for route in app.routes:
        if isinstance(route, Mount):
            console = getattr(getattr(route.app, "state", None), "console", None)
            if isinstance(console, Console):
                return console
    return None


def sign_in_url(app: FastAPI, console_url: str) -> str | None:
    """A single-use, ten-minute link signing the local admin in to the console at ``console_url``."""
    console = console_of(app)
    if console is None:
        return None
    return local_admin_link(console.interlock, console=console_url)


__all__ = ["LOCAL_ADMIN", "console_of", "ensure_local_admin", "login_page", "router", "sign_in_url"]
