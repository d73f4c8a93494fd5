"""seed the audit chain tip

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

GENESIS_HASH = "0" * 64


def upgrade() -> None:
    # Appends lock this row; having it from the start keeps every append to one locking SELECT.
    # Only an empty chain is seeded: a chain with events but no tip is for `audit verify` to report.
    op.execute(
        sa.text(
            "INSERT INTO audit_head (id, seq, hash) SELECT 1, 0, :genesis "
            "WHERE NOT EXISTS (SELECT 1 FROM audit_head) AND NOT EXISTS (SELECT 1 FROM audit_events)"
        ).bindparams(genesis=GENESIS_HASH)
    )


def downgrade() -> None:
    # Revision 0001 works with or without the row; drop it only if nothing was appended yet.
    op.execute(sa.text("DELETE FROM audit_head WHERE id = 1 AND seq = 0"))
