"""Revocation and CRLs over real HTTP, with OpenSSL as the relying party."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance import lint
from tests.conftest import run_cli
from tests.service_helpers import Server, make_csr, serving


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("revoke") / "data"
    run_cli("quickstart", "--dir", str(d), check=True)
    run_cli("--dir", str(d), "provisioner", "add", "other", "--type", "jwk",
            "--generate-password", check=True)
    with serving(d) as s:
        yield s


def _issue(server: Server, tmp: Path, name: str, provisioner: str = "admin") -> x509.Certificate:
    resp = server.sign(make_csr(tmp, f"DNS:{name}", cn=name),
                       server.token(name, provisioner=provisioner))
    assert resp.status_code == 201, resp.text
    return x509.load_pem_x509_certificate(resp.json()["crt"].encode())


def _crl(server: Server, authority: str) -> x509.CertificateRevocationList:
    resp = requests.get(f"{server.http}/crl/{authority}.crl", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/pkix-crl"
    return x509.load_der_x509_crl(resp.content)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _openssl_crl_check(tmp: Path, server: Server,
                       leaf: x509.Certificate) -> subprocess.CompletedProcess[str]:
    chain = server.get("/1.0/roots").json()["crts"][0]
    issuing = requests.get(f"{server.http}/ca/issuing.pem", timeout=10).text
    root_crl = _crl(server, "root").public_bytes(serialization.Encoding.PEM)
    issuing_crl = _crl(server, "issuing").public_bytes(serialization.Encoding.PEM)
    (tmp / "root.pem").write_text(chain)
    (tmp / "issuing.pem").write_text(issuing)
    (tmp / "crls.pem").write_bytes(root_crl + issuing_crl)
    (tmp / "leaf.pem").write_bytes(_pem(leaf))
    return subprocess.run(
        ["openssl", "verify", "-crl_check", "-CAfile", str(tmp / "root.pem"), "-untrusted",
         str(tmp / "issuing.pem"), "-CRLfile", str(tmp / "crls.pem"), str(tmp / "leaf.pem")],
        capture_output=True, text=True, check=False)


def test_revoked_certificate_fails_openssl_crl_check(server: Server, tmp_path: Path) -> None:
    server.cli("crl", "publish")
    good = _issue(server, tmp_path, "good.example.com")
    bad = _issue(server, tmp_path, "bad.example.com")
    assert _openssl_crl_check(tmp_path, server, good).returncode == 0
    out = server.cli("revoke", f"{bad.serial_number:x}", "--reason", "keyCompromise").stdout
    assert "revoked" in out and "CRL #" in out
    check = _openssl_crl_check(tmp_path, server, bad)
    assert check.returncode != 0 and "certificate revoked" in check.stdout + check.stderr
    assert _openssl_crl_check(tmp_path, server, good).returncode == 0
    crl = _crl(server, "issuing")
    entry = crl.get_revoked_certificate_by_serial_number(bad.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == \
        x509.ReasonFlags.key_compromise
    events = [e for e in server.events("certificate.revoked")
              if e["object_ids"]["serial"] == f"{bad.serial_number:x}"]
    assert events and events[0]["details"]["reason"] == "keyCompromise"


def test_crl_fields_lint_and_numbers_increase(server: Server, tmp_path: Path) -> None:
    first = _crl(server, "issuing")
    server.cli("crl", "publish", "--authority", "issuing")
    second = _crl(server, "issuing")
    n1 = first.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    n2 = second.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert n2 > n1
    idp = second.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert idp.critical
    assert idp.value.only_contains_user_certs
    assert [u.value for u in idp.value.full_name] == [f"{server.http}/crl/issuing.crl"]
    leaf = _issue(server, tmp_path, "dp.example.com")
    dp = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert dp[0].full_name[0].value == f"{server.http}/crl/issuing.crl"
    assert second.next_update_utc is not None and second.last_update_utc is not None
    assert (second.next_update_utc - second.last_update_utc).days <= 10
    findings = lint.blocking(lint.lint_crl(
        second.public_bytes(serialization.Encoding.DER)))
    assert findings == []
    root_crl = _crl(server, "root")
    assert root_crl.extensions.get_extension_for_class(
        x509.IssuingDistributionPoint).value.only_contains_ca_certs


def test_crl_numbers_survive_a_restart(server: Server, tmp_path: Path) -> None:
    from tests.ceremony_helpers import clone_data_dir

    copy = clone_data_dir(server.data_dir, tmp_path / "copy")
    before = int(run_cli("--dir", str(copy), "crl", "publish", "--authority", "issuing",
                         "--json", check=True).stdout.split('"number": ')[1].split(",")[0])
    with serving(copy) as again:
        after = _crl(again, "issuing").extensions.get_extension_for_class(
            x509.CRLNumber).value.crl_number
        again.cli("crl", "publish", "--authority", "issuing")
        newest = _crl(again, "issuing").extensions.get_extension_for_class(
            x509.CRLNumber).value.crl_number
    assert after == before and newest == before + 1


@pytest.mark.parametrize("reason", ["unspecified", "keyCompromise", "cACompromise",
                                    "affiliationChanged", "superseded", "cessationOfOperation",
                                    "privilegeWithdrawn", "aACompromise"])
def test_each_reason_is_recorded(server: Server, tmp_path: Path, reason: str) -> None:
    leaf = _issue(server, tmp_path, f"{reason.lower()}.example.com")
    server.cli("revoke", f"{leaf.serial_number:x}", "--reason", reason)
    entry = _crl(server, "issuing").get_revoked_certificate_by_serial_number(leaf.serial_number)
    assert entry is not None
    if reason == "unspecified":
        with pytest.raises(x509.ExtensionNotFound):
            entry.extensions.get_extension_for_class(x509.CRLReason)
    else:
        assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.name == \
            {"cACompromise": "ca_compromise", "aACompromise": "aa_compromise"}.get(
                reason, "".join("_" + c.lower() if c.isupper() else c for c in reason))


def test_revoke_over_http(server: Server, tmp_path: Path) -> None:
    mine = _issue(server, tmp_path, "api-revoke.example.com")
    serial = f"{mine.serial_number:x}"
    token = server.token(serial, provisioner="admin",
                         audience=server.audience.replace("/1.0/sign", "/1.0/revoke"))
    resp = server.post("/1.0/revoke", json={"serial": serial, "reasonCode": 4, "ott": token})
    assert resp.status_code == 200, resp.text
    assert resp.json()["reason"] == "superseded"
    again = server.post("/1.0/revoke", json={
        "serial": serial, "reasonCode": 1,
        "ott": server.token(serial, audience=server.audience.replace("/1.0/sign",
                                                                     "/1.0/revoke"))})
    assert again.status_code == 400 and "already revoked" in again.json()["message"]
    # A provisioner may only revoke what it issued.
    theirs = _issue(server, tmp_path, "theirs.example.com", provisioner="other")
    other_serial = f"{theirs.serial_number:x}"
    resp = server.post("/1.0/revoke", json={
        "serial": other_serial, "ott": server.token(
            other_serial, audience=server.audience.replace("/1.0/sign", "/1.0/revoke"))})
    assert resp.status_code == 404
    # A token for one serial cannot revoke another.
    resp = server.post("/1.0/revoke", json={
        "serial": other_serial, "ott": server.token(
            serial, audience=server.audience.replace("/1.0/sign", "/1.0/revoke"))})
    assert resp.status_code == 401
    # certificateHold is refused; unknown serials are 404; no credential is 401.
    hold = server.post("/1.0/revoke", json={
        "serial": other_serial, "reasonCode": 6, "ott": server.token(
            other_serial, provisioner="other",
            audience=server.audience.replace("/1.0/sign", "/1.0/revoke"))})
    assert hold.status_code == 400 and "certificateHold" in hold.json()["message"]
    assert server.post("/1.0/revoke", json={"serial": "abcdef"}).status_code == 401
    assert server.cli("revoke", "0x1234567", check=False).returncode == 1
    malformed = server.cli("revoke", "not-hex", check=False)  # a usage error, as in `cert show`
    assert malformed.returncode == 2 and "not a hexadecimal serial" in malformed.stderr


def test_serve_only_public_for_its_own_unit(server: Server, tmp_path: Path) -> None:
    """``serve --only public`` (appliance-ocsp.service) answers relying parties, no API."""
    import os
    import signal
    import sys
    import time

    from tests.ceremony_helpers import clone_data_dir
    from tests.service_helpers import configure_service, stop_process

    d = clone_data_dir(server.data_dir, tmp_path / "public-only")
    api, http = configure_service(d)
    env = {k: v for k, v in os.environ.items() if k not in ("SOFTHSM2_CONF", "APPLIANCE_CONFIG")}
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "--dir", str(d), "serve",
                             "--only", "public"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{http}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        crl = requests.get(f"http://127.0.0.1:{http}/crl/issuing.crl", timeout=5)
        assert crl.status_code == 200
        x509.load_der_x509_crl(crl.content)
        with pytest.raises(requests.RequestException):
            requests.get(f"https://127.0.0.1:{api}/1.0/health", timeout=2, verify=False)
    finally:
        proc.send_signal(signal.SIGTERM)
        stop_process(proc)
