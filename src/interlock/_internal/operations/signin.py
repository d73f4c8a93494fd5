"""Console sign-in links for operators, issued from the CLI or by ``interlock serve``.

The link carries a one-time code kept in the database (:mod:`interlock._internal.identity.signin_links`),
never an API token, so a link issued on one replica works on any other, and no restart is needed.
"""

from __future__ import annotations

import contextlib
from urllib.parse import quote

from interlock._internal.identity.operators import ROLES
from interlock._internal.identity.signin_links import LINK_TTL_S
from interlock._internal.service import Interlock
from interlock.exceptions import ConflictError, NotFound, PermissionDenied

LOCAL_ADMIN = "local-admin"
LOGIN_PATH = "/login"


def console_url(interlock: Interlock, *, host: str | None = None, port: int | None = None) -> str:
    """The console's address: ``server.public_url`` when set, else the listening host and port."""
    server = interlock.settings.server
    if server.public_url:
        return server.public_url.rstrip("/") + "/ui"
    host = host or server.host
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port or server.port}/ui"


def sign_in_link(
    interlock: Interlock, operator_id: str, *, console: str, actor: str, ttl_s: int = LINK_TTL_S
) -> str:
    """A single-use link that signs ``operator_id`` in to the console at ``console`` (``…/ui``)."""
    record = interlock.operators.get(operator_id)
    if not record.active:
        raise PermissionDenied(f"operator {operator_id!r} is {record.status}", code="operator_disabled")
    code = interlock.signin_links.issue(operator_id, actor=actor, ttl_s=ttl_s)
    return f"{console.rstrip('/')}{LOGIN_PATH}?token={quote(code)}"


def ensure_local_admin(interlock: Interlock) -> str | None:
    """The ``local-admin`` operator (every role, every workflow), created on first use.

    Its API token is discarded at creation: it signs in only through one-time links. Disable it
    (``interlock operators disable local-admin``) and no link is printed again.
    """
    try:
        return LOCAL_ADMIN if interlock.operators.get(LOCAL_ADMIN).active else None
    except NotFound:
        pass
    with contextlib.suppress(ConflictError):  # another replica created it first
        interlock.operators.create(LOCAL_ADMIN, roles=ROLES, workflows=None, actor="interlock serve")
    return LOCAL_ADMIN


def local_admin_link(interlock: Interlock, *, console: str) -> str | None:
    """The link ``interlock serve`` prints, or None once the local admin is disabled."""
    operator_id = ensure_local_admin(interlock)
    if operator_id is None:
        return None
    return sign_in_link(interlock, operator_id, console=console, actor="interlock serve")


__all__ = ["LOCAL_ADMIN", "console_url", "ensure_local_admin", "local_admin_link", "sign_in_link"]
