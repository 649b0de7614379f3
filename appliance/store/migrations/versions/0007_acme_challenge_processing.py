"""ACME challenges validate in the background: when the current attempt started.

A challenge POST now answers "processing" (RFC 8555 §7.5.1) and a bounded pool of
threads validates, so a slow or silent target no longer holds a request worker. The
start time lets a later POST tell an attempt that is still running from one whose
process died (the challenge would otherwise stay "processing" for ever).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("acme_challenges") as batch:
        batch.add_column(sa.Column("processing_since", sa.DateTime(timezone=True),
                                   nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("acme_challenges") as batch:
        batch.drop_column("processing_since")
