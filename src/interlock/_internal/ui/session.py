"""Console sign-in: signed session cookies, CSRF tokens, and one-time sign-in links.

The session cookie holds no secret: it is ``v1.<payload>.<mac>``, where the payload names the
operator, a random session id, an expiry, the time of its last use, and the fingerprint of the
operator's current API token and session generation (a counter in the operator's row that signing
out and disabling the operator move on, which ends every session of theirs on every replica). The
session also ends after ``server.session_idle_s`` without a request; each request within that time
refreshes the last-use time (at most once a minute). The MAC is HMAC-SHA256 under a key derived with HKDF from
``identity.signing_seed`` under its own label (so it never doubles as the token-signing key). Every
replica sharing the seed accepts it. Each request re-reads the operator's row, so a disabled operator
or a rotated token ends the session at once.

CSRF: every form carries ``HMAC(key, "csrf" | session id)``; the sign-in form, which has no session
yet, uses a random value repeated in a short-lived cookie (double submit).

A sign-in link (``/ui/login?token=…``) carries a random code that is good for one use within a few
minutes and lives only in this process's memory; it is never an API token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, replace

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SESSION_COOKIE = "interlock_console"
LOGIN_CSRF_COOKIE = "interlock_console_login"
SESSION_TTL_S = 8 * 3600
SESSION_IDLE_S = 1800
# A request refreshes the session's last-use time only when it is older than this.
SESSION_REFRESH_S = 60
LOGIN_CODE_TTL_S = 600
_HKDF_LABEL = b"interlock/console-session/v1"
_VERSION = "v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Session:
    operator_id: str
    session_id: str
    expires_at: float
    token_fingerprint: str
    seen_at: float = 0.0


class SessionSigner:
    """Signs and checks session cookies and CSRF tokens with a key of its own."""

    def __init__(
        self, signing_seed: str, *, ttl_s: int = SESSION_TTL_S, idle_s: int = SESSION_IDLE_S
    ) -> None:
        self._key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_LABEL).derive(
            signing_seed.encode("utf-8")
        )
        self.ttl_s = ttl_s
        self.idle_s = idle_s

    def _mac(self, label: str, data: str) -> str:
        return _b64(hmac.new(self._key, f"{label}|{data}".encode(), hashlib.sha256).digest())

    def issue(
        self, operator_id: str, token_fingerprint: str, *, now: float | None = None
    ) -> tuple[str, Session]:
        at = time.time() if now is None else now
        session = Session(
            operator_id=operator_id,
            session_id=secrets.token_urlsafe(16),
            expires_at=at + self.ttl_s,
            token_fingerprint=token_fingerprint,
            seen_at=at,
        )
        return self._encode(session), session

    def refresh(self, session: Session, *, now: float | None = None) -> tuple[str, Session]:
        """The same session with its last use moved to now (its expiry does not move)."""
        fresh = replace(session, seen_at=time.time() if now is None else now)
        return self._encode(fresh), fresh

    def _encode(self, session: Session) -> str:
        body = json.dumps(
            {
                "o": session.operator_id,
                "s": session.session_id,
                "e": int(session.expires_at),
                "t": session.token_fingerprint,
                "a": int(session.seen_at),
            },
            separators=(",", ":"),
            sort_keys=True,
        )
        payload = _b64(body.encode("utf-8"))
        return f"{_VERSION}.{payload}.{self._mac('session', payload)}"

    def read(self, cookie: str | None, *, now: float | None = None) -> Session | None:
        """The session in a cookie, or None if it is absent, forged, malformed or expired."""
        if not cookie or len(cookie) > 2048:
            return None
        parts = cookie.split(".")
        if len(parts) != 3 or parts[0] != _VERSION:
            return None
        _, payload, mac = parts
        if not hmac.compare_digest(mac, self._mac("session", payload)):
            return None
        try:
            data = json.loads(_unb64(payload))
            session = Session(
                operator_id=str(data["o"]),
                session_id=str(data["s"]),
                expires_at=float(data["e"]),
                token_fingerprint=str(data["t"]),
                seen_at=float(data["a"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        at = time.time() if now is None else now
        if session.expires_at <= at or at - session.seen_at > self.idle_s:
            return None
        return session

    def seal(self, label: str, data: dict[str, str], *, ttl_s: int, now: float | None = None) -> str:
        """A short-lived signed value (for example the single sign-on state a browser carries)."""
        body = json.dumps(
            {**data, "_e": int((time.time() if now is None else now) + ttl_s)},
            separators=(",", ":"),
            sort_keys=True,
        )
        payload = _b64(body.encode("utf-8"))
        return f"{payload}.{self._mac(label, payload)}"

    def unseal(self, label: str, value: str | None, *, now: float | None = None) -> dict[str, str] | None:
        if not value or len(value) > 4096 or "." not in value:
            return None
        payload, mac = value.rsplit(".", 1)
        if not hmac.compare_digest(mac, self._mac(label, payload)):
            return None
        try:
            data = json.loads(_unb64(payload))
            expires = float(data.pop("_e"))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if expires <= (time.time() if now is None else now):
            return None
        return {str(k): str(v) for k, v in data.items()}

    def csrf_token(self, session: Session) -> str:
        return self._mac("csrf", session.session_id)

    def csrf_ok(self, session: Session, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf_token(session), presented or "")


def new_login_csrf() -> str:
    return secrets.token_urlsafe(24)


def same_secret(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(a or "", b or "")


__all__ = [
    "LOGIN_CODE_TTL_S",
    "LOGIN_CSRF_COOKIE",
    "SESSION_COOKIE",
    "SESSION_TTL_S",
    "Session",
    "SessionSigner",
    "new_login_csrf",
    "same_secret",
]
