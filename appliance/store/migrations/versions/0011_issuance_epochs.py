"""Issuance epochs: a change counter per kind of issuance state, bumped by the database.

The issuance pipeline caches what it reads on every request (the authority and its token
key, templates, name policies, inventory lookups, provisioner rows) only while these
counters are unchanged (``appliance.store.epochs``). Triggers on the tables it reads bump
the counter of their scope on every insert, update and delete, whoever writes: the ORM,
Core, an operator's SQL console, another node. The certificates, audit and token tables
have none (they change on every request and the pipeline caches nothing of them).

SQLite: row triggers (``AFTER INSERT/UPDATE/DELETE ... FOR EACH ROW``); PostgreSQL: one
statement trigger per table (also on ``TRUNCATE``) calling ``bump_issuance_epoch(scope)``.

A later migration that rebuilds one of these tables on SQLite (``batch_alter_table``
copies it into a new table) drops its triggers and must create them again
(``create_triggers``); the migration tests check every watched table has them at head.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# table -> the scope whose counter it bumps (appliance.store.epochs.SCOPES: the same list)
WATCHED = {
    "authorities": "authority",
    "hsm_keys": "authority",
    "provisioners": "provisioner",
    "templates": "template",
    "name_policies": "policy",
    "inventory_records": "inventory",
    "inventory_identifiers": "inventory",
}
SCOPES = ("authority", "provisioner", "template", "policy", "inventory")
_EVENTS = ("insert", "update", "delete")


def create_triggers(table: str, scope: str) -> None:
    """The triggers of one watched table (also for later migrations that rebuild it)."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"CREATE TRIGGER epoch_{table} AFTER INSERT OR UPDATE OR DELETE OR "
                   f"TRUNCATE ON {table} FOR EACH STATEMENT "
                   f"EXECUTE FUNCTION bump_issuance_epoch('{scope}')")
        return
    for event in _EVENTS:  # names from the constants above, never from input
        op.execute(f"CREATE TRIGGER epoch_{table}_{event} AFTER {event.upper()} ON {table} "  # noqa: S608
                   f"FOR EACH ROW BEGIN UPDATE issuance_epochs SET value = value + 1 "
                   f"WHERE scope = '{scope}'; END")


def drop_triggers(table: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS epoch_{table} ON {table}")
        return
    for event in _EVENTS:
        op.execute(f"DROP TRIGGER IF EXISTS epoch_{table}_{event}")


def upgrade() -> None:
    epochs = op.create_table(
        "issuance_epochs",
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("scope", name=op.f("pk_issuance_epochs")),
    )
    op.bulk_insert(epochs, [{"scope": s, "value": 1} for s in SCOPES])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("""
            CREATE FUNCTION bump_issuance_epoch() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE issuance_epochs SET value = value + 1 WHERE scope = TG_ARGV[0];
                RETURN NULL;
            END $$""")
    for table, scope in WATCHED.items():
        create_triggers(table, scope)


def downgrade() -> None:
    for table in WATCHED:
        drop_triggers(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS bump_issuance_epoch()")
    op.drop_table("issuance_epochs")
