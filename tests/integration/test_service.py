"""``appliance serve`` end to end: real HTTPS and HTTP, real SoftHSM, real gunicorn workers.

One quickstarted appliance serves the whole module (starting one costs seconds);
provisioners, policies, templates and inventory are changed with the CLI while it
runs, which the server sees at once because it reads them per request. Every
test undoes what it changes that later tests could trip over.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from appliance import lint
from tests.conftest import run_cli
from tests.service_helpers import (
    Server,
    cn_of,
    ext,
    load_pem,
    make_csr,
    san_values,
    serving_two_workers,
    verify_chain,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("service") / "data"
    run_cli("quickstart", "--dir", str(d), check=True)
    with serving_two_workers(d) as srv:
        yield srv
    # SIGTERM stops serve cleanly: exit 0, no gunicorn process left behind.
    assert srv.proc.returncode == 0, srv.log.read_text()
    assert not srv.stragglers


@pytest.fixture(scope="module")
def root_pem(server: Server) -> str:
    r = server.get("/1.0/roots")
    assert r.status_code == 200, r.text
    (pem,) = r.json()["crts"]
    return str(pem)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path


def _issue(server: Server, work: Path, *names: str, key: str = "ec", cn: str | None = None,
           provisioner: str = "admin", **extra: Any) -> requests.Response:
    """Sign a CSR for DNS/IP ``names`` (CN = the first) with a fresh token for them."""
    sans = [f"IP:{n}" if _is_ip(n) else f"DNS:{n}" for n in names]
    common = cn if cn is not None else names[0]
    csr = make_csr(work, *sans, cn=common, key=key)
    return server.sign(csr, server.token(*dict.fromkeys([*names, common]),
                                         provisioner=provisioner), **extra)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _refused(r: requests.Response, status: int, code: str, *words: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    # step-ca's shape; a bad input also names its field ("csr", "notAfter", ...)
    assert set(body) - {"field"} == {"status", "error", "message"}, body
    assert body["status"] == status and body["error"] == code, body
    for w in words:
        assert w.lower() in body["message"].lower(), (w, body)
    return str(body["message"])


def _ok(r: requests.Response) -> x509.Certificate:
    assert r.status_code == 201, r.text
    return load_pem(r.json()["crt"])


def _eku(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(ext(cert, x509.ExtendedKeyUsage))


# -- 1. the happy path ------------------------------------------------------------------------


def test_sign_ec_and_rsa_csrs_chain_lint_and_audit(server: Server, root_pem: str,
                                                   work: Path) -> None:
    before = server.issued_count()
    base = server.http
    serials = []
    for key in ("ec", "rsa"):
        name = f"{key}-host.example.com"
        csr = make_csr(work, f"DNS:{name}", cn=name, key=key)
        if key == "ec":  # the token as an operator makes it, with the CLI
            ott = server.cli("token", "admin", "--san", name, "--password-file",
                             server.password_file()).stdout.strip()
        else:
            ott = server.token(name)
        r = server.sign(csr, ott)
        assert r.status_code == 201, r.text
        body = r.json()
        assert set(body) == {"crt", "ca", "certChain", "serial"}
        leaf = load_pem(body["crt"])
        assert body["certChain"][0] == body["crt"] and body["certChain"][1] == body["ca"]
        assert body["certChain"][-1].strip() == root_pem.strip()
        proc = verify_chain(work, root_pem, [body["ca"]], body["crt"], "-purpose", "sslserver")
        assert proc.returncode == 0 and ": OK" in proc.stdout, proc.stdout + proc.stderr

        assert san_values(leaf) == [name] and cn_of(leaf) == name
        # serverAuth (clientAuth may ride along, as step-ca does, for renewal over mTLS)
        assert ExtendedKeyUsageOID.SERVER_AUTH in _eku(leaf)
        assert _eku(leaf) <= {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        ku = ext(leaf, x509.KeyUsage)
        assert ku.digital_signature and ku.key_encipherment == (key == "rsa")
        assert ext(leaf, x509.BasicConstraints).ca is False
        (dp,) = ext(leaf, x509.CRLDistributionPoints)
        assert [n.value for n in dp.full_name] == [f"{base}/crl/issuing.crl"]
        aia = {(d.access_method, d.access_location.value)
               for d in ext(leaf, x509.AuthorityInformationAccess)}
        assert aia == {(AuthorityInformationAccessOID.OCSP, f"{base}/ocsp"),
                       (AuthorityInformationAccessOID.CA_ISSUERS, f"{base}/ca/issuing.crt")}
        assert leaf.serial_number.bit_length() >= 64
        assert f"{leaf.serial_number:x}" == body["serial"]
        der = leaf.public_bytes(serialization.Encoding.DER)
        assert lint.blocking(lint.lint_certificate(der, "leaf")) == []
        # The certificate's caIssuers URL serves the issuer that signed it.
        issuer_der = requests.get(f"{base}/ca/issuing.crt", timeout=10).content
        leaf.verify_directly_issued_by(x509.load_der_x509_certificate(issuer_der))
        row = server.certificate_rows()[body["serial"]]
        assert row["status"] == "issued" and row["der"] == der
        assert row["provisioner_name"] == "admin" and row["template"] == "tls-server"
        serials.append(body["serial"])
    assert server.issued_count() == before + 2

    exported = [json.loads(line) for line in
                server.cli("audit", "export", "--format", "jsonl").stdout.splitlines()]
    issued = {e["object_ids"]["serial"]: e for e in exported
              if e["event_type"] == "certificate.issued"}
    for s in serials:
        assert issued[s]["object_ids"]["provisioner"] == "admin"
        assert issued[s]["object_ids"]["authority"] == "issuing"
    verify = server.cli("audit", "verify", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr


# -- 2. one-time tokens -------------------------------------------------------------------


def test_token_checks_refuse_and_issue_nothing(server: Server, work: Path) -> None:
    name = "tok.example.com"
    csr = make_csr(work, f"DNS:{name}", cn=name)
    ott = server.token(name)
    _ok(server.sign(csr, ott))
    issued = server.issued_count()

    _refused(server.sign(csr, ott), 401, "unauthorized", "already used")
    other_key = ec.generate_private_key(ec.SECP256R1())
    _refused(server.sign(csr, server.token(name, key=other_key)), 401, "unauthorized",
             "invalid token")
    _refused(server.sign(csr, server.token(name, audience="https://127.0.0.1:1/1.0/sign")),
             401, "unauthorized", "audience")
    _refused(server.sign(csr, server.token(name, audience=server.audience.replace(
        "/1.0/sign", "/1.0/renew"))), 401, "unauthorized", "audience")
    # Minted 400 s ago with a 300 s lifetime: expired 100 s ago, beyond the 60 s leeway.
    _refused(server.sign(csr, server.token(name, now=time.time() - 400)), 401, "unauthorized",
             "expired")
    _refused(server.sign(csr, server.token(name, provisioner="nobody",
                                           key=server.key("admin"))),
             401, "unauthorized", "unknown provisioner")
    for garbage in ("not-a-jwt", "a.b.c", "x" * 9000):
        _refused(server.sign(csr, garbage), 401, "unauthorized")
    # Names: the token's must equal the CSR's (SANs and CN), both ways.
    _refused(server.sign(csr, server.token(name, "extra.example.com")), 400, "bad_request",
             "does not ask for", "extra.example.com")
    two = make_csr(work, f"DNS:{name}", "DNS:sneaky.example.com", cn=name)
    _refused(server.sign(two, server.token(name)), 400, "bad_request",
             "does not authorize", "sneaky.example.com")
    assert server.issued_count() == issued
    refused = server.events("certificate.refused")
    assert any("sneaky.example.com" in e["details"]["message"] for e in refused)


def test_bad_requests_are_json_400s(server: Server, work: Path) -> None:
    issued = server.issued_count()
    csr = make_csr(work, "DNS:bad.example.com", cn="bad.example.com")
    ott = server.token("bad.example.com")
    _refused(server.sign("garbage", ott), 400, "bad_request", "not a valid CSR")
    _refused(server.post("/1.0/sign", json={"csr": csr}), 400, "bad_request", "ott")
    _refused(server.post("/1.0/sign", json=["a list"]), 400, "bad_request", "JSON object")
    _refused(server.sign(csr, ott, templateData="text"), 400, "bad_request", "templateData")
    _refused(server.sign(csr, ott, notAfter="tomorrow"), 400, "bad_request", "notAfter")
    weak = make_csr(work, "DNS:bad.example.com", cn="bad.example.com", key="rsa:1024")
    _refused(server.sign(weak, server.token("bad.example.com")), 400, "bad_request", "1024")
    assert server.issued_count() == issued


# -- 3. name policies -----------------------------------------------------------------------


AUTHORITY_POLICY = """
x509:
  allow:
    dns: ["*.example.com", "**.corp.example.net"]
    ip: ["10.0.0.0/8"]
"""
PROVISIONER_POLICY = """
x509:
  deny:
    dns: ["db.example.com"]
"""


def test_policies_through_http(server: Server, work: Path) -> None:
    (work / "authority.yaml").write_text(AUTHORITY_POLICY)
    (work / "provisioner.yaml").write_text(PROVISIONER_POLICY)
    issued = server.issued_count()
    server.cli("policy", "set", "--authority", str(work / "authority.yaml"))
    try:
        _ok(_issue(server, work, "a.example.com"))
        msg = _refused(_issue(server, work, "example.org"), 403, "policy_refused",
                       "example.org", "authority policy", "not in allow list")
        _refused(_issue(server, work, "a.b.example.com"), 403, "policy_refused",
                 "a.b.example.com", "authority")
        _ok(_issue(server, work, "x.corp.example.net"))
        _ok(_issue(server, work, "a.b.c.corp.example.net"))
        _refused(_issue(server, work, "corp.example.net"), 403, "policy_refused",
                 "corp.example.net")
        ip_cert = _ok(_issue(server, work, "10.1.2.3"))
        assert ext(ip_cert, x509.SubjectAlternativeName).get_values_for_type(
            x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
        _refused(_issue(server, work, "192.168.1.1"), 403, "policy_refused", "192.168.1.1",
                 "authority")
        assert server.issued_count() == issued + 4
        assert any(e["details"]["message"] == msg for e in server.events("certificate.refused"))

        server.cli("policy", "set", "--provisioner", "admin", str(work / "provisioner.yaml"))
        try:
            _refused(_issue(server, work, "db.example.com"), 403, "policy_refused",
                     "db.example.com", "provisioner admin", 'denied by "db.example.com"')
            _ok(_issue(server, work, "web.example.com"))
        finally:
            server.cli("policy", "remove", "--provisioner", "admin")
        _ok(_issue(server, work, "db.example.com"))
    finally:
        server.cli("policy", "remove", "--authority")
    _ok(_issue(server, work, "example.org"))
    _ok(_issue(server, work, "192.168.1.1"))


# -- 4. templates ---------------------------------------------------------------------------


CUSTOM_TEMPLATE = """{
  "subject": {{ [["O", "Custom Template Org"], ["CN", dns_names[0]]] | tojson }},
  "sans": {{ sans | selectattr("type", "equalto", "dns") | list | tojson }},
  "key_usage": ["digital_signature"],
  "extended_key_usage": ["server_auth", "client_auth"],
  "basic_constraints": {"ca": false}
}
"""
FAILING_TEMPLATE = """{%- if not subject.commonName.endswith(".allowed.example") -%}
  {{- fail("only *.allowed.example, not " ~ subject.commonName) -}}
{%- endif -%}
{"subject": {"CN": {{ subject.commonName | tojson }}}, "sans": {{ sans | tojson }},
 "key_usage": ["digital_signature"], "extended_key_usage": ["server_auth"],
 "basic_constraints": {"ca": false}}
"""


def test_shipped_and_stored_templates(server: Server, root_pem: str, work: Path) -> None:
    (work / "custom.j2").write_text(CUSTOM_TEMPLATE)
    (work / "failing.j2").write_text(FAILING_TEMPLATE)
    server.cli("template", "add", "custom-org", str(work / "custom.j2"))
    server.cli("template", "add", "only-allowed", str(work / "failing.j2"))
    for t in ("tls-client", "mtls-service", "smime-email", "code-signing", "custom-org",
              "only-allowed"):
        extra = ["--allow-template-data"] if t == "mtls-service" else []
        server.cli("provisioner", "add", f"t-{t}", "--type", "jwk", "--generate-password",
                   "--template", t, *extra)
    issued = server.issued_count()

    def sign(prov: str, csr: str, *names: str, **kw: Any) -> requests.Response:
        token_claims = kw.pop("claims", {})
        assert isinstance(token_claims, dict)
        return server.sign(csr, server.token(*names, provisioner=prov, **token_claims), **kw)

    # tls-client
    csr = make_csr(work, "DNS:client1.example.com", cn="client1.example.com")
    r = sign("t-tls-client", csr, "client1.example.com")
    cert = _ok(r)
    assert _eku(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cn_of(cert) == "client1.example.com" and san_values(cert) == ["client1.example.com"]
    proc = verify_chain(work, root_pem, [r.json()["ca"]], r.json()["crt"],
                        "-purpose", "sslclient")
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # mtls-service: the SPIFFE ID from the token's claims, or else from the template data
    csr = make_csr(work, "DNS:pay.example.com", cn="pay.example.com")
    cert = _ok(sign("t-mtls-service", csr, "pay.example.com",
                    claims={"trust_domain": "example.org", "service": "payments"}))
    assert _eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert san_values(cert) == ["spiffe://example.org/payments", "pay.example.com"]
    assert cn_of(cert) == "payments"
    cert = _ok(sign("t-mtls-service", csr, "pay.example.com",
                    templateData={"trust_domain": "example.net", "service": "billing"}))
    assert "spiffe://example.net/billing" in san_values(cert)
    _refused(sign("t-mtls-service", csr, "pay.example.com"), 403, "template_refused",
             "mtls-service", "SPIFFE trust domain")

    # smime-email
    csr = make_csr(work, "email:alice@example.com", subject="/CN=alice@example.com")
    cert = _ok(sign("t-smime-email", csr, "alice@example.com"))
    assert _eku(cert) == {ExtendedKeyUsageOID.EMAIL_PROTECTION}
    assert ext(cert, x509.SubjectAlternativeName).get_values_for_type(x509.RFC822Name) == [
        "alice@example.com"]
    assert ext(cert, x509.KeyUsage).key_agreement
    nomail = make_csr(work, "DNS:alice.example.com", cn="alice.example.com")
    _refused(sign("t-smime-email", nomail, "alice.example.com"), 403, "template_refused",
             "email address")

    # code-signing
    csr = make_csr(work, "email:build@example.com",
                   subject="/C=US/O=Example Corp/CN=Build Agent")
    cert = _ok(sign("t-code-signing", csr, "Build Agent", "build@example.com"))
    assert _eku(cert) == {ExtendedKeyUsageOID.CODE_SIGNING}
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == \
        "Example Corp"
    assert cn_of(cert) == "Build Agent" and san_values(cert) == ["build@example.com"]

    # a stored template (added with `appliance template add`)
    csr = make_csr(work, "DNS:c.example.com", cn="c.example.com")
    cert = _ok(sign("t-custom-org", csr, "c.example.com"))
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == \
        "Custom Template Org"
    assert _eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert server.certificate_rows()[f"{cert.serial_number:x}"]["template"] == "custom-org"
    # ... which `template add` stored although it fails for a request without a DNS name
    # (it warned): such a request is a JSON error naming the template and the fault, and
    # nothing is issued
    before = server.issued_count()
    csr = make_csr(work, "email:p@example.com", cn="A Person")
    _refused(sign("t-custom-org", csr, "p@example.com", "A Person"), 422, "template_error",
             "template 'custom-org'", "no element 0")
    assert server.issued_count() == before

    # a stored template that refuses with fail(): 403 with the template's own message
    csr = make_csr(work, "DNS:x.example.com", cn="x.example.com")
    _refused(sign("t-only-allowed", csr, "x.example.com"), 403, "template_refused",
             "only *.allowed.example, not x.example.com")
    csr = make_csr(work, "DNS:x.allowed.example", cn="x.allowed.example")
    _ok(sign("t-only-allowed", csr, "x.allowed.example"))

    assert server.issued_count() == issued + 7
    refusals = [e for e in server.events("certificate.refused")
                if e["details"]["error"] == "template_refused"]
    assert any("x.example.com" in e["details"]["message"] for e in refusals)


# -- 5. inventory ---------------------------------------------------------------------------


def test_inventory_required_metadata_and_import(server: Server, work: Path) -> None:
    server.cli("provisioner", "add", "inv", "--type", "jwk", "--generate-password",
               "--require-inventory")
    server.cli("provisioner", "add", "iot", "--type", "jwk", "--generate-password",
               "--template", "iot-device",
               "--require-inventory")
    issued = server.issued_count()

    _refused(_issue(server, work, "host1.example.com", provisioner="inv"), 403,
             "inventory_refused", "no record matches")
    server.cli("inventory", "add", "host1", "--dns", "host1.example.com",
               "--meta", "team=web")
    cert = _ok(_issue(server, work, "host1.example.com", provisioner="inv"))
    row = server.certificate_rows()[f"{cert.serial_number:x}"]
    assert row["inventory_record_id"] is not None
    # A name of the record plus one without any record: refused, naming the stray name.
    _refused(_issue(server, work, "host1.example.com", "stray.example.com", provisioner="inv"),
             403, "inventory_refused", "stray.example.com")

    # The iot-device template puts the record's metadata into the subject.
    _refused(server.sign(make_csr(work, subject="/CN=sensor-0001"),
                         server.token("sensor-0001", provisioner="iot")),
             403, "inventory_refused")
    server.cli("inventory", "add", "sensor-1", "--kind", "device", "--cn", "sensor-0001",
               "--meta", "device_id=DEV-0001", "--meta", "serial_number=SN-42")
    cert = _ok(server.sign(make_csr(work, subject="/CN=sensor-0001"),
                           server.token("sensor-0001", provisioner="iot")))
    assert cn_of(cert) == "DEV-0001"
    assert cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "SN-42"
    assert _eku(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert san_values(cert) == []

    # CSV import; then names spanning two records are refused.
    (work / "hosts.csv").write_text(
        "name,kind,owner,dns,ip,meta.team\n"
        "host2,host,ops,host2.example.com;www.host2.example.com,10.9.9.9,db\n")
    server.cli("inventory", "import", str(work / "hosts.csv"))
    cert = _ok(_issue(server, work, "host2.example.com", "www.host2.example.com", "10.9.9.9",
                      provisioner="inv"))
    assert set(san_values(cert)) == {"host2.example.com", "www.host2.example.com", "10.9.9.9"}
    _refused(_issue(server, work, "host1.example.com", "host2.example.com", provisioner="inv"),
             403, "inventory_refused", "more than one inventory record")
    assert server.issued_count() == issued + 3
    events = {e["object_ids"]["serial"]: e for e in server.events("certificate.issued")}
    assert events[f"{cert.serial_number:x}"]["details"]["inventory"] == "host2"

    # YAML import is all-or-nothing: one bad record refuses the file and adds nothing.
    (work / "bad.yaml").write_text(
        "records:\n"
        "  - {name: host3, identifiers: {dns: [host3.example.com]}}\n"
        "  - {name: host4, identifiers: {ip: [not-an-ip]}}\n")
    bad = server.cli("inventory", "import", str(work / "bad.yaml"), check=False)
    assert bad.returncode == 1 and "not-an-ip" in bad.stderr
    (work / "hosts.yaml").write_text(
        "records:\n"
        "  - name: host3\n"
        "    kind: service\n"
        "    owner: web-team\n"
        "    identifiers: {dns: [host3.example.com]}\n"
        "    metadata: {tier: gold}\n")
    server.cli("inventory", "import", str(work / "hosts.yaml"))
    listed = {r["name"]: r for r in json.loads(server.cli("inventory", "list", "--json").stdout)}
    assert listed["host3"]["metadata"] == {"tier": "gold"} and "host4" not in listed
    _ok(_issue(server, work, "host3.example.com", provisioner="inv"))


# -- 6. validity ----------------------------------------------------------------------------


def _lasts(cert: x509.Certificate, since: datetime, seconds: int) -> bool:
    """The certificate ends ``seconds`` after the moment it was issued (at or after
    ``since``); its notBefore is backdated by up to a minute, for slow client clocks."""
    issued = since.replace(microsecond=0)
    end = cert.not_valid_after_utc
    return (issued + timedelta(seconds=seconds) <= end
            <= datetime.now(UTC) + timedelta(seconds=seconds)
            and end - timedelta(seconds=seconds + 61) <= cert.not_valid_before_utc <= issued)


def test_validity_claims(server: Server, work: Path) -> None:
    server.cli("provisioner", "add", "short", "--type", "jwk", "--generate-password",
               "--max-duration", "1h")
    now = datetime.now(UTC)
    msg = _refused(_issue(server, work, "v1.example.com", provisioner="short",
                          notAfter=(now + timedelta(hours=2)).isoformat()),
                   400, "bad_request", "exceeds the maximum of 3600s")
    assert "7" in msg  # the requested duration, in seconds
    # No duration asked: the default (24h for the authority) capped by the provisioner's max.
    t = datetime.now(UTC)
    cert = _ok(_issue(server, work, "v2.example.com", provisioner="short"))
    assert _lasts(cert, t, 3600), (cert.not_valid_before_utc, cert.not_valid_after_utc)
    t = datetime.now(UTC)
    cert = _ok(_issue(server, work, "v3.example.com"))
    assert _lasts(cert, t, 86400), (cert.not_valid_before_utc, cert.not_valid_after_utc)
    # Asked for in the token (`appliance token --not-after 30m`).
    csr = make_csr(work, "DNS:v4.example.com", cn="v4.example.com")
    ott = server.cli("token", "admin", "--san", "v4.example.com", "--not-after",
                     "30m", "--password-file", server.password_file()).stdout.strip()
    t = datetime.now(UTC)
    cert = _ok(server.sign(csr, ott))
    assert _lasts(cert, t, 1800), (cert.not_valid_before_utc, cert.not_valid_after_utc)
    # Asked for in the request: honoured to the second.
    until = (datetime.now(UTC) + timedelta(minutes=45)).replace(microsecond=0)
    cert = _ok(_issue(server, work, "v5.example.com", provisioner="short",
                      notAfter=until.isoformat().replace("+00:00", "Z")))
    assert cert.not_valid_after_utc == until
    _refused(_issue(server, work, "v6.example.com",
                    notAfter=(now - timedelta(hours=1)).isoformat()),
             400, "bad_request", "in the past")
    _refused(_issue(server, work, "v7.example.com",
                    notAfter=(now + timedelta(minutes=2)).isoformat()),
             400, "bad_request", "below the minimum")


# -- 7. concurrency -------------------------------------------------------------------------


def test_concurrent_signing(server: Server, root_pem: str, work: Path) -> None:
    n = 40
    names = [f"c{i}.load.example.com" for i in range(n)]
    csrs = [make_csr(work, f"DNS:{name}", cn=name) for name in names]
    otts = [server.token(name) for name in names]
    before = server.issued_count()

    def one(i: int) -> requests.Response:
        with requests.Session() as s:
            return server.sign(csrs[i], otts[i], session=s)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(one, range(n)))
    elapsed = time.monotonic() - started
    assert [r.status_code for r in responses] == [201] * n, [
        r.text for r in responses if r.status_code != 201][:3]
    bodies = [r.json() for r in responses]
    assert len({b["serial"] for b in bodies}) == n
    assert server.issued_count() == before + n
    for i, b in enumerate(bodies):
        assert san_values(load_pem(b["crt"])) == [names[i]]
    assert len({b["ca"] for b in bodies}) == 1
    proc = verify_chain(work, root_pem, [bodies[0]["ca"]], [b["crt"] for b in bodies])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(": OK") == n
    assert elapsed < 60


# -- 8. hardening ---------------------------------------------------------------------------


def test_security_headers_limits_and_json_errors(server: Server) -> None:
    for r in (server.get("/1.0/health"), server.get("/nope"),
              server.post("/1.0/sign", data=b"not json")):
        assert r.headers["Strict-Transport-Security"].startswith("max-age=")
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers["X-Frame-Options"] == "DENY"
        assert "gunicorn" not in r.headers.get("Server", "").lower()
    assert server.get("/1.0/health").json() == {"status": "ok"}
    # Over service.max_request_bytes: 413 JSON, and the keep-alive connection stays usable
    # (gunicorn drops it, unannounced, if more than 64 KiB of a body is left unread).
    for _ in range(8):
        _refused(server.post("/1.0/sign", data=b"x" * 70_000,
                             headers={"Content-Type": "application/json"}),
                 413, "request_entity_too_large")
        _refused(server.post("/1.0/sign", json={}), 400, "bad_request")
    _refused(server.post("/1.0/sign", data=b"not json",
                         headers={"Content-Type": "application/json"}), 400, "bad_request")
    _refused(server.post("/1.0/sign", data=b"csr=1&ott=2"), 400, "bad_request")
    _refused(server.get("/nope"), 404, "not_found")
    _refused(server.get("/1.0/sign"), 405, "method_not_allowed")


def test_provisioners_are_public_keys_only(server: Server) -> None:
    r = server.get("/1.0/provisioners")
    assert r.status_code == 200
    provs = {p["name"]: p for p in r.json()["provisioners"]}
    admin = provs["admin"]
    assert admin["type"] == "jwk" and admin["authority"] == "issuing"
    jwk = admin["key"]
    assert jwk["kty"] == "EC" and jwk["crv"] == "P-256" and "d" not in jwk
    pub = server.key("admin").public_key().public_numbers()
    assert int.from_bytes(_b64(jwk["x"]), "big") == pub.x
    private = server.key("admin").private_numbers().private_value
    text = r.text
    assert "PRIVATE" not in text and '"d"' not in text
    assert _b64u(private.to_bytes(32, "big")) not in text
    # The public view leaves out operator-only settings.
    assert "require_inventory" not in admin and "created_at" not in admin


def _b64(s: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _b64u(b: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def test_roots_and_public_listener(server: Server, root_pem: str) -> None:
    root = load_pem(root_pem)
    assert root.subject == root.issuer
    # DIR/tls/roots.pem, what clients (and this test) trust for the API, holds the root.
    assert root in x509.load_pem_x509_certificates(server.roots.read_bytes())
    with server.db() as conn:
        (db_der,) = conn.execute(
            "SELECT certificate_der FROM authorities WHERE name = 'root'").fetchone()
    assert root.public_bytes(serialization.Encoding.DER) == db_der
    r = requests.get(f"{server.http}/ca/root.crt", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/pkix-cert"
    assert r.content == db_der
    pem = requests.get(f"{server.http}/ca/root.pem", timeout=10)
    assert pem.status_code == 200
    assert x509.load_pem_x509_certificate(pem.content) == root
    assert requests.get(f"{server.http}/health", timeout=10).status_code == 200
    assert requests.get(f"{server.http}/ca/nosuch.crt", timeout=10).status_code == 404
    assert requests.get(f"{server.http}/ca/../appliance.db", timeout=10).status_code == 404
    for method in ("POST", "PUT", "DELETE"):
        r = requests.request(method, f"{server.http}/ca/root.crt", data=b"x", timeout=10)
        assert r.status_code == 405, method
    # The API's own certificate came out of the pipeline: issued, stored and audited.
    api = x509.load_pem_x509_certificates((server.data_dir / "tls" / "api.crt").read_bytes())
    assert ipaddress.ip_address("127.0.0.1") in ext(
        api[0], x509.SubjectAlternativeName).get_values_for_type(x509.IPAddress)
    assert server.certificate_rows()[f"{api[0].serial_number:x}"]["status"] == "issued"


# -- 9. failing closed, and the audit log at the end ------------------------------------------


def test_a_revoked_issuing_authority_issues_nothing(server: Server, work: Path) -> None:
    _ok(_issue(server, work, "before.example.com"))  # every worker may have cached the CA
    issued = server.issued_count()
    with server.db(readonly=False) as conn:
        conn.execute("UPDATE authorities SET status = 'revoked' WHERE name = 'issuing'")
    try:
        for i in range(4):  # more requests than workers: none may sign
            r = _issue(server, work, f"after{i}.example.com")
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "authority_unavailable"
            assert "issuing" in r.json()["message"], r.text
        assert server.issued_count() == issued
    finally:
        with server.db(readonly=False) as conn:
            conn.execute("UPDATE authorities SET status = 'active' WHERE name = 'issuing'")
    _ok(_issue(server, work, "again.example.com"))


def test_audit_log_accounts_for_every_certificate(server: Server) -> None:
    rows = [r for r in server.certificate_rows().values() if r["status"] == "issued"]
    events = server.events("certificate.issued")
    assert sorted(e["object_ids"]["serial"] for e in events) == sorted(
        r["serial_hex"] for r in rows)
    assert not [r for r in server.certificate_rows().values() if r["status"] == "reserved"]
    verify = server.cli("audit", "verify", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "intact" in verify.stdout
