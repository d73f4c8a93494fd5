"""budgets, pauses, handoffs, resource locks

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "budget_counters",
        sa.Column("scope", sa.String(30), nullable=False),
        sa.Column("key", sa.String(300), nullable=False),
        sa.Column("period", sa.String(20), nullable=False),
        sa.Column("used_micros", sa.BigInteger(), nullable=False),
        sa.Column("reserved_micros", sa.BigInteger(), nullable=False),
        sa.Column("used_tokens", sa.BigInteger(), nullable=False),
        sa.Column("used_steps", sa.BigInteger(), nullable=False),
        sa.Column("used_tool_calls", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "key", "period", name=op.f("pk_budget_counters")),
    )
    op.create_table(
        "pauses",
        sa.Column("scope", sa.String(20), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("paused_by", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "key", name=op.f("pk_pauses")),
    )
    op.create_table(
        "handoffs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("step_id", sa.String(64), nullable=True),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("tool", sa.String(200), nullable=True),
        sa.Column("arguments", sa.Text(), nullable=True),
        sa.Column("reason_code", sa.String(50), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("resolved_at", sa.Float(), nullable=True),
        sa.Column("resolved_by", sa.String(200), nullable=True),
        sa.Column("resolution", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_handoffs")),
    )
    op.create_index(op.f("ix_handoffs_run_id"), "handoffs", ["run_id"])
    op.create_index(op.f("ix_handoffs_workflow"), "handoffs", ["workflow"])
    op.create_table(
        "resource_locks",
        sa.Column("key", sa.String(400), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("acquired_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_resource_locks")),
    )
    op.create_index(op.f("ix_resource_locks_run_id"), "resource_locks", ["run_id"])
    op.create_index("ix_steps_run_args", "steps", ["run_id", "tool", "args_hash"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("tokens", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("tokens")
    op.drop_index("ix_steps_run_args", table_name="steps")
    op.drop_table("resource_locks")
    op.drop_table("handoffs")
    op.drop_table("pauses")
    op.drop_table("budget_counters")
