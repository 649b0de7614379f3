"""Pre-signed OCSP responses, one per certificate; and an index for revocation lists.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ocsp_responses",
        sa.Column("certificate_id", sa.Integer(), nullable=False),
        sa.Column("authority_id", sa.Integer(), nullable=False),
        sa.Column("serial_hex", sa.String(length=42), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("this_update", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_update", sa.DateTime(timezone=True), nullable=False),
        sa.Column("produced_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["authority_id"], ["authorities.id"],
                                name=op.f("fk_ocsp_responses_authority_id_authorities")),
        sa.ForeignKeyConstraint(["certificate_id"], ["certificates.id"], ondelete="CASCADE",
                                name=op.f("fk_ocsp_responses_certificate_id_certificates")),
        sa.PrimaryKeyConstraint("certificate_id", name=op.f("pk_ocsp_responses")),
    )
    op.create_index(op.f("ix_ocsp_responses_authority_id"), "ocsp_responses", ["authority_id"])
    op.create_index(op.f("ix_ocsp_responses_serial_hex"), "ocsp_responses", ["serial_hex"])
    op.create_index(op.f("ix_ocsp_responses_next_update"), "ocsp_responses", ["next_update"])
    op.create_index("ix_certificates_authority_status", "certificates",
                    ["authority_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_certificates_authority_status", table_name="certificates")
    op.drop_table("ocsp_responses")
