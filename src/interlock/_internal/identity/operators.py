"""Operators: the people who run Interlock, with roles ``admin, owner, approver, auditor``.

An operator authenticates with a long-lived bearer token (``ilop_…``), found by an indexed
lookup on its hash. Roles are not hierarchical: ``admin`` manages configuration and identities
but does not imply ``approver``, so whoever can change policy cannot also wave actions through
unless granted that role explicitly (separation of duties).
"""

from __future__ import annotations

import builtins
import hmac
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine, Row
from sqlalchemy.exc import IntegrityError

from interlock._internal.audit.chain import append_event
from interlock._internal.identity.agents import check_name
from interlock._internal.identity.secrets import DUMMY_HASH, hash_secret, new_operator_token
from interlock._internal.store.engine import reading, transaction
from interlock._internal.store.tables import operators
from interlock.exceptions import (
    ArgumentsInvalid,
    AuthenticationError,
    ConflictError,
    NotFound,
    PermissionDenied,
)

ROLES: tuple[str, ...] = ("admin", "owner", "approver", "auditor")
ACTIVE = "active"
DISABLED = "disabled"
_MAX_TOKEN_CHARS = 512
_INVALID = "invalid operator token"


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ArgumentsInvalid(f"unknown operator role {role!r}; roles are {', '.join(ROLES)}", field="roles")
    return role


def _roles(roles: Iterable[str]) -> tuple[str, ...]:
    if isinstance(roles, str):  # "admin" would otherwise be read as five one-letter roles
        raise ArgumentsInvalid("roles must be a list of role names, not a string", field="roles")
    found = tuple(sorted({check_role(role) for role in roles}))
    if not found:
        raise ArgumentsInvalid(f"an operator needs at least one role of {', '.join(ROLES)}", field="roles")
    return found


def _workflows(workflows: Iterable[str] | None) -> tuple[str, ...] | None:
    if workflows is None:
        return None
    if isinstance(workflows, str):
        raise ArgumentsInvalid("workflows must be a list of workflow names or None", field="workflows")
    found = tuple(sorted({check_name("workflows", name) for name in workflows}))
    if not found:
        # An empty list would silently grant nothing; None is the explicit "every workflow".
        raise ArgumentsInvalid(
            "workflows is empty: list at least one, or None for every workflow", field="workflows"
        )
    return found


@dataclass(frozen=True, slots=True)
class Operator:
    """An authenticated operator. ``workflows`` is ``None`` when not limited to some workflows."""

    id: str
    roles: tuple[str, ...]
    workflows: tuple[str, ...] | None

    def can(self, role: str, workflow: str | None = None) -> bool:
        """Whether this operator holds ``role`` for ``workflow``.

        ``workflow=None`` asks about something not tied to one workflow (the whole audit log,
        identities); only operators not limited to some workflows have that.
        """
        check_role(role)
        if role not in self.roles:
            return False
        if self.workflows is None:
            return True
        return workflow is not None and workflow in self.workflows

    def require(self, role: str, workflow: str | None = None) -> None:
        """:meth:`can`, raising :class:`PermissionDenied` when the answer is no."""
        if not self.can(role, workflow):
            where = f" for workflow {workflow!r}" if workflow is not None else ""
            raise PermissionDenied(
                f"operator {self.id!r} lacks role {role!r}{where}",
                details={"operator_id": self.id, "role": role, "workflow": workflow},
            )


@dataclass(frozen=True, slots=True)
class OperatorRecord:
    """An operator as stored, without the token hash."""

    id: str
    roles: tuple[str, ...]
    workflows: tuple[str, ...] | None
    status: str
    created_at: float

    @property
    def active(self) -> bool:
        return self.status == ACTIVE

    def principal(self) -> Operator:
        return Operator(id=self.id, roles=self.roles, workflows=self.workflows)


class OperatorStore:
    """Operators in the ``operators`` table. Every change appends an audit event in the same transaction."""

    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._clock = clock

    def create(
        self,
        operator_id: str,
        *,
        roles: Iterable[str],
        workflows: Iterable[str] | None,
        actor: str,
    ) -> tuple[OperatorRecord, str]:
        """Create an operator; return it with its bearer token, which is never visible again.

        Raises :class:`ConflictError` if an active operator has this id; a disabled operator's
        id may be reused (with a new token).
        """
        check_name("operator_id", operator_id)
        role_set = _roles(roles)
        workflow_set = _workflows(workflows)
        token = new_operator_token()
        record = OperatorRecord(
            id=operator_id, roles=role_set, workflows=workflow_set, status=ACTIVE, created_at=self._clock()
        )
        values: dict[str, Any] = {
            "roles": list(role_set),
            "workflows": None if workflow_set is None else list(workflow_set),
            "token_hash": hash_secret(token),
            "status": ACTIVE,
            "created_at": record.created_at,
        }
        conflict = f"operator {operator_id!r} already exists and is active"
        with transaction(self._engine) as conn:
            existing = conn.execute(
                select(operators.c.status).where(operators.c.id == operator_id).with_for_update()
            ).first()
            if existing is None:
                try:
                    conn.execute(insert(operators).values(id=operator_id, **values))
                except IntegrityError as exc:  # a concurrent create of the same id committed first
                    raise ConflictError(conflict) from exc
            elif existing.status == ACTIVE:
                raise ConflictError(conflict)
            else:
                conn.execute(update(operators).where(operators.c.id == operator_id).values(**values))
            append_event(
                conn,
                kind="operator.created",
                actor=actor,
                data={
                    "operator_id": operator_id,
                    "roles": values["roles"],
                    "workflows": values["workflows"],
                    "replaced_disabled": existing is not None,
                },
            )
        return record, token

    def authenticate(self, token: str) -> Operator:
        """The active operator holding ``token``; :class:`AuthenticationError` otherwise."""
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN_CHARS:
            raise AuthenticationError(_INVALID, code="token_invalid")
        presented = hash_secret(token)
        with reading(self._engine) as conn:
            row = conn.execute(select(operators).where(operators.c.token_hash == presented)).first()
        # The indexed lookup already matched the hash; the constant-time compare keeps the
        # check independent of how the database compares strings.
        stored = row.token_hash if row is not None else DUMMY_HASH
        if not hmac.compare_digest(stored, presented) or row is None:
            raise AuthenticationError(_INVALID, code="token_invalid")
        if row.status != ACTIVE:
            raise AuthenticationError(f"operator {row.id!r} is disabled", code="operator_disabled")
        return _record(row).principal()

    def get(self, operator_id: str) -> OperatorRecord:
        with reading(self._engine) as conn:
            row = conn.execute(select(operators).where(operators.c.id == operator_id)).first()
        if row is None:
            raise NotFound(f"no operator {operator_id!r}", details={"operator_id": operator_id})
        return _record(row)

    def with_token_hash(self, operator_id: str) -> tuple[OperatorRecord, str] | None:
        """The operator and what a console session is bound to: the hash of their current API token
        and their session generation, so rotating the token, signing out or disabling the operator
        ends every session on every replica. None for an unknown id."""
        with reading(self._engine) as conn:
            row = conn.execute(select(operators).where(operators.c.id == operator_id)).first()
        return None if row is None else (_record(row), f"{row.token_hash}|{row.session_generation}")

    def end_sessions(self, operator_id: str, *, actor: str) -> None:
        """End every console session of the operator, on every replica, at its next request."""
        with transaction(self._engine) as conn:
            moved = conn.execute(
                update(operators)
                .where(operators.c.id == operator_id)
                .values(session_generation=operators.c.session_generation + 1)
            ).rowcount
            if moved:
                append_event(conn, kind="operator.signed_out", actor=actor, data={"operator_id": operator_id})

    def list(self) -> builtins.list[OperatorRecord]:
        """Every operator (disabled ones included), ordered by id."""
        with reading(self._engine) as conn:
            return [_record(row) for row in conn.execute(select(operators).order_by(operators.c.id))]

    def disable(self, operator_id: str, *, actor: str) -> OperatorRecord:
        """Disable an operator; their token stops working at once. Disabling twice records nothing."""
        with transaction(self._engine) as conn:
            row = conn.execute(
                select(operators).where(operators.c.id == operator_id).with_for_update()
            ).first()
            if row is None:
                raise NotFound(f"no operator {operator_id!r}", details={"operator_id": operator_id})
            record = _record(row)
            if row.status == DISABLED:
                return record
            conn.execute(
                update(operators)
                .where(operators.c.id == operator_id)
                .values(status=DISABLED, session_generation=operators.c.session_generation + 1)
            )
            append_event(
                conn,
                kind="operator.disabled",
                actor=actor,
                data={"operator_id": operator_id, "roles": list(record.roles), "workflows": row.workflows},
            )
        return replace(record, status=DISABLED)

    def rotate_token(self, operator_id: str, *, actor: str) -> str:
        """Give an active operator a new token; the old one stops working at once."""
        token = new_operator_token()
        with transaction(self._engine) as conn:
            row = conn.execute(
                select(operators.c.status).where(operators.c.id == operator_id).with_for_update()
            ).first()
            if row is None:
                raise NotFound(f"no operator {operator_id!r}", details={"operator_id": operator_id})
            if row.status != ACTIVE:
                raise ConflictError(f"operator {operator_id!r} is disabled; create it again to reuse the id")
            conn.execute(
                update(operators).where(operators.c.id == operator_id).values(token_hash=hash_secret(token))
            )
            append_event(conn, kind="operator.token_rotated", actor=actor, data={"operator_id": operator_id})
        return token


def _record(row: Row[Any]) -> OperatorRecord:
    return OperatorRecord(
        id=row.id,
        roles=tuple(row.roles),
        workflows=None if row.workflows is None else tuple(row.workflows),
        status=row.status,
        created_at=row.created_at,
    )


__all__ = [
    "ACTIVE",
    "DISABLED",
    "ROLES",
    "Operator",
    "OperatorRecord",
    "OperatorStore",
    "check_role",
]
