"""The CA's check of RA paths (``ra.children`` and ``ra.path``) with real token keys, real
hop assertions and the registry in a real database (SQLite and PostgreSQL).

The RAs' credential keys are made in the test token and sign the assertions there; their
credential certificates are stored as the CA stores what it issued (``certificates``), so
revoking one, disabling an RA, or registering it under another parent is the same row
change the CA's commands make.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select, update

from appliance.config import ApplianceConfig, DatabaseConfig, Settings
from appliance.hsm import keys
from appliance.hsm.pool import SessionPool
from appliance.hsm.signer import TokenECPrivateKey, token_private_key
from appliance.provisioners.settings import ProvisionerSettings
from appliance.ra import assertion, children
from appliance.ra import registry as reg
from appliance.ra.assertion import Hop
from appliance.ra.errors import HopAssertionError
from appliance.ra.path import verify_path
from appliance.runtime import Appliance
from appliance.store import migrate
from appliance.store.models import AuditEvent, Authority, Certificate, Provisioner
from tests.conftest import unique_label

NAMES = ("app.example.com", "www.example.com")
SUBJECT = assertion.digest(b"the CSR's DER")


@pytest.fixture(scope="module")
def token_keys(pool: SessionPool) -> dict[str, TokenECPrivateKey]:
    out = {}
    for name in ("edge-1", "edge-2", "edge-3", "edge-4"):
        key = token_private_key(pool, keys.generate_keypair(pool, unique_label("ra"), "ec-p256"))
        assert isinstance(key, TokenECPrivateKey)
        out[name] = key
    return out


@dataclass
class Ca:
    app: Appliance
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    token_keys: dict[str, TokenECPrivateKey]
    creds: dict[str, x509.Certificate]

    def register(self, name: str, parent: str | None = None) -> x509.Certificate:
        """As the CA registers an RA: its credential stored as issued, its row recorded."""
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(self.cert.subject)
                .public_key(self.token_keys[name].public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=1))
                .not_valid_after(now + dt.timedelta(hours=72)).sign(self.key, hashes.SHA256()))
        with self.app.db.transaction() as db:
            db.add(Certificate(serial_hex=f"{cert.serial_number:x}", authority_id=1,
                               provisioner_name=name, requester="test", template="ra-credential",
                               status="issued", der=cert.public_bytes(serialization.Encoding.DER),
                               not_after=cert.not_valid_after_utc, reserved_at=now))
            reg.record(db, name, cert, authority_id=1,
                       settings=ProvisionerSettings(ra_parent=parent))
        self.creds[name] = cert
        return cert

    def hop(self, name: str, below: str | None = None, op: assertion.Op = "sign",
            **kw: object) -> str:
        fields: dict[str, object] = dict(
            iss=name, op=op, subject_sha256=SUBJECT, requester="admin:alice@example.com",
            provisioner={"name": "admin", "type": "jwk"} if below is None
            else {"name": "child", "type": "ra"},
            names=NAMES, below=below)
        fields.update(kw)
        return assertion.make(self.token_keys[name], self.creds[name],
                              Hop(**fields))  # type: ignore[arg-type]

    def peer(self, name: str) -> bytes:
        return self.creds[name].public_bytes(serialization.Encoding.DER)

    def set(self, name: str, **settings: object) -> None:
        with self.app.db.transaction() as db:
            row = db.scalars(select(Provisioner).where(Provisioner.name == name)).one()
            current = ProvisionerSettings.model_validate_json(row.config).model_dump()
            row.config = ProvisionerSettings.model_validate(
                {**current, **settings}).model_dump_json()

    def revoke(self, name: str) -> None:
        with self.app.db.transaction() as db:
            db.execute(update(Certificate).where(
                Certificate.serial_hex == f"{self.creds[name].serial_number:x}")
                .values(status="revoked"))

    def denied(self) -> list[dict[str, object]]:
        with self.app.db.sessions() as db:
            rows = db.scalars(select(AuditEvent).where(
                AuditEvent.event_type == "auth.failed")).all()
            return [json.loads(r.details) for r in rows]


@pytest.fixture
def ca(db_url: str, tmp_path: Path, token_keys: dict[str, TokenECPrivateKey]
       ) -> Iterator[Ca]:
    app = Appliance(Settings(ApplianceConfig(database=DatabaseConfig(url=db_url)), tmp_path))
    migrate.upgrade(app.db)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    with app.db.transaction() as db:
        db.add(Authority(id=1, name="issuing", kind="intermediate", subject="CN=Test CA",
                         certificate_der=der, fingerprint_sha256="0" * 64,
                         not_before=now, not_after=now + dt.timedelta(days=30), created_at=now))
    try:
        yield Ca(app, key, cert, token_keys, {})
    finally:
        app.close()


def _path(ca: Ca, peer: str, token: str, op: str = "sign", subject: str = SUBJECT) -> list[str]:
    child = children.authenticate_child(ca.app, ca.peer(peer), token, op, subject)
    return verify_path(ca.app, child).names


def test_a_direct_ra(ca: Ca) -> None:
    ca.register("edge-3")
    assert _path(ca, "edge-3", ca.hop("edge-3")) == ["edge-3"]
    with ca.app.db.sessions() as db:  # the call is the RA's last contact
        entry = reg.by_name(db, "edge-3")
        assert entry is not None and reg.last_contacts(db)[entry.id][1] == "sign"


def test_a_chain_two_deep_names_every_hop_bottom_first(ca: Ca) -> None:
    ca.register("edge-1")
    ca.register("edge-2", parent="edge-1")
    token = ca.hop("edge-1", below=ca.hop("edge-2"))
    child = children.authenticate_child(ca.app, ca.peer("edge-1"), token, "sign", SUBJECT)
    path = verify_path(ca.app, child)
    assert path.names == ["edge-2", "edge-1"] and path.arrow() == "edge-2 → edge-1"
    assert path.bottom.requester == "admin:alice@example.com"
    assert path.direct.name == "edge-1"


def test_a_child_registered_under_another_parent_is_refused(ca: Ca) -> None:
    ca.register("edge-1")
    ca.register("edge-3")
    ca.register("edge-4", parent="edge-3")
    with pytest.raises(reg.RaRefused, match="edge-4 is registered under RA edge-3, not "
                                            "under RA edge-1"):
        _path(ca, "edge-1", ca.hop("edge-1", below=ca.hop("edge-4")))
    # ...nor may a registered grandchild skip its parent and come straight to the CA.
    with pytest.raises(reg.RaRefused, match="must come through it"):
        _path(ca, "edge-4", ca.hop("edge-4"))


def test_a_disabled_parent_cuts_its_children(ca: Ca) -> None:
    ca.register("edge-1")
    ca.register("edge-2", parent="edge-1")
    token = ca.hop("edge-1", below=ca.hop("edge-2"))
    ca.set("edge-1", disabled=True)
    with pytest.raises(reg.RaRefused, match="RA edge-1 is disabled"):
        _path(ca, "edge-1", token)
    with ca.app.db.sessions() as db:
        edge2 = reg.by_name(db, "edge-2")
        assert edge2 is not None
        with pytest.raises(reg.RaRefused, match="edge-2 is cut off: RA edge-1 above it"):
            reg.require_enabled(db, edge2)
        assert reg.state(db, edge2) == "cut off (RA edge-1 above it is disabled)" and reg.state(
            db, reg.by_name(db, "edge-1")) == "disabled"  # type: ignore[arg-type]
    assert any("edge-1 is disabled" in str(d["reason"]) for d in ca.denied())
    # Enabled again, the parent passes, but a disabled child below it is refused.
    ca.set("edge-1", disabled=False)
    ca.set("edge-2", disabled=True)
    with pytest.raises(reg.RaRefused, match="RA edge-2 is disabled"):
        _path(ca, "edge-1", ca.hop("edge-1", below=ca.hop("edge-2")))


def test_a_revoked_credential_is_refused_for_it_and_below(ca: Ca) -> None:
    ca.register("edge-1")
    ca.register("edge-2", parent="edge-1")
    ca.revoke("edge-2")
    with pytest.raises(reg.RaRefused, match="RA edge-2's credential is revoked"):
        _path(ca, "edge-1", ca.hop("edge-1", below=ca.hop("edge-2")))
    assert _path(ca, "edge-1", ca.hop("edge-1")) == ["edge-1"]  # edge-1's own requests pass
    ca.revoke("edge-1")
    with pytest.raises(reg.RaRefused, match="edge-1's credential certificate is revoked"):
        _path(ca, "edge-1", ca.hop("edge-1"))


def test_the_subject_digest_must_be_the_request_sent(ca: Ca) -> None:
    ca.register("edge-1")
    ca.register("edge-2", parent="edge-1")
    with pytest.raises(HopAssertionError, match="another sign subject"):
        _path(ca, "edge-1", ca.hop("edge-1"), subject=assertion.digest(b"another CSR"))
    # A middle hop that swaps the CSR: the lower assertion is for the original one.
    token = ca.hop("edge-1", below=ca.hop("edge-2", subject_sha256=assertion.digest(b"x")))
    with pytest.raises(HopAssertionError, match="another sign subject"):
        _path(ca, "edge-1", token)


def test_the_operation_must_match_at_every_hop(ca: Ca) -> None:
    ca.register("edge-1")
    ca.register("edge-2", parent="edge-1")
    with pytest.raises(HopAssertionError, match="is for 'sign', not 'renew'"):
        _path(ca, "edge-1", ca.hop("edge-1"), op="renew")
    token = ca.hop("edge-1", op="renew", below=ca.hop("edge-2", op="sign"))
    with pytest.raises(HopAssertionError, match="is for 'sign', not 'renew'"):
        _path(ca, "edge-1", token, op="renew")


def test_names_changed_on_the_way_are_refused(ca: Ca) -> None:
    ca.register("edge-1")
    ca.register("edge-2", parent="edge-1")
    token = ca.hop("edge-1", names=("evil.example.com",), below=ca.hop("edge-2"))
    with pytest.raises(HopAssertionError, match="other names"):
        _path(ca, "edge-1", token)


def test_the_peer_must_be_the_registered_ra_that_signed(ca: Ca) -> None:
    ca.register("edge-1")
    ca.register("edge-3")
    # edge-1's certificate with edge-3's assertion: the assertion is not the peer's.
    with pytest.raises(HopAssertionError, match="client certificate is RA edge-1's"):
        _path(ca, "edge-1", ca.hop("edge-3"))
    # A certificate of no registered RA, or none at all.
    stranger = ca.creds["edge-1"].public_bytes(serialization.Encoding.DER)
    with ca.app.db.transaction() as db:
        db.execute(update(Provisioner).where(Provisioner.name == "edge-1")
                   .values(credential="{}"))
    with pytest.raises(reg.RaUnknown, match="not the credential of a registered RA"):
        children.authenticate_child(ca.app, stranger, ca.hop("edge-1"), "sign", SUBJECT)
    with pytest.raises(reg.RaUnknown, match="mutual TLS"):
        children.authenticate_child(ca.app, None, ca.hop("edge-3"), "sign", SUBJECT)
    # A hop below that is not registered at all.
    ca.register("edge-2", parent="edge-3")
    with ca.app.db.transaction() as db:
        db.execute(update(Provisioner).where(Provisioner.name == "edge-2")
                   .values(name="edge-2-renamed"))
    with pytest.raises(reg.RaRefused, match=r"RA edge-2 \(below edge-3\) is not registered"):
        _path(ca, "edge-3", ca.hop("edge-3", below=ca.hop("edge-2")))
