"""Renewal (mTLS and signed-token flows, after expiry, grace, refusals) and x5c provisioners,
over real HTTPS against ``appliance serve`` on a real SoftHSM token."""

from __future__ import annotations

import base64
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.provisioners.settings import sign_audience
from tests.conftest import run_cli
from tests.service_helpers import Server, serving


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("renew") / "data"
    run_cli("quickstart", "--dir", str(d), check=True)
    for args in (
        ["short", "--type", "jwk", "--min-duration", "1s", "--max-duration", "1h",
         "--default-duration", "3s", "--allow-renewal-after-expiry"],
        ["graced", "--type", "jwk", "--min-duration", "1s", "--default-duration", "2s",
         "--allow-renewal-after-expiry", "--renewal-grace", "2s"],
        ["strict", "--type", "jwk", "--min-duration", "1s", "--default-duration", "3s"],
        ["norenew", "--type", "jwk", "--disable-renewal"],
        ["doomed", "--type", "jwk"],
        ["moving", "--type", "jwk"],
    ):
        run_cli("--dir", str(d), "provisioner", "add", *args, "--generate-password",
                check=True)
    with serving(d) as s:
        yield s


class Holder:
    """A service holding a key and the certificate the CA issued for it."""

    def __init__(self, server: Server, tmp: Path, provisioner: str, name: str,
                 lifetime: int | None = None) -> None:
        self.server = server
        self.key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
               .sign(self.key, hashes.SHA256()))
        resp = server.sign(csr.public_bytes(serialization.Encoding.PEM).decode(),
                           server.token(name, provisioner=provisioner, cert_lifetime=lifetime))
        assert resp.status_code == 201, resp.text
        self.data = resp.json()
        self.cert = x509.load_pem_x509_certificate(self.data["crt"].encode())
        stem = tmp / f"{name}-{secrets.token_hex(3)}"
        self.cert_path, self.key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
        self.cert_path.write_text("".join(self.data["certChain"][:-1]))
        self.key_path.write_bytes(self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))

    def renew_cli(self, *extra: str) -> tuple[int, str, x509.Certificate | None]:
        out = self.cert_path.with_suffix(".new.crt")
        proc = run_cli("renew", str(self.cert_path), str(self.key_path), "--ca-url",
                       self.server.api, "--root", str(self.server.roots), "--out", str(out),
                       *extra)
        new = x509.load_pem_x509_certificates(out.read_bytes())[0] if out.exists() else None
        return proc.returncode, proc.stdout + proc.stderr, new

    def renew_token(self, audience: str | None = None, jti: str | None = None) -> str:
        url = audience or sign_audience("127.0.0.1", f"127.0.0.1:{self.server.api_port}",
                                        "/1.0/renew")
        t = int(time.time())
        return jwt.encode({"aud": url, "iat": t, "nbf": t, "exp": t + 120,
                           "jti": jti or secrets.token_urlsafe(16)}, self.key, algorithm="ES256",
                          headers={"x5c": [base64.b64encode(self.cert.public_bytes(
                              serialization.Encoding.DER)).decode()]})


def _renewed_events(server: Server, serial: str) -> list[dict[str, object]]:
    return [e for e in server.events("certificate.renewed")
            if e["details"]["renewal_of"] == serial]  # type: ignore[index]


def test_renew_by_mtls_keeps_key_names_and_lifetime(server: Server, tmp_path: Path) -> None:
    h = Holder(server, tmp_path, "admin", "mtls.example.com")
    rc, out, new = h.renew_cli()
    assert rc == 0, out
    assert "(mTLS)" in out and new is not None
    assert new.serial_number != h.cert.serial_number
    assert new.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo) == \
        h.cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    assert new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == \
        h.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    old_life = h.cert.not_valid_after_utc - h.cert.not_valid_before_utc
    new_life = new.not_valid_after_utc - new.not_valid_before_utc
    # The same lifetime from issuance (notBefore backdating of up to 60 s may differ).
    assert abs((old_life - new_life).total_seconds()) <= 62
    assert abs((new.not_valid_after_utc - h.cert.not_valid_after_utc).total_seconds()
               - (time.time() - h.cert.not_valid_before_utc.timestamp())) < 120
    (event,) = _renewed_events(server, f"{h.cert.serial_number:x}")
    assert event["details"]["renewed_after_expiry"] is False  # type: ignore[index]


def test_renewal_after_expiry_is_a_per_provisioner_setting(server: Server,
                                                           tmp_path: Path) -> None:
    allowed = Holder(server, tmp_path, "short", "late.example.com")
    refused = Holder(server, tmp_path, "strict", "strict.example.com")
    wait = max(allowed.cert.not_valid_after_utc, refused.cert.not_valid_after_utc)
    time.sleep(max(0.0, wait.timestamp() - time.time()) + 1.5)
    rc, out, new = allowed.renew_cli()
    assert rc == 0, out
    assert "(signed token)" in out and new is not None
    assert new.not_valid_after_utc.timestamp() > time.time()
    (event,) = _renewed_events(server, f"{allowed.cert.serial_number:x}")
    assert event["details"]["renewed_after_expiry"] is True  # type: ignore[index]
    before = server.issued_count()
    rc, out, _ = refused.renew_cli()
    assert rc == 1
    assert "403" in out and "does not allow renewal after expiry" in out
    assert server.issued_count() == before


def test_renewal_past_the_grace_is_refused(server: Server, tmp_path: Path) -> None:
    h = Holder(server, tmp_path, "graced", "graced.example.com")
    time.sleep(max(0.0, h.cert.not_valid_after_utc.timestamp() - time.time()) + 3.5)
    resp = server.post("/1.0/renew", headers={"Authorization": f"Bearer {h.renew_token()}"})
    assert resp.status_code == 403, resp.text
    assert "renewal grace" in resp.json()["message"]


def test_renewal_refusals(server: Server, tmp_path: Path) -> None:
    norenew = Holder(server, tmp_path, "norenew", "norenew.example.com")
    resp = server.post("/1.0/renew",
                       headers={"Authorization": f"Bearer {norenew.renew_token()}"})
    assert resp.status_code == 403 and "does not allow renewal" in resp.json()["message"]

    revoked = Holder(server, tmp_path, "admin", "revoked.example.com")
    conn = sqlite3.connect(server.data_dir / "appliance.db", timeout=30)
    with conn:
        conn.execute("UPDATE certificates SET status = 'revoked' WHERE serial_hex = ?",
                     (f"{revoked.cert.serial_number:x}",))
    conn.close()
    resp = server.post("/1.0/renew",
                       headers={"Authorization": f"Bearer {revoked.renew_token()}"})
    assert resp.status_code == 403 and "revoked" in resp.json()["message"]

    gone = Holder(server, tmp_path, "doomed", "gone.example.com")
    server.cli("provisioner", "remove", "doomed")
    resp = server.post("/1.0/renew", headers={"Authorization": f"Bearer {gone.renew_token()}"})
    assert resp.status_code == 403 and "no longer exists" in resp.json()["message"]


def test_renewal_tokens_are_checked(server: Server, tmp_path: Path) -> None:
    h = Holder(server, tmp_path, "admin", "tok.example.com")
    token = h.renew_token()
    assert server.post("/1.0/renew",
                       headers={"Authorization": f"Bearer {token}"}).status_code == 201
    replay = server.post("/1.0/renew", headers={"Authorization": f"Bearer {token}"})
    assert replay.status_code == 401 and "already used" in replay.json()["message"]
    wrong_aud = h.renew_token(audience="https://elsewhere.example.com/1.0/renew")
    assert server.post("/1.0/renew",
                       headers={"Authorization": f"Bearer {wrong_aud}"}).status_code == 401
    # A certificate this CA never issued (self-signed, same names) cannot renew.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tok.example.com")])
    forged = (x509.CertificateBuilder().subject_name(name).issuer_name(h.cert.issuer)
              .public_key(key.public_key()).serial_number(h.cert.serial_number)
              .not_valid_before(h.cert.not_valid_before_utc)
              .not_valid_after(h.cert.not_valid_after_utc).sign(key, hashes.SHA256()))
    h.key, h.cert = key, forged
    resp = server.post("/1.0/renew", headers={"Authorization": f"Bearer {h.renew_token()}"})
    assert resp.status_code == 401 and "not issued by this CA" in resp.json()["message"]
    assert server.post("/1.0/renew").status_code == 401


def test_renewal_reapplies_current_policy_and_template(server: Server, tmp_path: Path) -> None:
    h = Holder(server, tmp_path, "moving", "moving.example.com")
    eku = h.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    server.cli("provisioner", "update", "moving", "--template", "tls-client")
    resp = server.post("/1.0/renew", headers={"Authorization": f"Bearer {h.renew_token()}"})
    assert resp.status_code == 201, resp.text
    renewed = x509.load_pem_x509_certificate(resp.json()["crt"].encode())
    assert list(renewed.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    policy = tmp_path / "deny.yaml"
    policy.write_text("x509:\n  deny: {dns: [moving.example.com]}\n")
    server.cli("policy", "set", "--provisioner", "moving", str(policy))
    resp = server.post("/1.0/renew", headers={"Authorization": f"Bearer {h.renew_token()}"})
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"] == "policy_refused"
    assert "moving.example.com" in resp.json()["message"]


def test_x5c_provisioner(server: Server, tmp_path: Path) -> None:
    """A certificate chaining to the x5c provisioner's roots authenticates a new request."""
    roots = tmp_path / "x5c-roots.pem"
    roots.write_text(server.get("/1.0/roots").json()["crts"][0])
    server.cli("provisioner", "add", "x5c-fleet", "--type", "x5c", "--root", str(roots))
    h = Holder(server, tmp_path, "admin", "fleet.example.com")
    chain = [base64.b64encode(x509.load_pem_x509_certificate(p.encode()).public_bytes(
        serialization.Encoding.DER)).decode() for p in h.data["certChain"][:-1]]

    def x5c_token(key: ec.EllipticCurvePrivateKey, x5c: list[str], san: str) -> str:
        t = int(time.time())
        return jwt.encode({"iss": "x5c-fleet", "aud": server.audience, "sub": san,
                           "sans": [san], "iat": t, "nbf": t, "exp": t + 120,
                           "jti": secrets.token_urlsafe(16)}, key, algorithm="ES256",
                          headers={"x5c": x5c})

    new_key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                       "api.fleet.example.com")]))
           .add_extension(x509.SubjectAlternativeName(
               [x509.DNSName("api.fleet.example.com")]), False)
           .sign(new_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())
    ok = server.sign(csr, x5c_token(h.key, chain, "api.fleet.example.com"))
    assert ok.status_code == 201, ok.text
    # A self-signed certificate (not chaining to the roots) is refused.
    rogue = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rogue")])
    now = h.cert.not_valid_before_utc
    self_signed = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(rogue.public_key()).serial_number(1).not_valid_before(now)
                   .not_valid_after(h.cert.not_valid_after_utc)
                   .sign(rogue, hashes.SHA256()))
    bad = server.sign(csr, x5c_token(rogue, [base64.b64encode(self_signed.public_bytes(
        serialization.Encoding.DER)).decode()], "api.fleet.example.com"))
    assert bad.status_code == 401 and "does not chain" in bad.json()["message"]


def test_spent_renewal_token_is_remembered_until_the_token_expires(server: Server,
                                                                    tmp_path: Path) -> None:
    """Spent token ids are pruned now and then (authorize.prune_spent); a renewal token's
    id must outlive the token itself, or the token could be presented again."""
    from datetime import UTC, datetime, timedelta

    from appliance.provisioners.authorize import SPENT_MARGIN, prune_spent
    from appliance.store.db import Database

    h = Holder(server, tmp_path, "admin", "spent.example.com")
    jti = secrets.token_urlsafe(16)
    token = h.renew_token(jti=jti)
    assert server.post("/1.0/renew",
                       headers={"Authorization": f"Bearer {token}"}).status_code == 201
    exp = datetime.fromtimestamp(jwt.decode(token, options={"verify_signature": False})["exp"],
                                 UTC)

    def stored() -> datetime | None:
        with server.db() as conn:
            row = conn.execute("SELECT expires_at FROM used_tokens WHERE jti LIKE ?",
                               (f"renew:%:{jti}",)).fetchone()
        return None if row is None else datetime.fromisoformat(row[0]).replace(tzinfo=UTC)

    assert stored() == exp
    db = Database(f"sqlite:///{server.data_dir / 'appliance.db'}")
    try:
        with db.write() as conn:  # at its expiry (and within the margin) it still counts
            prune_spent(conn, exp + SPENT_MARGIN - timedelta(seconds=1))
        assert stored() == exp
        with db.write() as conn:
            assert prune_spent(conn, exp + SPENT_MARGIN + timedelta(seconds=1)) >= 1
        assert stored() is None
    finally:
        db.dispose()
