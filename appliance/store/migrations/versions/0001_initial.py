"""Initial schema: token keys, authorities, the audit log and its checkpoints.

Audit tables get triggers that refuse UPDATE and DELETE: the hash chain detects
tampering, the triggers make it take deliberate effort (dropping them) first.

Revision ID: 0001
Revises:
Create Date: 2026-11-26 18:34:12.023671
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


_SQLITE_TRIGGERS = [
    f"CREATE TRIGGER {t}_no_{op_} BEFORE {op_.upper()} ON {t} "
    f"BEGIN SELECT RAISE(ABORT, '{t} is append-only'); END"
    for t in ("audit_events", "audit_checkpoints")
    for op_ in ("update", "delete")
]
_PG_FUNCTION = (
    "CREATE OR REPLACE FUNCTION appliance_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END$$"
)
_PG_TRIGGERS = [
    f"CREATE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE ON {t} "
    "FOR EACH ROW EXECUTE FUNCTION appliance_append_only()"
    for t in ("audit_events", "audit_checkpoints")
]


def _append_only() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for stmt in _SQLITE_TRIGGERS:
            op.execute(stmt)
    elif dialect == "postgresql":
        op.execute(_PG_FUNCTION)
        for stmt in _PG_TRIGGERS:
            op.execute(stmt)


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("time", sa.String(length=40), nullable=False),
        sa.Column("key_label", sa.String(length=64), nullable=False),
        sa.Column("spki_sha256", sa.String(length=64), nullable=False),
        sa.Column("algorithm", sa.String(length=32), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_checkpoints")),
        sa.UniqueConstraint("node_id", "seq", name="uq_audit_checkpoints_node_seq"),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("time", sa.String(length=40), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("role", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=128), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("object_ids", sa.Text(), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
        sa.UniqueConstraint("node_id", "seq", name="uq_audit_events_node_seq"),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_audit_events_event_type"), ["event_type"], unique=False
        )

    op.create_table(
        "audit_heads",
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("node_id", name=op.f("pk_audit_heads")),
    )
    op.create_table(
        "hsm_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("ck_id", sa.String(length=128), nullable=False),
        sa.Column("key_type", sa.String(length=16), nullable=False),
        sa.Column("spki_sha256", sa.String(length=64), nullable=False),
        sa.Column("spki_der", sa.LargeBinary(), nullable=False),
        sa.Column("token_label", sa.String(length=32), nullable=False),
        sa.Column("token_serial", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hsm_keys")),
        sa.UniqueConstraint("label", name=op.f("uq_hsm_keys_label")),
    )
    op.create_table(
        "authorities",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("certificate_der", sa.LargeBinary(), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(length=64), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"], ["hsm_keys.id"], name=op.f("fk_authorities_key_id_hsm_keys")
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["authorities.id"], name=op.f("fk_authorities_parent_id_authorities")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_authorities")),
        sa.UniqueConstraint("fingerprint_sha256", name=op.f("uq_authorities_fingerprint_sha256")),
        sa.UniqueConstraint("name", name=op.f("uq_authorities_name")),
    )
    _append_only()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS appliance_append_only() CASCADE")
    op.drop_table("authorities")
    op.drop_table("hsm_keys")
    op.drop_table("audit_heads")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_events_event_type"))

    op.drop_table("audit_events")
    op.drop_table("audit_checkpoints")
