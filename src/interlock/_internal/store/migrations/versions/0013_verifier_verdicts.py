"""verifier gates: approvals routed to a verifier agent, and the verifiers' verdicts

Revision ID: 0013
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.add_column(sa.Column("verifier", sa.String(200), nullable=True))
        batch.add_column(sa.Column("verification", sa.String(20), nullable=True))
    op.create_table(
        "approval_verdicts",
        sa.Column("approval_id", sa.String(64), nullable=False),
        sa.Column("verifier", sa.String(200), nullable=False),
        sa.Column("verdict", sa.String(10), nullable=False),
        sa.Column("args_hash", sa.String(64), nullable=False),
        sa.Column("reasoning", sa.Text(), nullable=True),
        sa.Column("settles", sa.Boolean(), nullable=False),
        sa.Column("code", sa.String(40), nullable=False),
        sa.Column("policy_ids", sa.Text(), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False),
        sa.Column("step_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("approval_id", name=op.f("pk_approval_verdicts")),
    )
    op.create_index("ix_approvals_verifier", "approvals", ["verifier", "verification"])


def downgrade() -> None:
    op.drop_index("ix_approvals_verifier", table_name="approvals")
    op.drop_table("approval_verdicts")
    with op.batch_alter_table("approvals") as batch:
        batch.drop_column("verification")
        batch.drop_column("verifier")
