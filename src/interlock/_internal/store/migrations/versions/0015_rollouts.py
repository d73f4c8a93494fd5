"""rollouts: candidate manifest versions in shadow or as a canary, and their compared decisions

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("rollout_id", sa.String(length=64), nullable=True))
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("workflow", sa.String(length=200), nullable=False),
        sa.Column("candidate_version_id", sa.String(length=300), nullable=False),
        sa.Column("active_version_id", sa.String(length=300), nullable=False),
        sa.Column("mode", sa.String(length=20), nullable=False),
        sa.Column("share", sa.Float(), nullable=False),
        sa.Column("agents", sa.Text(), nullable=False),
        sa.Column("triggers", sa.Text(), nullable=False),
        sa.Column("max_denial_increase", sa.Float(), nullable=True),
        sa.Column("max_escalation_increase", sa.Float(), nullable=True),
        sa.Column("min_decisions", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("live", sa.SmallInteger(), nullable=True),
        sa.Column("decisions", sa.BigInteger(), nullable=False),
        sa.Column("active_denials", sa.BigInteger(), nullable=False),
        sa.Column("candidate_denials", sa.BigInteger(), nullable=False),
        sa.Column("active_escalations", sa.BigInteger(), nullable=False),
        sa.Column("candidate_escalations", sa.BigInteger(), nullable=False),
        sa.Column("started_by", sa.String(length=200), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("ended_by", sa.String(length=200), nullable=True),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.Column("end_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
        sa.UniqueConstraint("workflow", "live", name="uq_rollouts_workflow_live"),
    )
    op.create_table(
        "rollout_decisions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("rollout_id", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("step_id", sa.String(length=64), nullable=True),
        sa.Column("agent_id", sa.String(length=200), nullable=False),
        sa.Column("tool", sa.String(length=200), nullable=False),
        sa.Column("arm", sa.String(length=20), nullable=False),
        sa.Column("active_decision", sa.String(length=20), nullable=False),
        sa.Column("candidate_decision", sa.String(length=20), nullable=False),
        sa.Column("active_reasons", sa.Text(), nullable=False),
        sa.Column("candidate_reasons", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_decisions")),
    )
    op.create_index("ix_rollout_decisions_rollout", "rollout_decisions", ["rollout_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_rollout_decisions_rollout", table_name="rollout_decisions")
    op.drop_table("rollout_decisions")
    op.drop_table("rollouts")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("rollout_id")
