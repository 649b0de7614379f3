"""Typed models. Each role adds its tables here (or in a module imported here)
and a migration under ``migrations/versions``; every table hangs off ``Base``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class HsmKey(Base):
    """A key pair the appliance generated or adopted in its token (public facts only)."""

    __tablename__ = "hsm_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str] = mapped_column(String(64), unique=True)
    ck_id: Mapped[str] = mapped_column(String(128))
    key_type: Mapped[str] = mapped_column(String(16))
    spki_sha256: Mapped[str] = mapped_column(String(64))
    spki_der: Mapped[bytes] = mapped_column(LargeBinary)
    token_label: Mapped[str] = mapped_column(String(32))
    token_serial: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Authority(Base):
    """A CA the appliance can sign with: its certificate and the token key behind it."""

    __tablename__ = "authorities"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # "root", "intermediate" (issuing or policy CA), "cross" (a cross-certificate for an
    # existing CA key), "ocsp" (delegated OCSP responder), "external-root" (an outside root
    # that signed an imported intermediate; no key of ours).
    kind: Mapped[str] = mapped_column(String(16), default="intermediate")
    key_id: Mapped[int | None] = mapped_column(ForeignKey("hsm_keys.id"), nullable=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("authorities.id"), nullable=True)
    subject: Mapped[str] = mapped_column(Text)
    certificate_der: Mapped[bytes] = mapped_column(LargeBinary)
    fingerprint_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    not_before: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    not_after: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="active")
    serial_hex: Mapped[str] = mapped_column(String(42), default="")
    ceremony: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Crl(Base):
    """Every CRL an authority signed; ``number`` strictly increases per authority."""

    __tablename__ = "crls"
    __table_args__ = (UniqueConstraint("authority_id", "number", name="uq_crls_authority_number"),
                      Index("ix_crls_authority_shard_number", "authority_id", "shard", "number"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"))
    number: Mapped[int] = mapped_column(BigInteger)
    this_update: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_update: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    entries: Mapped[int] = mapped_column(Integer)
    der: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The shard it covers (``revocation.crl_shards``), NULL for the unsharded CRL (0012).
    shard: Mapped[int | None] = mapped_column(Integer, nullable=True)


class AuditEvent(Base):
    """One record of the hash-chained audit log. Rows are only ever inserted."""

    __tablename__ = "audit_events"
    __table_args__ = (UniqueConstraint("node_id", "seq", name="uq_audit_events_node_seq"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    time: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(128), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    object_ids: Mapped[str] = mapped_column(Text)
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The newest record of each node's chain; the row writers lock to append in order."""

    __tablename__ = "audit_heads"

    node_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """A signature by the audit key over (node, sequence, head hash)."""

    __tablename__ = "audit_checkpoints"
    __table_args__ = (UniqueConstraint("node_id", "seq", name="uq_audit_checkpoints_node_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))
    time: Mapped[str] = mapped_column(String(40))
    key_label: Mapped[str] = mapped_column(String(64))
    spki_sha256: Mapped[str] = mapped_column(String(64))
    algorithm: Mapped[str] = mapped_column(String(32))
    signature: Mapped[bytes] = mapped_column(LargeBinary)


class Provisioner(Base):
    """Who may ask for certificates, how they authenticate, and their claims."""

    __tablename__ = "provisioners"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    type: Mapped[str] = mapped_column(String(16))
    # Claims and options as JSON (durations in seconds, template, policy flags...).
    config: Mapped[str] = mapped_column(Text)
    # Public credential only: a JWK (jwk) or trusted root PEMs (x5c). Never a private key.
    credential: Mapped[str] = mapped_column(Text)
    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class NamePolicy(Base):
    """A name policy of the authority (provisioner_id NULL) or of one provisioner."""

    __tablename__ = "name_policies"
    __table_args__ = (UniqueConstraint("level", "provisioner_id", name="uq_name_policies_level"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    level: Mapped[str] = mapped_column(String(16))
    provisioner_id: Mapped[int | None] = mapped_column(
        ForeignKey("provisioners.id", ondelete="CASCADE"), nullable=True)
    source: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Template(Base):
    __tablename__ = "templates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    source: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class InventoryRecord(Base):
    """A host, service, person or device, with the names that belong to it."""

    __tablename__ = "inventory_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    owner: Mapped[str] = mapped_column(String(256))
    metadata_json: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class InventoryIdentifier(Base):
    __tablename__ = "inventory_identifiers"
    __table_args__ = (UniqueConstraint("type", "value", name="uq_inventory_identifiers_value"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_id: Mapped[int] = mapped_column(
        ForeignKey("inventory_records.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(8))
    value: Mapped[str] = mapped_column(String(512))


class Certificate(Base):
    """Every certificate the CA issues. The row (and its serial) exists before signing."""

    __tablename__ = "certificates"
    __table_args__ = (Index("ix_certificates_authority_status", "authority_id", "status"),
                      Index("ix_certificates_authority_status_shard", "authority_id", "status",
                            "crl_shard"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    serial_hex: Mapped[str] = mapped_column(String(42), unique=True)
    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"), index=True)
    provisioner_id: Mapped[int | None] = mapped_column(
        ForeignKey("provisioners.id", ondelete="SET NULL"), nullable=True)
    provisioner_name: Mapped[str] = mapped_column(String(64))
    requester: Mapped[str] = mapped_column(String(256))
    template: Mapped[str] = mapped_column(String(64))
    inventory_record_id: Mapped[int | None] = mapped_column(
        ForeignKey("inventory_records.id", ondelete="SET NULL"), nullable=True)
    # "reserved" -> "issued" (or "failed"); later "revoked".
    status: Mapped[str] = mapped_column(String(16), index=True)
    subject: Mapped[str] = mapped_column(Text, default="")
    sans: Mapped[str] = mapped_column(Text, default="[]")
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    not_after: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, index=True)
    der: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    fingerprint_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    renewed_from: Mapped[str | None] = mapped_column(String(42), nullable=True)
    # What the template saw besides the names (token claims, template data), so a renewal
    # re-renders the provisioner's current template from the same inputs.
    request_context: Mapped[str] = mapped_column(Text, default="{}")
    reserved_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    issued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revocation_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # The registration authorities it came through, bottom hop first (JSON list of names),
    # or NULL when asked for at this node directly (migration 0009).
    ra_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The CRL shard its CRL DP names (serial mod revocation.crl_shards at issuance), NULL
    # when it names the authority's unsharded CRL (migration 0012).
    crl_shard: Mapped[int | None] = mapped_column(Integer, nullable=True)


class RaContact(Base):
    """When a registered RA (a provisioner of type ``ra``) last called, and for what.

    Kept apart from the provisioner row: written at most every few seconds by the RA's
    requests, it never rewrites (or races with an operator's change of) its settings."""

    __tablename__ = "ra_contacts"

    provisioner_id: Mapped[int] = mapped_column(
        ForeignKey("provisioners.id", ondelete="CASCADE"), primary_key=True)
    last_contact_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_op: Mapped[str] = mapped_column(String(32))


class UsedToken(Base):
    """One-time token ids already spent; the primary key makes a replay fail in any worker."""

    __tablename__ = "used_tokens"

    jti: Mapped[str] = mapped_column(String(256), primary_key=True)
    provisioner_id: Mapped[int] = mapped_column(
        ForeignKey("provisioners.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    used_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class OcspResponse(Base):
    """The pre-signed OCSP response for one certificate: the truth the caches serve from.

    One row per certificate (replaced on every re-signing); ``status`` mirrors the
    certificate's at signing time, so a responder can refuse a cached answer that no
    longer matches ``certificates.status``.
    """

    __tablename__ = "ocsp_responses"

    certificate_id: Mapped[int] = mapped_column(
        ForeignKey("certificates.id", ondelete="CASCADE"), primary_key=True)
    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"), index=True)
    serial_hex: Mapped[str] = mapped_column(String(42), index=True)
    status: Mapped[str] = mapped_column(String(16))
    der: Mapped[bytes] = mapped_column(LargeBinary)  # CertID hashed with SHA-1 (the norm)
    # The same answer for a CertID hashed with SHA-256 (a client matches the hash algorithm).
    der_sha256: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    this_update: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_update: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    produced_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AcmeSecret(Base):
    """Process-independent secrets of the ACME server (the nonce MAC key), shared by every
    worker and node through the database."""

    __tablename__ = "acme_secrets"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)


class AcmeUsedNonce(Base):
    """Nonces already redeemed: the primary key makes a replay fail in any worker or node."""

    __tablename__ = "acme_used_nonces"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class AcmeEabKey(Base):
    """An External Account Binding key: the operator-made identity an ACME account binds to.

    The HMAC key is stored encrypted (AES-256-GCM under the data directory's EAB wrapping
    key), never in the clear; ``policy`` is the name policy of every account bound to it.
    """

    __tablename__ = "acme_eab_keys"

    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    provisioner_id: Mapped[int] = mapped_column(
        ForeignKey("provisioners.id", ondelete="CASCADE"), index=True)
    reference: Mapped[str] = mapped_column(String(128))
    hmac_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    policy: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    bound_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    account_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AcmeAccount(Base):
    __tablename__ = "acme_accounts"
    __table_args__ = (UniqueConstraint("provisioner_id", "thumbprint",
                                       name="uq_acme_accounts_key"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    provisioner_id: Mapped[int] = mapped_column(
        ForeignKey("provisioners.id", ondelete="CASCADE"), index=True)
    # SHA-256 JWK thumbprint (RFC 7638), base64url: one account per key per provisioner.
    thumbprint: Mapped[str] = mapped_column(String(64))
    jwk: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # valid | deactivated | revoked
    contact: Mapped[str] = mapped_column(Text, default="[]")
    eab_key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AcmeOrder(Base):
    __tablename__ = "acme_orders"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(
        ForeignKey("acme_accounts.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16))  # pending|ready|processing|valid|invalid
    identifiers: Mapped[str] = mapped_column(Text)  # JSON [{"type","value"}]
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    not_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    certificate_serial: Mapped[str | None] = mapped_column(String(42), nullable=True)
    replaces: Mapped[str | None] = mapped_column(String(256), nullable=True)  # ARI certID
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AcmeAuthorization(Base):
    __tablename__ = "acme_authorizations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    order_id: Mapped[str] = mapped_column(
        ForeignKey("acme_orders.id", ondelete="CASCADE"), index=True)
    account_id: Mapped[str] = mapped_column(String(32), index=True)
    identifier_type: Mapped[str] = mapped_column(String(8))
    identifier_value: Mapped[str] = mapped_column(String(256))
    wildcard: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16))  # pending|valid|invalid|deactivated|...
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AcmeChallenge(Base):
    __tablename__ = "acme_challenges"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    authorization_id: Mapped[str] = mapped_column(
        ForeignKey("acme_authorizations.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(16))
    token: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # pending|processing|valid|invalid
    validated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # When the running validation attempt started (status "processing"); see migration 0007.
    processing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                              nullable=True)


class Installation(Base):
    """Facts fixed when the installation was made, the same for every node: one row per key.

    ``mode`` ("default" or "fips") is written once by ``appliance init``; a node whose
    configuration says otherwise refuses to start (appliance.fips.mode)."""

    __tablename__ = "installation"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Officer(Base):
    """A person with a role on this installation and the scrypt verifier of their secret
    (never the secret). Crypto officers meet quorums for key generation, ceremonies,
    zeroization and sealing; operators and auditors are named for the audit log."""

    __tablename__ = "officers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # crypto-officer, operator, auditor
    verifier: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16), default="active")  # active, removed
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SelfTestRun(Base):
    """One run of the FIPS-style power-on (or on-demand) self-tests on one node.

    The newest row of a node is that node's state: a failed run puts it in the error state
    until a later run passes (appliance.fips)."""

    __tablename__ = "selftest_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[str] = mapped_column(String(64), index=True)
    trigger: Mapped[str] = mapped_column(String(32))  # power-on, on-demand
    passed: Mapped[bool] = mapped_column(Boolean)
    results_json: Mapped[str] = mapped_column(Text)  # [{"name", "ok", "detail"}, ...]
    manifest_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    ran_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RaPendingOrder(Base):
    """An ACME order an RA node could not forward yet: its CSR, kept until the node's
    retrier ends the order (valid or invalid); the order stays ``processing`` meanwhile."""

    __tablename__ = "ra_pending_orders"

    order_id: Mapped[str] = mapped_column(
        ForeignKey("acme_orders.id", ondelete="CASCADE"), primary_key=True)
    csr_der: Mapped[bytes] = mapped_column(LargeBinary)
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class IssuanceEpoch(Base):
    """A change counter per kind of issuance state (migration 0011): bumped by database
    triggers on every write to the tables of its scope, whoever writes. The pipeline's
    per-process caches hold only while it is unchanged (``appliance.store.epochs``)."""

    __tablename__ = "issuance_epochs"

    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class ClusterNode(Base):
    """A node of the cluster as its own heartbeat last wrote it (migration 0012)."""

    __tablename__ = "cluster_nodes"

    node_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(32))
    schema_revision: Mapped[str] = mapped_column(String(32))
    role: Mapped[str] = mapped_column(String(16))
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    api_listen: Mapped[str | None] = mapped_column(String(300), nullable=True)
    http_listen: Mapped[str | None] = mapped_column(String(300), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_heartbeat: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    token_ok: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    selftests_passed: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    details: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
