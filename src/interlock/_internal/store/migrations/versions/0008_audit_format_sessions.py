"""audit hash format 2 (RFC 8785), console session generations, token failure back-off

Revision ID: 0008
Revises: 0011

Existing audit events are relabelled, never rewritten: an event whose stored body is already the
RFC 8785 form of itself (nearly all of them: the legacy form differs only for integral floats,
tiny floats and keys outside the Basic Multilingual Plane) becomes hash format 2; the others keep
format 1 and verify under its rules. No hash changes, so existing checkpoints and witness copies
stay valid.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0011"
branch_labels = None
depends_on = None

_PAGE = 2000


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("hash_format", sa.SmallInteger(), nullable=False, server_default="1"))
    _relabel_events()
    # Checkpoints signed before now name the legacy statement type they were signed as.
    with op.batch_alter_table("audit_checkpoints") as batch:
        batch.add_column(
            sa.Column("type", sa.String(60), nullable=False, server_default="interlock.audit.checkpoint/v1")
        )
    with op.batch_alter_table("operators") as batch:
        batch.add_column(sa.Column("session_generation", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "token_failures",
        sa.Column("client_id", sa.String(200), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("first_at", sa.Float(), nullable=False),
        sa.Column("blocked_until", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("client_id", name=op.f("pk_token_failures")),
    )


def _relabel_events() -> None:
    # Imported here: the migration environment must not need it unless there are events.
    from interlock._internal.audit.canonical import canonical_json

    conn = op.get_bind()
    events = sa.table(
        "audit_events",
        sa.column("seq", sa.BigInteger()),
        sa.column("body", sa.Text()),
        sa.column("hash_format", sa.SmallInteger()),
    )
    after = 0
    while True:
        rows = conn.execute(
            sa.select(events.c.seq, events.c.body)
            .where(events.c.seq > after)
            .order_by(events.c.seq)
            .limit(_PAGE)
        ).all()
        if not rows:
            return
        same = [int(seq) for seq, body in rows if _already_jcs(body, canonical_json)]
        if same:
            conn.execute(sa.update(events).where(events.c.seq.in_(same)).values(hash_format=2))
        after = int(rows[-1][0])


def _already_jcs(body: str, canonical_json: Callable[[Any], bytes]) -> bool:
    try:
        value = json.loads(body)
        return canonical_json(value) == body.encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError):
        return False


def downgrade() -> None:
    op.drop_table("token_failures")
    with op.batch_alter_table("operators") as batch:
        batch.drop_column("session_generation")
    with op.batch_alter_table("audit_checkpoints") as batch:
        batch.drop_column("type")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("hash_format")
