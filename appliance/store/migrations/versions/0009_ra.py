"""Registration authorities: the RA path of a certificate, and when each RA last called.

A certificate asked for through RAs keeps the path it came by (``certificates.ra_path``,
JSON, bottom hop first) so that revocation through an RA can be limited to certificates
whose path contains it and ``cert show`` can print it. ``ra_contacts`` holds the last
contact of each registered RA (a provisioner row of type ``ra``), written at most every
few seconds, apart from the provisioner row so that a busy RA does not rewrite its
settings row.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("ra_path", sa.Text(), nullable=True))
    op.create_table(
        "ra_contacts",
        sa.Column("provisioner_id", sa.Integer(), nullable=False),
        sa.Column("last_contact_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_op", sa.String(32), nullable=False),
        sa.ForeignKeyConstraint(["provisioner_id"], ["provisioners.id"], ondelete="CASCADE",
                                name=op.f("fk_ra_contacts_provisioner_id_provisioners")),
        sa.PrimaryKeyConstraint("provisioner_id", name=op.f("pk_ra_contacts")),
    )

def downgrade() -> None:
    op.drop_table("ra_contacts")
    with op.batch_alter_table("certificates") as batch:
        batch.drop_column("ra_path")
