"""work packages and their usage counters; notification deliveries; budget warnings

Revision ID: 0010
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "work_packages",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("agent_id", sa.String(200), nullable=False),
        sa.Column("environment", sa.String(100), nullable=False),
        sa.Column("manifest_version", sa.String(300), nullable=False),
        sa.Column("claims", sa.Text(), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("issued_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("used_at", sa.Float(), nullable=True),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.Column("revoked_by", sa.String(200), nullable=True),
        sa.Column("revoked_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_work_packages")),
        sa.UniqueConstraint("nonce", name=op.f("uq_work_packages_nonce")),
    )
    op.create_index(op.f("ix_work_packages_workflow"), "work_packages", ["workflow"])
    op.create_table(
        "package_usage",
        sa.Column("package_id", sa.String(64), nullable=False),
        sa.Column("key", sa.String(400), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.Column("max_total", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("package_id", "key", name=op.f("pk_package_usage")),
    )
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("package_id", sa.String(64), nullable=True))
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("package_id", sa.String(64), nullable=True))
    with op.batch_alter_table("budget_counters") as batch:
        batch.add_column(sa.Column("warned_at", sa.Float(), nullable=True))
    op.create_table(
        "notification_deliveries",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("event_seq", sa.BigInteger(), nullable=False),
        sa.Column("event_kind", sa.String(50), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=True),
        sa.Column("delivered_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_deliveries")),
    )
    op.create_index(
        "ix_notification_deliveries_due", "notification_deliveries", ["status", "next_attempt_at"]
    )
    op.create_table(
        "notification_cursor",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_cursor")),
    )


def downgrade() -> None:
    op.drop_table("notification_cursor")
    op.drop_index("ix_notification_deliveries_due", table_name="notification_deliveries")
    op.drop_table("notification_deliveries")
    with op.batch_alter_table("budget_counters") as batch:
        batch.drop_column("warned_at")
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("package_id")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("package_id")
    op.drop_table("package_usage")
    op.drop_index(op.f("ix_work_packages_workflow"), table_name="work_packages")
    op.drop_table("work_packages")
