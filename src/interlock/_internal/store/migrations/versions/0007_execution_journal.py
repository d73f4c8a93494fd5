"""execution journal with leases, approval execution leases, shared circuit breakers

Revision ID: 0007
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "executions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("agent_id", sa.String(200), nullable=False),
        sa.Column("tool", sa.String(200), nullable=False),
        sa.Column("args_hash", sa.String(64), nullable=False),
        sa.Column("upstream_key", sa.String(100), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("approval_id", sa.String(64), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("decision", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.Column("scopes", sa.Text(), nullable=True),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False),
        sa.Column("resolution", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_executions")),
        sa.UniqueConstraint("upstream_key", name=op.f("uq_executions_upstream_key")),
    )
    op.create_index("ix_executions_state_lease", "executions", ["state", "lease_expires_at"])
    op.create_index(op.f("ix_executions_run_id"), "executions", ["run_id"])
    with op.batch_alter_table("approvals") as batch:
        batch.add_column(sa.Column("lease_expires_at", sa.Float(), nullable=True))
    op.create_table(
        "circuit_breakers",
        sa.Column("key", sa.String(400), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("opened_at", sa.Float(), nullable=True),
        sa.Column("trial_until", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_circuit_breakers")),
    )


def downgrade() -> None:
    op.drop_table("circuit_breakers")
    with op.batch_alter_table("approvals") as batch:
        batch.drop_column("lease_expires_at")
    op.drop_index(op.f("ix_executions_run_id"), table_name="executions")
    op.drop_index("ix_executions_state_lease", table_name="executions")
    op.drop_table("executions")
