"""Scale-out: the nodes of a cluster and sharded CRLs.

- ``cluster_nodes``: one row per node id, written by the node's heartbeat (what
  ``appliance cluster status`` shows; a schema upgrade is refused while a node that
  heartbeats recently runs an older version).
- ``certificates.crl_shard``: the CRL shard whose URL the certificate's CRL DP names,
  fixed at issuance (``serial mod revocation.crl_shards`` then); NULL for certificates
  that point at the authority's unsharded CRL.
- ``crls.shard``: which shard a CRL covers; NULL for the unsharded CRL. CRL numbers stay
  one strictly increasing sequence per authority, shared by its shards (RFC 5280 asks
  for an increasing number per scope; a shared sequence is that for every shard).

Only columns are added (ALTER TABLE ... ADD COLUMN on SQLite): no watched table is
rebuilt, so the epoch triggers of 0011 stay as they are.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cluster_nodes",
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("schema_revision", sa.String(32), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("api_listen", sa.String(300), nullable=True),
        sa.Column("http_listen", sa.String(300), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat", sa.DateTime(timezone=True), nullable=False),
        sa.Column("token_ok", sa.Boolean(), nullable=True),
        sa.Column("selftests_passed", sa.Boolean(), nullable=True),
        sa.Column("details", sa.Text(), nullable=False, server_default="{}"),
        sa.PrimaryKeyConstraint("node_id", name=op.f("pk_cluster_nodes")),
    )
    op.add_column("certificates", sa.Column("crl_shard", sa.Integer(), nullable=True))
    op.create_index("ix_certificates_authority_status_shard", "certificates",
                    ["authority_id", "status", "crl_shard"])
    op.add_column("crls", sa.Column("shard", sa.Integer(), nullable=True))
    op.create_index("ix_crls_authority_shard_number", "crls", ["authority_id", "shard", "number"])


def downgrade() -> None:
    op.drop_index("ix_crls_authority_shard_number", table_name="crls")
    with op.batch_alter_table("crls") as batch:
        batch.drop_column("shard")
    op.drop_index("ix_certificates_authority_status_shard", table_name="certificates")
    with op.batch_alter_table("certificates") as batch:
        batch.drop_column("crl_shard")
    op.drop_table("cluster_nodes")
