"""systems: the binding each decision used, the data classes steps bring into runs

Revision ID: 0009
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("binding", sa.Text(), nullable=True))
        batch.add_column(sa.Column("data_classes", sa.Text(), nullable=True))
    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("data_classes", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("steps") as batch:
        batch.drop_column("data_classes")
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("data_classes")
        batch.drop_column("binding")
