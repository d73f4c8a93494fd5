"""read caches and value limits: cached answers, value counters and holds, cached steps

Revision ID: 0014
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "value_counters",
        sa.Column("workflow", sa.String(length=200), nullable=False),
        sa.Column("limit_id", sa.String(length=120), nullable=False),
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("period", sa.String(length=20), nullable=False),
        sa.Column("used_micros", sa.BigInteger(), nullable=False),
        sa.Column("reserved_micros", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("workflow", "limit_id", "key", "period", name=op.f("pk_value_counters")),
    )
    op.create_table(
        "value_holds",
        sa.Column("step_id", sa.String(length=64), nullable=False),
        sa.Column("limit_id", sa.String(length=120), nullable=False),
        sa.Column("workflow", sa.String(length=200), nullable=False),
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("period", sa.String(length=20), nullable=False),
        sa.Column("amount_micros", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("step_id", "limit_id", name=op.f("pk_value_holds")),
    )
    op.create_table(
        "cache_entries",
        sa.Column("workflow", sa.String(length=200), nullable=False),
        sa.Column("tool", sa.String(length=200), nullable=False),
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("record", sa.String(length=64), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("step_id", sa.String(length=64), nullable=True),
        sa.Column("fetched_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("invalidated_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("workflow", "tool", "scope", "record", name=op.f("pk_cache_entries")),
    )
    op.create_index("ix_cache_entries_expires_at", "cache_entries", ["expires_at"])
    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("cached_from", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("steps") as batch:
        batch.drop_column("cached_from")
    op.drop_index("ix_cache_entries_expires_at", table_name="cache_entries")
    op.drop_table("cache_entries")
    op.drop_table("value_holds")
    op.drop_table("value_counters")
