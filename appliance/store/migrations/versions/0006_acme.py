"""ACME: accounts, External Account Binding keys, orders, authorizations, challenges,
redeemed nonces and the shared nonce MAC key.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "acme_secrets",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_acme_secrets")),
    )
    op.create_table(
        "acme_used_nonces",
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("nonce", name=op.f("pk_acme_used_nonces")),
    )
    op.create_index(op.f("ix_acme_used_nonces_expires_at"), "acme_used_nonces", ["expires_at"])
    op.create_table(
        "acme_eab_keys",
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("provisioner_id", sa.Integer(), nullable=False),
        sa.Column("reference", sa.String(128), nullable=False),
        sa.Column("hmac_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("policy", sa.Text(), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("bound_at", TZ, nullable=True),
        sa.Column("account_id", sa.String(32), nullable=True),
        sa.Column("revoked_at", TZ, nullable=True),
        sa.ForeignKeyConstraint(["provisioner_id"], ["provisioners.id"], ondelete="CASCADE",
                                name=op.f("fk_acme_eab_keys_provisioner_id_provisioners")),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_acme_eab_keys")),
    )
    op.create_index(op.f("ix_acme_eab_keys_provisioner_id"), "acme_eab_keys",
                    ["provisioner_id"])
    op.create_table(
        "acme_accounts",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("provisioner_id", sa.Integer(), nullable=False),
        sa.Column("thumbprint", sa.String(64), nullable=False),
        sa.Column("jwk", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("contact", sa.Text(), nullable=False),
        sa.Column("eab_key_id", sa.String(64), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.ForeignKeyConstraint(["provisioner_id"], ["provisioners.id"], ondelete="CASCADE",
                                name=op.f("fk_acme_accounts_provisioner_id_provisioners")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acme_accounts")),
        sa.UniqueConstraint("provisioner_id", "thumbprint", name="uq_acme_accounts_key"),
    )
    op.create_index(op.f("ix_acme_accounts_provisioner_id"), "acme_accounts",
                    ["provisioner_id"])
    op.create_table(
        "acme_orders",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("identifiers", sa.Text(), nullable=False),
        sa.Column("not_before", TZ, nullable=True),
        sa.Column("not_after", TZ, nullable=True),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("certificate_serial", sa.String(42), nullable=True),
        sa.Column("replaces", sa.String(256), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["acme_accounts.id"], ondelete="CASCADE",
                                name=op.f("fk_acme_orders_account_id_acme_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acme_orders")),
    )
    op.create_index(op.f("ix_acme_orders_account_id"), "acme_orders", ["account_id"])
    op.create_table(
        "acme_authorizations",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("order_id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("identifier_type", sa.String(8), nullable=False),
        sa.Column("identifier_value", sa.String(256), nullable=False),
        sa.Column("wildcard", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["acme_orders.id"], ondelete="CASCADE",
                                name=op.f("fk_acme_authorizations_order_id_acme_orders")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acme_authorizations")),
    )
    op.create_index(op.f("ix_acme_authorizations_order_id"), "acme_authorizations",
                    ["order_id"])
    op.create_index(op.f("ix_acme_authorizations_account_id"), "acme_authorizations",
                    ["account_id"])
    op.create_table(
        "acme_challenges",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("authorization_id", sa.String(32), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("validated_at", TZ, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["authorization_id"], ["acme_authorizations.id"], ondelete="CASCADE",
            name=op.f("fk_acme_challenges_authorization_id_acme_authorizations")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_acme_challenges")),
    )
    op.create_index(op.f("ix_acme_challenges_authorization_id"), "acme_challenges",
                    ["authorization_id"])


def downgrade() -> None:
    for table in ("acme_challenges", "acme_authorizations", "acme_orders", "acme_accounts",
                  "acme_eab_keys", "acme_used_nonces", "acme_secrets"):
        op.drop_table(table)
