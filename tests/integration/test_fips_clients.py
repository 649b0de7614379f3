"""Issue 14: the issuance and ACME clients, run once against a node in FIPS mode.

The same real clients as the default-mode tests (``appliance token`` + curl for
``/1.0/sign``, ``appliance renew`` over mutual TLS, certbot and lego over ACME with EAB,
``openssl verify`` and ``openssl ocsp``), against ``quickstart --fips``: what they ask for
by default is approved, so they work unchanged, and the FIPS-only parts (the TLS suites,
the power-on self-tests, the sealed manifest) are in the path of every request.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acme_dns import DnsServer
from tests.conftest import operator_spec, run_cli
from tests.integration.test_acme import (
    Env,
    certbot,
    certbot_certonly,
    lego,
    ocsp_status,
    split_chain,
    verify,
)
from tests.service_helpers import configure, free_port, load_pem, make_csr, san_values, serving

pytestmark = pytest.mark.skipif(not shutil.which("certbot") or not shutil.which("lego"),
                                reason="Debian's certbot and lego are installed by install.sh")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("fipsclients")
    d = base / "data"
    run_cli("quickstart", "--dir", str(d), "--fips", check=True)
    records = base / "records.txt"
    records.touch()
    http01, alpn = free_port(), free_port()
    # The server's operator commands (provisioner add, eab add) need the trial operator.
    with DnsServer(records) as dns, pytest.MonkeyPatch.context() as mp:
        mp.setenv("APPLIANCE_OPERATOR", operator_spec(d))
        configure(d, "acme", http01_port=http01, tls_alpn01_port=alpn,
                  resolvers=[f"127.0.0.1:{dns.port}"])
        run_cli("--dir", str(d), "provisioner", "add", "team", "--type", "acme",
                "--require-eab", check=True)
        with serving(d, rate_limit_per_minute=0) as srv:
            yield Env(srv, dns, http01, alpn, records, base)
        assert srv.proc.returncode == 0, srv.log.read_text()


def test_the_node_is_in_fips_mode_and_passed_its_power_on_tests(env: Env) -> None:
    status = json.loads(env.server.cli("fips", "status", "--json").stdout)
    assert status["mode"] == {"recorded": "fips", "configured": "fips", "consistent": True}
    assert env.server.events("fips.selftest.passed")
    assert not env.server.events("fips.selftest.failed")


def test_token_curl_sign_and_mtls_renew(env: Env, tmp_path: Path) -> None:
    srv = env.server
    for key in ("ec", "rsa:3072"):
        work = tmp_path / key.replace(":", "-")
        csr = make_csr(work, "DNS:web.fips.test", cn="web.fips.test", key=key)
        (work / "req.csr").write_text(csr)
        token = srv.cli("token", "admin", "--san", "web.fips.test", "--password-file",
                        srv.password_file()).stdout.strip()
        body = json.dumps({"csr": csr, "ott": token})
        out = subprocess.run(
            ["curl", "-s", "--cacert", str(srv.roots), f"{srv.api}/1.0/sign",
             "-H", "Content-Type: application/json", "-H", f"Host: 127.0.0.1:{srv.api_port}",
             "--data-binary", body], capture_output=True, text=True, timeout=60, check=True)
        doc = json.loads(out.stdout)
        assert "crt" in doc, doc
        leaf = work / "web.crt"
        leaf.write_text(doc["crt"])
        assert san_values(load_pem(doc["crt"])) == ["web.fips.test"]
        key_file = next(work.glob("csr-*.key"))
        renewed = work / "renewed.crt"
        proc = run_cli("renew", str(leaf), str(key_file), "--ca-url", srv.api, "--root",
                       str(srv.roots), "--out", str(renewed))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        new = load_pem(renewed.read_text())
        assert new.serial_number != load_pem(doc["crt"]).serial_number
    # An RSA-1024 CSR from the same clients: refused, naming FIPS.
    work = tmp_path / "weak"
    csr = make_csr(work, "DNS:web.fips.test", cn="web.fips.test", key="rsa:1024")
    token = srv.cli("token", "admin", "--san", "web.fips.test", "--password-file",
                    srv.password_file()).stdout.strip()
    resp = srv.sign(csr, token)
    assert resp.status_code == 400 and resp.json()["error"] == "not_approved", resp.text
    assert "FIPS" in resp.json()["message"]


def test_certbot_http01_with_eab_then_revoke_and_lego_tls_alpn01(env: Env,
                                                                  tmp_path: Path) -> None:
    home = tmp_path / "certbot"
    certbot_certonly(env, home, "web.team.test", provisioner="team", eab=env.eab())
    live = home / "conf" / "live" / "main"
    leaf, issuer = split_chain(live / "fullchain.pem", home)
    verify(env, leaf, issuer)
    assert ocsp_status(env, leaf, issuer) == "good"
    certbot(env, home, "revoke", "--cert-path", str(live / "cert.pem"), "--reason",
            "keycompromise", "--no-delete-after-revoke", "--server", env.directory("team"))
    assert ocsp_status(env, leaf, issuer) == "revoked"

    lg = tmp_path / "lego"
    lego(env, lg, "--domains", "t.team.test", "--tls", "--tls.port",
         f"127.0.0.1:{env.alpn}", "run", provisioner="team", eab=env.eab())
    crt = lg / "certificates" / "t.team.test.crt"
    leaf, issuer = split_chain(crt, lg)
    verify(env, leaf, issuer)
    assert san_values(load_pem(leaf.read_text())) == ["t.team.test"]
    assert os.path.getsize(crt) > 0


def test_acme_finalize_with_an_rsa_1024_csr_is_refused_naming_fips(env: Env) -> None:
    """The protocol client (tests/acme_client.py) with an approved account key and a ready
    order: the CSR's RSA-1024 key is refused at finalize as the client's fault."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tests.integration.test_acme import _csr, _ready_order

    c = env.client("team")
    kid, hmac_key = env.eab()
    assert c.register(eab=(kid, hmac_key)).status_code == 201
    order = _ready_order(env, c, "weak.team.test")
    weak = rsa.generate_private_key(65537, 1024)
    r = c.post(order["finalize"], {"csr": _csr("weak.team.test", key=weak)})  # type: ignore[arg-type]
    problem = r.json()
    assert r.status_code == 400, r.text
    assert problem["type"].endswith((":badPublicKey", ":badCSR")), problem
    assert "FIPS" in problem["detail"] and "RSA-1024" in problem["detail"], problem
    refused = [e for e in env.server.events("certificate.refused")
               if e["details"].get("error") == "not_approved"]
    assert refused, "the refusal is audited"
