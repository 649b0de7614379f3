"""The CA side of registration authorities, against a real ``appliance serve`` over mutual
TLS: RAs registered with ``provisioner add --type ra --csr`` (and one through
``/1.0/ra/register`` by its parent), listed with ``ra list``, requests on
``/1.0/ra/sign``, ``renew``, ``revoke`` and ``credential/renew`` direct (edge-3) and
chained (edge-2 → edge-1), policy narrowing at every hop, revocation limited to the path,
and ``provisioner update --disable`` cutting an RA and everything below it.

The RA nodes themselves are not run here (that is the RA node's test); their credential
keys are throw-away software keys in files, used only by this test's mTLS client and to
sign the hop assertions an RA node would sign in its token.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.ra import assertion
from appliance.ra.assertion import Hop
from tests.conftest import run_cli
from tests.service_helpers import Server, load_pem, serving, verify_chain


def _csr(key: ec.EllipticCurvePrivateKey, cn: str, *dns: str) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
    return builder.sign(key, hashes.SHA256())


def _pem(item: x509.CertificateSigningRequest | x509.Certificate) -> str:
    return item.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class Ra:
    """What an RA node holds: its credential key (a file here) and certificate chain."""

    name: str
    key: ec.EllipticCurvePrivateKey
    chain: list[x509.Certificate]
    cert_file: Path
    key_file: Path

    @classmethod
    def make(cls, work: Path, name: str) -> Ra:
        key = ec.generate_private_key(ec.SECP256R1())
        key_file = work / f"{name}.key"
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        key_file.chmod(0o600)
        return cls(name, key, [], work / f"{name}.crt", key_file)

    def csr_file(self, work: Path) -> Path:
        path = work / f"{self.name}.csr"
        path.write_text(_pem(_csr(self.key, self.name)))
        return path

    def take(self, chain_pem: str | list[str]) -> None:
        text = chain_pem if isinstance(chain_pem, str) else "".join(chain_pem)
        self.chain = x509.load_pem_x509_certificates(text.encode())
        # leaf and intermediates, as an RA node keeps ra/credential.pem
        self.cert_file.write_text("".join(_pem(c) for c in self.chain
                                          if c.issuer != c.subject))

    def hop(self, op: assertion.Op, subject: str, names: tuple[str, ...] = (),
            below: str | None = None, requester: str = "admin:alice@example.com",
            provisioner: dict[str, str] | None = None, **kw: Any) -> str:
        return assertion.make(self.key, self.chain[0], Hop(
            iss=self.name, op=op, subject_sha256=subject, names=names, requester=requester,
            provisioner=provisioner or {"name": "admin", "type": "jwk"}, below=below, **kw))


@dataclass
class World:
    server: Server
    work: Path
    ras: dict[str, Ra]

    def post(self, ra: str | None, path: str, body: dict[str, Any]) -> requests.Response:
        cert = None if ra is None else (str(self.ras[ra].cert_file), str(self.ras[ra].key_file))
        return requests.post(self.server.api + "/1.0/ra" + path, json=body, cert=cert,
                             verify=str(self.server.roots), timeout=60)

    def sign(self, bottom: str, *names: str, via: str | None = None,
             key: ec.EllipticCurvePrivateKey | None = None, **body: Any
             ) -> tuple[requests.Response, ec.EllipticCurvePrivateKey]:
        """``/1.0/ra/sign`` of a CSR for NAMES, asked at ``bottom`` (and forwarded by ``via``
        if given, as edge-1 forwards edge-2's)."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        csr = _csr(key, names[0], *names)
        subject = assertion.digest(csr.public_bytes(serialization.Encoding.DER))
        asserted = assertion.names_of(csr)
        token = self.ras[bottom].hop("sign", subject, asserted)
        if via is not None:
            token = self.ras[via].hop("sign", subject, asserted, below=token,
                                      requester=bottom,
                                      provisioner={"name": bottom, "type": "ra"})
        resp = self.post(via or bottom, "/sign",
                         {"csr": _pem(csr), "assertion": token, **body})
        return resp, key

    def events(self, kind: str) -> list[dict[str, Any]]:
        return self.server.events(kind)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("ra-ca")
    d = work / "data"
    run_cli("quickstart", "--dir", str(d), check=True)
    ras = {n: Ra.make(work, n) for n in ("edge-1", "edge-2", "edge-3")}
    policy = work / "edge-1.yaml"
    policy.write_text("x509:\n  allow:\n    dns: ['*.example.com']\n")
    out = run_cli("--dir", str(d), "provisioner", "add", "edge-1", "--type", "ra", "--csr",
                  str(ras["edge-1"].csr_file(work)), "--policy", str(policy),
                  "--max-duration", "12h", check=True)
    ras["edge-1"].take(out.stdout)
    out = run_cli("--dir", str(d), "provisioner", "add", "edge-3", "--type", "ra", "--csr",
                  str(ras["edge-3"].csr_file(work)), check=True)
    ras["edge-3"].take(out.stdout)
    with serving(d) as server:
        yield World(server, work, ras)


def test_provisioner_add_prints_a_credential_that_chains_to_the_root(world: World) -> None:
    edge1 = world.ras["edge-1"]
    leaf = edge1.chain[0]
    assert leaf.subject.rfc4514_string() == "CN=edge-1"
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [u.value for u in san] == ["urn:appliance:ra:edge-1"]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert 71 * 3600 < lifetime.total_seconds() <= 72 * 3600 + 120
    root = world.server.roots.read_text()
    proc = verify_chain(world.work, root, [_pem(c) for c in edge1.chain[1:]], _pem(leaf),
                        "-purpose", "sslclient")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    registered = world.events("ra.registered")
    assert {e["object_ids"]["provisioner"] for e in registered} >= {"edge-1", "edge-3"}


def test_a_direct_ra_gets_a_certificate_whose_path_is_stored(world: World) -> None:
    resp, _ = world.sign("edge-3", "direct.example.org")
    assert resp.status_code == 201, resp.text
    doc = resp.json()
    assert doc["raPath"] == ["edge-3"]
    serial = doc["serial"]
    row = world.server.certificate_rows()[serial]
    assert json.loads(row["ra_path"]) == ["edge-3"] and row["provisioner_name"] == "edge-3"
    assert row["requester"] == "edge-3: admin:alice@example.com"
    shown = world.server.cli("cert", "show", serial).stdout
    assert "path:" in shown and "edge-3 → CA" in shown
    as_json = json.loads(world.server.cli("cert", "show", serial, "--json").stdout)
    assert as_json["ra_path"] == ["edge-3"]
    issued = [e for e in world.events("certificate.issued")
              if e["object_ids"]["serial"] == serial]
    assert issued and issued[0]["details"]["ra_path"] == ["edge-3"]
    request = [e for e in world.events("ra.request") if e["object_ids"]["serial"] == serial]
    assert request and request[0]["details"]["op"] == "sign" and \
        request[0]["details"]["decision"] == "issued"


def test_a_chained_ra_registers_a_child_and_its_requests_carry_both_hops(world: World) -> None:
    edge1, edge2 = world.ras["edge-1"], world.ras["edge-2"]
    csr = _csr(edge2.key, "edge-2")
    subject = assertion.digest(csr.public_bytes(serialization.Encoding.DER))
    register = {"name": "edge-2", "max_duration": "6h",
                "policy": "x509:\n  deny:\n    dns: ['secret.example.com']\n"}
    token = edge1.hop("register", subject, (), requester="admin:op@example.com",
                      register=register)
    resp = world.post("edge-1", "/register", {"csr": _pem(csr), "assertion": token})
    assert resp.status_code == 201, resp.text
    edge2.take(resp.json()["certChain"])
    listed = {r["name"]: r for r in json.loads(world.server.cli("ra", "list", "--json").stdout)}
    assert listed["edge-2"]["parent"] == "edge-1" and listed["edge-1"]["parent"] is None
    assert listed["edge-2"]["state"] == "enabled"
    assert listed["edge-2"]["credential_serial"] == resp.json()["serial"]
    assert listed["edge-1"]["last_contact"] is not None
    # Through the chain: the path is edge-2 → edge-1, under edge-1's (narrowed) claims.
    resp, _ = world.sign("edge-2", "deep.example.com", via="edge-1")
    assert resp.status_code == 201, resp.text
    doc = resp.json()
    assert doc["raPath"] == ["edge-2", "edge-1"]
    cert = load_pem(doc["crt"])
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() <= 6 * 3600 + 61
    row = world.server.certificate_rows()[doc["serial"]]
    assert row["requester"] == "edge-2 → edge-1: admin:alice@example.com"
    assert "edge-2 → edge-1 → CA" in world.server.cli("cert", "show", doc["serial"]).stdout
    proc = verify_chain(world.work, world.server.roots.read_text(), doc["certChain"][1:-1],
                        doc["crt"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # edge-2 cannot skip edge-1 and come to the CA directly.
    resp, _ = world.sign("edge-2", "skip.example.com")
    assert resp.status_code == 403 and "must come through" in resp.json()["message"]


def test_policy_only_narrows_and_the_refusal_names_the_hop(world: World) -> None:
    _ensure_edge2(world)
    # edge-1's policy at the CA (the direct child's provisioner level).
    resp, _ = world.sign("edge-2", "outside.example.net", via="edge-1")
    assert resp.status_code == 403, resp.text
    doc = resp.json()
    assert doc["hop"] == "CA" and "provisioner edge-1 policy" in doc["message"], doc
    # edge-2's own policy at the CA (an extra level), though edge-1's allows the name.
    resp, _ = world.sign("edge-2", "secret.example.com", via="edge-1")
    assert resp.status_code == 403, resp.text
    assert "provisioner edge-2 policy" in resp.json()["message"]
    # A lower hop's --max-duration (edge-2: 6h, under edge-1's 12h) holds at the CA too.
    resp, _ = world.sign("edge-3", "long.example.org", lifetime=20 * 3600)
    assert resp.status_code == 201, resp.text  # edge-3 has the authority's claims (24h)
    resp, _ = world.sign("edge-2", "long.example.com", via="edge-1", lifetime=7 * 3600)
    assert resp.status_code == 400 and "maximum of 21600s" in resp.json()["message"], \
        resp.text
    refused = [e for e in world.events("ra.request") if e["outcome"] == "denied"]
    assert any(e["details"]["ra_path"] == ["edge-2", "edge-1"] for e in refused)


def test_a_tampered_or_unauthenticated_request_is_refused(world: World) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = _csr(key, "x.example.org", "x.example.org")
    subject = assertion.digest(csr.public_bytes(serialization.Encoding.DER))
    token = world.ras["edge-3"].hop("sign", subject, assertion.names_of(csr))
    resp = world.post(None, "/sign", {"csr": _pem(csr), "assertion": token})
    assert resp.status_code == 401 and resp.json()["hop"] == "CA", resp.text
    other = _csr(key, "y.example.org", "y.example.org")  # another CSR than asserted
    resp = world.post("edge-3", "/sign", {"csr": _pem(other), "assertion": token})
    assert resp.status_code == 401 and resp.json()["code"] == "ra_assertion_invalid"
    resp = world.post("edge-3", "/sign", {"csr": _pem(csr), "assertion": "x" * 20})
    assert resp.status_code == 401


def test_renew_and_revoke_only_along_the_stored_path(world: World) -> None:
    _ensure_edge2(world)
    resp, _ = world.sign("edge-2", "mine.example.com", via="edge-1")
    assert resp.status_code == 201, resp.text
    serial, pem = resp.json()["serial"], resp.json()["crt"]
    cert = load_pem(pem)
    subject = assertion.digest(cert.public_bytes(serialization.Encoding.DER))
    # edge-3 is not on its path: it may neither renew nor revoke it.
    token = world.ras["edge-3"].hop("renew", subject, assertion.names_of(cert))
    resp = world.post("edge-3", "/renew", {"certificate": pem, "assertion": token})
    assert resp.status_code == 403, resp.text
    revoke_subject = assertion.serial_digest(serial)
    token = world.ras["edge-3"].hop("revoke", revoke_subject)
    resp = world.post("edge-3", "/revoke", {"serial": serial, "assertion": token})
    assert resp.status_code == 403 and "did not come through" in resp.json()["message"]
    assert world.server.certificate_rows()[serial]["status"] == "issued"
    assert any(e["outcome"] == "denied" and e["details"]["op"] == "revoke"
               for e in world.events("ra.request"))
    # Along its path: renewed (same key, same names), then revoked.
    below = world.ras["edge-2"].hop("renew", subject, assertion.names_of(cert))
    token = world.ras["edge-1"].hop("renew", subject, assertion.names_of(cert), below=below,
                                    requester="edge-2",
                                    provisioner={"name": "edge-2", "type": "ra"})
    resp = world.post("edge-1", "/renew", {"certificate": pem, "assertion": token})
    assert resp.status_code == 201, resp.text
    renewed = load_pem(resp.json()["crt"])
    assert renewed.public_key() == cert.public_key() and resp.json()["raPath"] == [
        "edge-2", "edge-1"]
    assert world.server.certificate_rows()[resp.json()["serial"]]["renewed_from"] == serial
    below = world.ras["edge-2"].hop("revoke", revoke_subject, reason="keyCompromise")
    token = world.ras["edge-1"].hop("revoke", revoke_subject, below=below, requester="edge-2",
                                    provisioner={"name": "edge-2", "type": "ra"},
                                    reason="keyCompromise")
    resp = world.post("edge-1", "/revoke", {"serial": serial, "reasonCode": 1,
                                            "assertion": token})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"status": "ok", "serial": serial, "reason": "keyCompromise"}
    assert world.server.certificate_rows()[serial]["status"] == "revoked"


def test_credential_renewal_keeps_the_key(world: World) -> None:
    edge3 = world.ras["edge-3"]
    before = f"{edge3.chain[0].serial_number:x}"
    csr = _csr(edge3.key, "edge-3")
    subject = assertion.digest(csr.public_bytes(serialization.Encoding.DER))
    token = edge3.hop("credential-renew", subject, requester="edge-3",
                      provisioner={"name": "edge-3", "type": "ra"})
    resp = world.post("edge-3", "/credential/renew", {"csr": _pem(csr), "assertion": token})
    assert resp.status_code == 201, resp.text
    edge3.take(resp.json()["certChain"])
    assert f"{edge3.chain[0].serial_number:x}" != before
    listed = {r["name"]: r for r in json.loads(world.server.cli("ra", "list", "--json").stdout)}
    assert listed["edge-3"]["credential_serial"] == resp.json()["serial"]
    renewed = world.events("ra.credential.renewed")
    assert renewed and renewed[-1]["details"]["previous_serial"] == before
    # Another key is a new registration, not a renewal.
    other = _csr(ec.generate_private_key(ec.SECP256R1()), "edge-3")
    subject = assertion.digest(other.public_bytes(serialization.Encoding.DER))
    token = edge3.hop("credential-renew", subject, requester="edge-3",
                      provisioner={"name": "edge-3", "type": "ra"})
    resp = world.post("edge-3", "/credential/renew", {"csr": _pem(other), "assertion": token})
    assert resp.status_code == 403 and "another key" in resp.json()["message"], resp.text
    # ...and the renewed credential authenticates.
    resp, _ = world.sign("edge-3", "after.example.org")
    assert resp.status_code == 201, resp.text


def test_disabling_an_ra_cuts_it_and_every_ra_below(world: World) -> None:
    _ensure_edge2(world)
    world.server.cli("provisioner", "update", "edge-1", "--disable")
    try:
        listed = {r["name"]: r for r in json.loads(world.server.cli("ra", "list",
                                                                    "--json").stdout)}
        assert listed["edge-1"]["state"] == "disabled"
        table = world.server.cli("ra", "list").stdout
        line = next(ln for ln in table.splitlines() if ln.startswith("edge-1 "))
        assert "disabled" in line and listed["edge-1"]["credential_serial"] in line
        assert json.loads(world.server.cli("provisioner", "show", "edge-1", "--json")
                          .stdout)["disabled"] is True
        issued = world.server.issued_count()
        resp, _ = world.sign("edge-2", "cut.example.com", via="edge-1")
        assert resp.status_code == 403 and "edge-1 is disabled" in resp.json()["message"]
        resp, _ = world.sign("edge-1", "cut.example.com")
        assert resp.status_code == 403
        assert world.server.issued_count() == issued
        resp, _ = world.sign("edge-3", "still.example.org")  # another branch is untouched
        assert resp.status_code == 201, resp.text
        disabled = world.events("provisioner.disabled")
        assert disabled and disabled[-1]["details"]["chained_below"] == ["edge-2"]
    finally:
        world.server.cli("provisioner", "update", "edge-1", "--enable")
    resp, _ = world.sign("edge-2", "back.example.com", via="edge-1")
    assert resp.status_code == 201, resp.text


def _ensure_edge2(world: World) -> None:
    if not world.ras["edge-2"].chain:
        test_a_chained_ra_registers_a_child_and_its_requests_carry_both_hops(world)


def test_a_revoked_ra_credential_is_refused(world: World) -> None:
    edge3 = world.ras["edge-3"]
    serial = f"{edge3.chain[0].serial_number:x}"
    world.server.cli("revoke", serial, "--reason", "keyCompromise")
    resp, _ = world.sign("edge-3", "revoked.example.org")
    assert resp.status_code == 403 and "revoked" in resp.json()["message"], resp.text
    listed = {r["name"]: r for r in json.loads(world.server.cli("ra", "list", "--json").stdout)}
    assert listed["edge-3"]["state"] == "revoked"


def test_any_disabled_provisioner_is_refused_at_authentication(world: World) -> None:
    """``--disable`` is for every type: a jwk provisioner's tokens and an ACME directory
    are refused at once (audited for the token), and accepted again after ``--enable``."""
    server = world.server
    csr = _pem(_csr(ec.generate_private_key(ec.SECP256R1()), "j.example.com",
                    "j.example.com"))
    server.cli("provisioner", "update", "admin", "--disable")
    server.cli("provisioner", "update", "acme", "--disable")
    try:
        resp = server.sign(csr, server.token("j.example.com"))
        assert resp.status_code == 403 and "admin is disabled" in resp.json()["message"]
        assert any("admin is disabled" in str(e["details"].get("reason"))
                   for e in world.events("auth.failed"))
        resp = server.get("/acme/acme/directory")
        assert resp.status_code == 403 and "disabled" in resp.json()["detail"], resp.text
        updated = [e for e in world.events("provisioner.updated")
                   if e["object_ids"]["provisioner"] == "admin"]
        assert updated[-1]["details"]["after"]["disabled"] is True
    finally:
        server.cli("provisioner", "update", "admin", "--enable")
        server.cli("provisioner", "update", "acme", "--enable")
    assert server.sign(csr, server.token("j.example.com")).status_code == 201
    assert server.get("/acme/acme/directory").status_code == 200


@pytest.mark.parametrize("path,body", [
    ("/sign", b"not json"),
    ("/sign", b"[]"),
    ("/sign", b'{"assertion": "a.b.c"}'),
    ("/sign", b'{"csr": "-----BEGIN CERTIFICATE REQUEST-----\\nAAAA\\n", "assertion": 1}'),
    ("/renew", b'{"certificate": "nope", "assertion": "a.b.c"}'),
    ("/revoke", b'{"serial": "zz", "assertion": "a.b.c"}'),
    ("/revoke", b'{"serial": "ab", "reasonCode": 99, "assertion": "a.b.c"}'),
    ("/register", b'{"csr": 5}'),
    ("/credential/renew", b"{}"),
])
def test_bad_input_is_a_clear_4xx_naming_the_hop(world: World, path: str, body: bytes) -> None:
    resp = requests.post(world.server.api + "/1.0/ra" + path, data=body,
                         headers={"Content-Type": "application/json"},
                         cert=(str(world.ras["edge-3"].cert_file),
                               str(world.ras["edge-3"].key_file)),
                         verify=str(world.server.roots), timeout=30)
    assert 400 <= resp.status_code < 500, resp.text
    doc = resp.json()
    assert doc["hop"] == "CA" and doc["message"], doc
