"""console sign-in links stored in the database, so any replica accepts one

Revision ID: 0011
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signin_links",
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("operator_id", sa.String(length=200), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("used_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("code_hash", name=op.f("pk_signin_links")),
    )
    op.create_index("ix_signin_links_expires_at", "signin_links", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_signin_links_expires_at", table_name="signin_links")
    op.drop_table("signin_links")
