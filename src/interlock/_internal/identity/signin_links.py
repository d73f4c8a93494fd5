"""One-time console sign-in links, kept in the database so that any replica accepts one.

``interlock operators signin-link ID`` issues one for an operator without a restart; ``interlock
serve`` issues one for the local admin. A link is a random code, stored only by its SHA-256, used
once and within its lifetime (ten minutes by default). Issuing one is an audit event.
"""

from __future__ import annotations

import hashlib
import secrets
import time

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Engine

from interlock._internal.audit.chain import append_event
from interlock._internal.store import tables as t
from interlock._internal.store.engine import reading, transaction
from interlock.exceptions import ArgumentsInvalid

LINK_TTL_S = 600
MAX_TTL_S = 86_400
_MAX_CODE_CHARS = 200


def _digest(code: str) -> str:
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


class SignInLinks:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def issue(
        self, operator_id: str, *, actor: str, ttl_s: int = LINK_TTL_S, now: float | None = None
    ) -> str:
        """A new single-use code for ``operator_id``; the operator must exist (checked by the caller)."""
        if not 1 <= ttl_s <= MAX_TTL_S:
            raise ArgumentsInvalid(f"a sign-in link lives 1 to {MAX_TTL_S} seconds", field="ttl_s")
        code = secrets.token_urlsafe(32)
        now = time.time() if now is None else now
        with transaction(self._engine) as conn:
            conn.execute(delete(t.signin_links).where(t.signin_links.c.expires_at < now - 86_400))
            conn.execute(
                insert(t.signin_links).values(
                    code_hash=_digest(code),
                    operator_id=operator_id,
                    created_by=actor,
                    created_at=now,
                    expires_at=now + ttl_s,
                )
            )
            append_event(
                conn,
                kind="operator.signin_link_issued",
                actor=actor,
                data={"operator_id": operator_id, "expires_at": now + ttl_s},
            )
        return code

    def redeem(self, code: str | None, *, now: float | None = None) -> str | None:
        """The operator id for ``code``, once; None if unknown, used or expired (on any replica)."""
        if not code or len(code) > _MAX_CODE_CHARS:
            return None
        now = time.time() if now is None else now
        digest = _digest(code)
        c = t.signin_links.c
        with transaction(self._engine) as conn:
            # One conditional update: two replicas redeeming the same code at once cannot both win.
            won = conn.execute(
                update(t.signin_links)
                .where(c.code_hash == digest, c.used_at.is_(None), c.expires_at > now)
                .values(used_at=now)
            ).rowcount
        if won != 1:
            return None
        with reading(self._engine) as conn:
            row = conn.execute(select(c.operator_id).where(c.code_hash == digest)).first()
        return None if row is None else str(row[0])


__all__ = ["LINK_TTL_S", "SignInLinks"]
