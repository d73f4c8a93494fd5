"""Agents: non-human identities bound to one workflow and one environment.

An agent holds a client secret only to exchange it for short-lived access tokens
(see :mod:`.tokens`). Its row is read on every authentication, so revoking it takes effect on
the very next call, even for tokens already issued.
"""

from __future__ import annotations

import builtins
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.engine import Engine, Row
from sqlalchemy.exc import IntegrityError

from interlock._internal.audit.chain import append_event
from interlock._internal.identity.secrets import (
    DUMMY_HASH,
    hash_secret,
    new_agent_secret,
    secret_matches,
)
from interlock._internal.store.engine import reading, transaction
from interlock._internal.store.hot import hot_read
from interlock._internal.store.tables import agents
from interlock.exceptions import ArgumentsInvalid, AuthenticationError, ConflictError, NotFound

ACTIVE = "active"
REVOKED = "revoked"

# Same shape as names in a workflow manifest, so an agent declared there can be created as is.
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,127}$")

# last_seen_at is for people ("is this agent still in use?"), not for security decisions, so a
# resolution of half a minute is plenty and saves a write transaction on almost every call.
TOUCH_INTERVAL_S = 30.0
_TOUCH_MEMO_MAX = 10_000

INVALID_CLIENT = "invalid client credentials"
# The agent behind every request: prepared once, only bound per call.
_LOOKUP = select(agents).where(agents.c.id == bindparam("agent_id"))


@dataclass(frozen=True, slots=True)
class AgentCredentials:
    """What :meth:`AgentStore.create` returns; the secret is shown once and never stored."""

    client_id: str
    client_secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """An agent as stored, without its secret hash."""

    id: str
    workflow: str
    environment: str
    status: str
    created_at: float
    revoked_at: float | None = None
    revoked_by: str | None = None
    last_seen_at: float | None = None

    @property
    def active(self) -> bool:
        return self.status == ACTIVE


@dataclass(frozen=True, slots=True)
class AgentAuthRow:
    """An agent together with its secret hash; for authentication code only, never returned by APIs."""

    record: AgentRecord
    secret_hash: str = field(repr=False)


def check_name(field_name: str, value: str) -> str:
    """``value`` if it is a valid identity, workflow or environment name, else :class:`ArgumentsInvalid`."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise ArgumentsInvalid(
            f"{field_name} {value!r} is not a valid name: start with a letter, then up to 127 letters, "
            "digits, '_', '.' or '-'",
            field=field_name,
        )
    return value


class AgentStore:
    """Agents in the ``agents`` table. Every change appends an audit event in the same transaction."""

    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._clock = clock
        # Per-process memory of recent last_seen writes; the SQL condition is the real guard.
        self._touched: dict[str, float] = {}

    def create(self, agent_id: str, *, workflow: str, environment: str, actor: str) -> AgentCredentials:
        """Create an agent and return its client secret (the only time it is ever visible).

        Raises :class:`ConflictError` if an active agent has this id. A revoked agent's id may be
        reused: the row gets a new secret, so tokens minted for the old one stay invalid.
        """
        check_name("agent_id", agent_id)
        check_name("workflow", workflow)
        check_name("environment", environment)
        secret = new_agent_secret()
        values: dict[str, Any] = {
            "workflow": workflow,
            "environment": environment,
            "secret_hash": hash_secret(secret),
            "status": ACTIVE,
            "created_at": self._clock(),
            "revoked_at": None,
            "revoked_by": None,
            "last_seen_at": None,
        }
        conflict = f"agent {agent_id!r} already exists and is active"
        with transaction(self._engine) as conn:
            existing = conn.execute(
                select(agents.c.status).where(agents.c.id == agent_id).with_for_update()
            ).first()
            if existing is None:
                try:
                    conn.execute(insert(agents).values(id=agent_id, **values))
                except IntegrityError as exc:  # a concurrent create of the same id committed first
                    raise ConflictError(conflict) from exc
            elif existing.status == ACTIVE:
                raise ConflictError(conflict)
            else:
                conn.execute(update(agents).where(agents.c.id == agent_id).values(**values))
            append_event(
                conn,
                kind="agent.created",
                actor=actor,
                workflow=workflow,
                data={
                    "agent_id": agent_id,
                    "workflow": workflow,
                    "environment": environment,
                    "replaced_revoked": existing is not None,
                },
            )
        self._touched.pop(agent_id, None)
        return AgentCredentials(client_id=agent_id, client_secret=secret)

    def get(self, agent_id: str) -> AgentRecord:
        row = self.lookup(agent_id)
        if row is None:
            raise NotFound(f"no agent {agent_id!r}", details={"agent_id": agent_id})
        return row.record

    def lookup(self, agent_id: str) -> AgentAuthRow | None:
        """The agent's row and secret hash in one primary-key SELECT, or ``None``. Every request
        an agent makes reads it, so it is a prepared statement on a bare pooled connection."""
        with hot_read(self._engine) as conn:
            row = conn.execute(_LOOKUP, {"agent_id": agent_id}).mappings().first()
        if row is None:
            return None
        return auth_row(SimpleNamespace(**row))

    def list(self, workflow: str | None = None) -> builtins.list[AgentRecord]:
        """Every agent (revoked ones included), ordered by id; optionally of one workflow only."""
        query = select(agents).order_by(agents.c.id)
        if workflow is not None:
            query = query.where(agents.c.workflow == workflow)
        with reading(self._engine) as conn:
            return [_record(row) for row in conn.execute(query)]

    def check_secret(self, client_id: str, client_secret: str) -> AgentAuthRow:
        """The agent if ``client_secret`` is its current secret.

        An unknown client and a wrong secret fail identically, in message and in work done, so
        the answer never reveals which agent ids exist. Only a caller who proved knowledge of
        the secret learns that the agent is revoked.
        """
        row = self.lookup(client_id) if isinstance(client_id, str) and client_id else None
        expected = row.secret_hash if row is not None else DUMMY_HASH
        ok = isinstance(client_secret, str) and secret_matches(client_secret, expected)
        if row is None or not ok:
            raise AuthenticationError(INVALID_CLIENT, code="invalid_client")
        if not row.record.active:
            raise AuthenticationError(f"agent {client_id!r} is revoked", code="agent_revoked")
        return row

    def revoke(self, agent_id: str, *, actor: str, reason: str | None = None) -> AgentRecord:
        """Revoke an agent: no new tokens, and tokens already issued stop working on their next use.

        Revoking an agent that is already revoked changes nothing and records nothing.
        """
        now = self._clock()
        with transaction(self._engine) as conn:
            row = conn.execute(select(agents).where(agents.c.id == agent_id).with_for_update()).first()
            if row is None:
                raise NotFound(f"no agent {agent_id!r}", details={"agent_id": agent_id})
            if row.status == REVOKED:
                return _record(row)
            conn.execute(
                update(agents)
                .where(agents.c.id == agent_id)
                .values(status=REVOKED, revoked_at=now, revoked_by=actor)
            )
            data: dict[str, Any] = {
                "agent_id": agent_id,
                "workflow": row.workflow,
                "environment": row.environment,
            }
            if reason:
                data["reason"] = reason
            append_event(conn, kind="agent.revoked", actor=actor, workflow=row.workflow, data=data)
        return replace(_record(row), status=REVOKED, revoked_at=now, revoked_by=actor)

    def rotate_secret(self, agent_id: str, *, actor: str) -> AgentCredentials:
        """Give an active agent a new client secret; the old secret and every token it minted stop working."""
        secret = new_agent_secret()
        with transaction(self._engine) as conn:
            row = conn.execute(
                select(agents.c.status, agents.c.workflow, agents.c.environment)
                .where(agents.c.id == agent_id)
                .with_for_update()
            ).first()
            if row is None:
                raise NotFound(f"no agent {agent_id!r}", details={"agent_id": agent_id})
            if row.status != ACTIVE:
                raise ConflictError(f"agent {agent_id!r} is revoked; create it again to reuse the id")
            conn.execute(
                update(agents).where(agents.c.id == agent_id).values(secret_hash=hash_secret(secret))
            )
            append_event(
                conn,
                kind="agent.secret_rotated",
                actor=actor,
                workflow=row.workflow,
                data={"agent_id": agent_id, "workflow": row.workflow, "environment": row.environment},
            )
        return AgentCredentials(client_id=agent_id, client_secret=secret)

    def touch(self, agent_id: str, *, now: float | None = None) -> bool:
        """Record that the agent was seen; at most one write per agent every ``TOUCH_INTERVAL_S``.

        Returns whether a write was attempted.
        """
        now = self._clock() if now is None else now
        last = self._touched.get(agent_id)
        if last is not None and now - last < TOUCH_INTERVAL_S:
            return False
        if len(self._touched) >= _TOUCH_MEMO_MAX:
            self._touched.clear()
        self._touched[agent_id] = now
        # The condition keeps several replicas from each writing within the same interval.
        with transaction(self._engine) as conn:
            conn.execute(
                update(agents)
                .where(
                    agents.c.id == agent_id,
                    or_(agents.c.last_seen_at.is_(None), agents.c.last_seen_at < now - TOUCH_INTERVAL_S),
                )
                .values(last_seen_at=now)
            )
        return True


def auth_row(row: Any) -> AgentAuthRow:
    """An :class:`AgentAuthRow` from any row with the agents table's columns (joined reads)."""
    return AgentAuthRow(record=_record(row), secret_hash=row.secret_hash)


def _record(row: Row[Any]) -> AgentRecord:
    return AgentRecord(
        id=row.id,
        workflow=row.workflow,
        environment=row.environment,
        status=row.status,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        revoked_by=row.revoked_by,
        last_seen_at=row.last_seen_at,
    )


__all__ = [
    "ACTIVE",
    "REVOKED",
    "TOUCH_INTERVAL_S",
    "AgentAuthRow",
    "AgentCredentials",
    "AgentRecord",
    "AgentStore",
    "check_name",
]
