"""Authority kinds (root, intermediate, cross, ocsp, external-root), serials, ceremony
names; external roots have no key of ours; the CRL table with per-authority numbers.

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


def upgrade() -> None:
    with op.batch_alter_table("authorities") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(length=16), nullable=False, server_default="intermediate")
        )
        batch.add_column(
            sa.Column("serial_hex", sa.String(length=42), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("ceremony", sa.String(length=200), nullable=True))
        batch.alter_column("key_id", existing_type=sa.Integer(), nullable=True)
    op.create_table(
        "crls",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("authority_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("this_update", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_update", sa.DateTime(timezone=True), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["authority_id"], ["authorities.id"], name=op.f("fk_crls_authority_id_authorities")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crls")),
        sa.UniqueConstraint("authority_id", "number", name="uq_crls_authority_number"),
    )


def downgrade() -> None:
    op.drop_table("crls")
    with op.batch_alter_table("authorities") as batch:
        batch.alter_column("key_id", existing_type=sa.Integer(), nullable=False)
        batch.drop_column("ceremony")
        batch.drop_column("serial_hex")
        batch.drop_column("kind")
