"""Issuance service: provisioners, name policies, templates, inventory, issued
certificates (reserved before signing) and spent one-time tokens.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 19:10:45.076388
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inventory_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("owner", sa.String(length=256), nullable=False),
        sa.Column("metadata_json", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inventory_records")),
        sa.UniqueConstraint("name", name=op.f("uq_inventory_records_name")),
    )
    op.create_table(
        "templates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_templates")),
        sa.UniqueConstraint("name", name=op.f("uq_templates_name")),
    )
    op.create_table(
        "inventory_identifiers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("record_id", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=8), nullable=False),
        sa.Column("value", sa.String(length=512), nullable=False),
        sa.ForeignKeyConstraint(
            ["record_id"],
            ["inventory_records.id"],
            name=op.f("fk_inventory_identifiers_record_id_inventory_records"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inventory_identifiers")),
        sa.UniqueConstraint("type", "value", name="uq_inventory_identifiers_value"),
    )
    with op.batch_alter_table("inventory_identifiers", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_inventory_identifiers_record_id"), ["record_id"], unique=False
        )

    op.create_table(
        "provisioners",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("credential", sa.Text(), nullable=False),
        sa.Column("authority_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["authority_id"],
            ["authorities.id"],
            name=op.f("fk_provisioners_authority_id_authorities"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provisioners")),
        sa.UniqueConstraint("name", name=op.f("uq_provisioners_name")),
    )
    op.create_table(
        "certificates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("serial_hex", sa.String(length=42), nullable=False),
        sa.Column("authority_id", sa.Integer(), nullable=False),
        sa.Column("provisioner_id", sa.Integer(), nullable=True),
        sa.Column("provisioner_name", sa.String(length=64), nullable=False),
        sa.Column("requester", sa.String(length=256), nullable=False),
        sa.Column("template", sa.String(length=64), nullable=False),
        sa.Column("inventory_record_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("sans", sa.Text(), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("der", sa.LargeBinary(), nullable=True),
        sa.Column("fingerprint_sha256", sa.String(length=64), nullable=True),
        sa.Column("renewed_from", sa.String(length=42), nullable=True),
        sa.Column("request_context", sa.Text(), nullable=False),
        sa.Column("reserved_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revocation_reason", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["authority_id"],
            ["authorities.id"],
            name=op.f("fk_certificates_authority_id_authorities"),
        ),
        sa.ForeignKeyConstraint(
            ["inventory_record_id"],
            ["inventory_records.id"],
            name=op.f("fk_certificates_inventory_record_id_inventory_records"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["provisioner_id"],
            ["provisioners.id"],
            name=op.f("fk_certificates_provisioner_id_provisioners"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_certificates")),
        sa.UniqueConstraint("serial_hex", name=op.f("uq_certificates_serial_hex")),
    )
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_certificates_authority_id"), ["authority_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_certificates_not_after"), ["not_after"], unique=False)
        batch_op.create_index(batch_op.f("ix_certificates_status"), ["status"], unique=False)

    op.create_table(
        "name_policies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("provisioner_id", sa.Integer(), nullable=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["provisioner_id"],
            ["provisioners.id"],
            name=op.f("fk_name_policies_provisioner_id_provisioners"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_name_policies")),
        sa.UniqueConstraint("level", "provisioner_id", name="uq_name_policies_level"),
    )
    op.create_table(
        "used_tokens",
        sa.Column("jti", sa.String(length=256), nullable=False),
        sa.Column("provisioner_id", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["provisioner_id"],
            ["provisioners.id"],
            name=op.f("fk_used_tokens_provisioner_id_provisioners"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("jti", name=op.f("pk_used_tokens")),
    )
    with op.batch_alter_table("used_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_used_tokens_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("used_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_used_tokens_expires_at"))

    op.drop_table("used_tokens")
    op.drop_table("name_policies")
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_certificates_status"))
        batch_op.drop_index(batch_op.f("ix_certificates_not_after"))
        batch_op.drop_index(batch_op.f("ix_certificates_authority_id"))

    op.drop_table("certificates")
    op.drop_table("provisioners")
    with op.batch_alter_table("inventory_identifiers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inventory_identifiers_record_id"))

    op.drop_table("inventory_identifiers")
    op.drop_table("templates")
    op.drop_table("inventory_records")
