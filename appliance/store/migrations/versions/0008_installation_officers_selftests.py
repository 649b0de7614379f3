"""The installation's fixed facts (its mode), officers with roles, self-test runs.

The FIPS-style mode is chosen once, at init, for every node of the installation: it is
kept in the database (``installation``), not only in each node's file. Crypto officers'
verifiers are kept per installation (``officers``), and each node's self-test runs
(``selftest_runs``) decide whether it may sign.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "installation",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "officers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("verifier", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "selftest_runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("results_json", sa.Text(), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=True),
        sa.Column("ran_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_selftest_runs_node_id", "selftest_runs", ["node_id"])


def downgrade() -> None:
    op.drop_index("ix_selftest_runs_node_id", "selftest_runs")
    op.drop_table("selftest_runs")
    op.drop_table("officers")
    op.drop_table("installation")
