"""What the sign path now computes once per signer, per CSR or per template input, it still
answers right: the chain every response carries is the issuing CA's own, request after
request and from one CA to another in the same worker; a CSR whose signature does not
verify is refused even after the same key's good CSR was seen; and a template sees the
token's claims as before (issue 16's speed-ups of ``issuance/pipeline.py``, ``web/api.py``,
``issuance/csr.py`` and ``templates/inputs.py``)."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.ceremony_helpers import cli, run_ceremony, write_script
from tests.conftest import run_cli
from tests.service_helpers import Server, load_pem, make_csr, serving

URL = "http://127.0.0.1:8080"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quickstart appliance plus a second issuing CA under its root, with a provisioner
    of its own."""
    d = tmp_path_factory.mktemp("signcache") / "data"
    run_cli("quickstart", "--dir", str(d), check=True)
    script = write_script(d.parent / "second.yaml", {
        "version": 1, "name": "second-issuing", "operators": ["Key Ceremony Administrator"],
        "steps": [
            {"id": "k", "type": "key", "label": "issuing-b-key", "key_type": "ec-p256"},
            {"id": "issuing-b", "type": "intermediate", "key": "k", "issuer": "root",
             "authority": "issuing-b", "subject": {"O": "Test", "CN": "Second Issuing CA"},
             "validity": {"days": 900}, "crl_urls": [f"{URL}/crl/root.crl"],
             "ca_issuers_urls": [f"{URL}/ca/root.crt"]},
        ]})
    run_ceremony(d, script, d.parent / "rec", check=True)
    cli(d, "provisioner", "add", "second", "--type", "jwk", "--generate-password",
        "--authority", "issuing-b", check=True)
    return d


@pytest.fixture(scope="module")
def server(data: Path) -> Iterator[Server]:
    with serving(data) as s:  # one worker: every request below meets the same caches
        yield s


def _sign(server: Server, work: Path, name: str, provisioner: str) -> dict[str, object]:
    csr = make_csr(work, f"DNS:{name}", cn=name)
    r = server.sign(csr, server.token(name, provisioner=provisioner))
    assert r.status_code == 201, r.text
    doc: dict[str, object] = r.json()
    return doc


def _issuer_of(doc: dict[str, object]) -> x509.Certificate:
    leaf = load_pem(str(doc["crt"]))
    ca = load_pem(str(doc["ca"]))
    chain = [load_pem(str(p)) for p in doc["certChain"]]  # type: ignore[attr-defined]
    assert chain[0] == leaf and chain[1] == ca
    leaf.verify_directly_issued_by(ca)  # the chain carried is the one that signed
    for child, parent in itertools.pairwise(chain[1:]):
        child.verify_directly_issued_by(parent)
    assert chain[-1].subject == chain[-1].issuer  # up to the root
    return ca


def test_each_response_carries_its_own_issuers_chain(server: Server, tmp_path: Path) -> None:
    first = _issuer_of(_sign(server, tmp_path, "a.example.com", "admin"))
    other = _issuer_of(_sign(server, tmp_path, "b.example.com", "second"))
    again = _issuer_of(_sign(server, tmp_path, "c.example.com", "admin"))
    assert "Signing Appliance Issuing CA" in first.subject.rfc4514_string()
    assert other.subject.rfc4514_string() == "CN=Second Issuing CA,O=Test"
    assert again == first and other != first
    ours = {a["name"]: a for a in json.loads(
        cli(server.data_dir, "authority", "list", "--json", check=True).stdout)}
    assert {"issuing", "issuing-b"} <= set(ours)


def test_a_changed_issuing_ca_changes_the_chain_at_once(server: Server, tmp_path: Path) -> None:
    """The chain PEM is held per signer: moving the second CA out of service refuses its
    provisioner on the very next request, and the first CA's chain is unchanged."""
    before = _issuer_of(_sign(server, tmp_path, "d.example.com", "admin"))
    _issuer_of(_sign(server, tmp_path, "e.example.com", "second"))
    with server.db(readonly=False) as conn:
        conn.execute("UPDATE authorities SET status = 'revoked' WHERE name = 'issuing-b'")
    try:
        csr = make_csr(tmp_path, "DNS:f.example.com", cn="f.example.com")
        r = server.sign(csr, server.token("f.example.com", provisioner="second"))
        assert r.status_code == 503 and r.json()["error"] == "authority_unavailable", r.text
        assert _issuer_of(_sign(server, tmp_path, "g.example.com", "admin")) == before
    finally:
        with server.db(readonly=False) as conn:
            conn.execute("UPDATE authorities SET status = 'active' WHERE name = 'issuing-b'")
    assert _issuer_of(_sign(server, tmp_path, "i.example.com", "second")) != before


def test_a_bad_csr_signature_is_refused_after_a_good_one(server: Server, tmp_path: Path
                                                         ) -> None:
    """The CSR signature is verified once per distinct CSR: the same CSR with one signature
    byte changed is another CSR and is refused, before and after the good one issued."""
    good = make_csr(tmp_path, "DNS:h.example.com", cn="h.example.com")
    der = bytearray(x509.load_pem_x509_csr(good.encode()).public_bytes(
        serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the ECDSA signature's last integer
    bad = ("-----BEGIN CERTIFICATE REQUEST-----\n"
           + base64.encodebytes(bytes(der)).decode()
           + "-----END CERTIFICATE REQUEST-----\n")
    for csr, status in ((bad, 400), (good, 201), (bad, 400)):
        r = server.sign(csr, server.token("h.example.com"))
        assert r.status_code == status, r.text
        if status == 400:
            assert "signature" in r.json()["message"], r.text
