"""The CA never signs what its own chain forbids: the reported three-tier case, end to end.

A root, a policy CA with ``permitted_dns: [audit.test]`` and an issuing CA below it, made by
a ceremony in a real token; then ``/1.0/sign`` and ACME newOrder for names outside the
constraint are refused (naming the constraint and the CA, nothing stored), names inside are
issued and pass ``openssl verify``, and a ceremony step that would sign a certificate the
chain forbids stops before the token signs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.ceremony_helpers import cli, run_ceremony, write_script
from tests.conftest import run_cli
from tests.service_helpers import Server, make_csr, serving, verify_chain

URL = "http://127.0.0.1:8080"


def _three_tier() -> dict[str, object]:
    urls = {"crl_urls": [f"{URL}/crl/root.crl"], "ca_issuers_urls": [f"{URL}/ca/root.crt"]}
    return {
        "version": 1, "name": "audit-hierarchy", "operators": ["Key Ceremony Administrator"],
        "steps": [
            {"id": "root-key", "type": "key", "label": "nc-root", "key_type": "ec-p256"},
            {"id": "root", "type": "root", "key": "root-key", "authority": "root",
             "subject": {"CN": "Audit Root"}, "validity": {"days": 3650}, "path_length": 2},
            {"id": "policy-key", "type": "key", "label": "nc-policy", "key_type": "ec-p256"},
            {"id": "policy", "type": "intermediate", "key": "policy-key", "issuer": "root",
             "authority": "policy", "subject": {"CN": "Audit Policy CA"},
             "validity": {"days": 1800}, "path_length": 1,
             "name_constraints": {"permitted_dns": ["audit.test"]}, **urls},
            {"id": "issuing-key", "type": "key", "label": "nc-issuing", "key_type": "ec-p256"},
            {"id": "issuing", "type": "intermediate", "key": "issuing-key", "issuer": "policy",
             "authority": "issuing", "subject": {"CN": "Audit Issuing CA"},
             "validity": {"days": 900},
             "crl_urls": [f"{URL}/crl/policy.crl"], "ca_issuers_urls": [f"{URL}/ca/policy.crt"]},
        ],
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("nc") / "data"
    run_cli("init", "--dir", str(d), check=True)
    cli(d, "hsm", "genkey", "--label", "audit-key", "--type", "ec-p256", check=True)
    script = write_script(d.parent / "three-tier.yaml", _three_tier())
    run_ceremony(d, script, d.parent / "rec", check=True)
    cli(d, "provisioner", "add", "admin", "--type", "jwk", "--generate-password", check=True)
    cli(d, "provisioner", "add", "acme", "--type", "acme", check=True)
    return d


@pytest.fixture(scope="module")
def server(data: Path) -> Iterator[Server]:
    with serving(data) as s:
        yield s


def _root_and_chain(data: Path) -> tuple[str, list[str]]:
    rec = data.parent / "rec"
    return ((rec / "root.pem").read_text(),
            [(rec / "issuing.pem").read_text(), (rec / "policy.pem").read_text()])


def test_a_leaf_the_policy_ca_forbids_is_refused(server: Server, tmp_path: Path) -> None:
    before = server.issued_count()
    csr = make_csr(tmp_path, "DNS:www.other.test", cn="www.other.test")
    r = server.sign(csr, server.token("www.other.test"))
    assert r.status_code == 403, r.text
    body = r.json()
    assert body["error"] == "path_constraint"
    assert "www.other.test" in body["message"] and "audit.test" in body["message"]
    assert "constraint: name_constraints" in body["message"]
    assert "CA: policy" in body["message"]
    assert server.issued_count() == before
    refused = server.events("certificate.refused")[-1]
    assert refused["details"]["error"] == "path_constraint"


def test_a_leaf_inside_the_constraint_is_issued_and_verifies(server: Server, data: Path,
                                                           tmp_path: Path) -> None:
    csr = make_csr(tmp_path, "DNS:www.audit.test", "DNS:audit.test", cn="www.audit.test")
    r = server.sign(csr, server.token("www.audit.test", "audit.test"))
    assert r.status_code == 201, r.text
    root, chain = _root_and_chain(data)
    result = verify_chain(tmp_path, root, chain, r.json()["crt"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_acme_refuses_the_identifier_at_new_order(server: Server) -> None:
    from tests.acme_client import Client

    client = Client(f"{server.api}/acme/acme/directory", server.roots)
    assert client.register().status_code == 201
    r = client.order(("dns", "www.other.test"))
    assert r.status_code == 400, r.text
    problem = r.json()
    assert problem["type"] == "urn:ietf:params:acme:error:rejectedIdentifier"
    assert "name constraints of CA 'policy'" in problem["detail"]
    ok = client.order(("dns", "app.audit.test"))
    assert ok.status_code == 201, ok.text


def test_a_ceremony_stops_before_signing_what_the_chain_forbids(data: Path,
                                                               tmp_path: Path) -> None:
    script = write_script(tmp_path / "ocsp.yaml", {
        "version": 1, "name": "bad-ocsp-signer", "operators": ["Key Ceremony Administrator"],
        "steps": [
            {"id": "k", "type": "key", "label": "nc-ocsp-bad", "key_type": "ec-p256"},
            {"id": "ocsp", "type": "ocsp-signer", "key": "k", "issuer": "issuing",
             "authority": "bad-ocsp", "subject": {"CN": "ocsp.other.test"},
             "validity": {"days": 30}},
        ]})
    result = run_ceremony(data, script, tmp_path / "rec")
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "name constraints of CA 'policy'" in out and "ocsp.other.test" in out
    authorities = json.loads(cli(data, "authority", "list", "--json", check=True).stdout)
    assert "bad-ocsp" not in {a["name"] for a in authorities}
    assert not (tmp_path / "rec" / "ocsp.pem").exists()


def test_health_still_answers(server: Server) -> None:
    assert requests.get(server.api + "/1.0/health", verify=str(server.roots),
                        timeout=10).status_code == 200
