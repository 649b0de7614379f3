"""ACME orders an RA node could not forward yet (its upstream was away).

An RA node's finalize leaves such an order ``processing`` and keeps its CSR here; the
node's retrier re-forwards it every ``ra.retry_interval_seconds`` and ends it (valid, or
invalid with the upstream's problem), deleting the row. Only RA nodes write it.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ra_pending_orders",
        sa.Column("order_id", sa.String(32), nullable=False),
        sa.Column("csr_der", sa.LargeBinary(), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["acme_orders.id"], ondelete="CASCADE",
                                name=op.f("fk_ra_pending_orders_order_id_acme_orders")),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_ra_pending_orders")),
    )


def downgrade() -> None:
    op.drop_table("ra_pending_orders")
