"""OCSP responses with a SHA-256 CertID beside the SHA-1 one.

A client matches the response's CertID to its request's, hash algorithm included
(OpenSSL: "No Status found" otherwise), and RFC 5019 allows one SingleResponse per
response: so a certificate has two pre-signed responses, one per CertID hash.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ocsp_responses") as batch:
        batch.add_column(sa.Column("der_sha256", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ocsp_responses") as batch:
        batch.drop_column("der_sha256")
