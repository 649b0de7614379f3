"""Approved algorithms only in FIPS mode, and the default mode widened (issue 14).

Two running nodes (real SoftHSM, real HTTPS), one per mode, each from one quickstart. Every
CSR is made by ``openssl req``; TLS is probed with ``openssl s_client``.

- FIPS: RSA-1024, SHA-1-signed and Ed25519 CSRs, and an RSA-2048 CSR for a certificate valid
  past 2030, are refused through ``/1.0/sign`` with 400 ``not_approved`` naming FIPS, audited
  (``certificate.refused``), nothing issued; P-256 and RSA-2048 (valid before 2031) pass.
  An HS256 provisioner token and an RSA-1024 ACME account key are refused naming FIPS
  (401; ACME ``badPublicKey``) and audited as ``algorithm.refused``. The API offers no
  ChaCha20-Poly1305 (TLS 1.2 or 1.3) and no X25519.
- Default: an Ed25519 CSR gets a certificate that ``openssl verify`` accepts (its OCSP
  response too), and the API's TLS negotiates ChaCha20-Poly1305.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from tests.acme_client import Client, b64
from tests.conftest import operator_spec, run_cli
from tests.service_helpers import Server, load_pem, make_csr, serving, verify_chain

NAME = "algo.example.com"


def _quickstart(d: Path, fips: bool) -> None:
    run_cli("quickstart", "--dir", str(d), *(["--fips"] if fips else []), check=True)


@pytest.fixture(scope="module")
def fips(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("fipsalgos") / "data"
    _quickstart(d, fips=True)
    # Long enough for a certificate past 2030 (the issuing CA is valid five years).
    run_cli("--dir", str(d), "provisioner", "update", "admin", "--max-duration", "40000h",
            "--operator", operator_spec(d), check=True)
    with serving(d, rate_limit_per_minute=0) as srv:
        yield srv


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("defaultalgos") / "data"
    _quickstart(d, fips=False)
    with serving(d, rate_limit_per_minute=0) as srv:
        yield srv


def _csr(work: Path, key: str, *extra: str) -> str:
    """``openssl req`` for DNS:NAME with a ``key`` of ``rsa:BITS`` or ``ec``, or an Ed25519
    key made by ``openssl genpkey``; ``extra`` are more ``openssl req`` options."""
    work.mkdir(parents=True, exist_ok=True)
    if key == "ed25519":
        keyfile = work / "ed25519.key"
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(keyfile)],
                       check=True, capture_output=True, timeout=60)
        out = work / "ed25519.csr"
        subprocess.run(["openssl", "req", "-new", "-key", str(keyfile), "-subj", f"/CN={NAME}",
                        "-addext", f"subjectAltName=DNS:{NAME}", "-out", str(out)],
                       check=True, capture_output=True, timeout=60)
        return out.read_text()
    if not extra:
        return make_csr(work, f"DNS:{NAME}", cn=NAME, key=key)
    stem = work / f"csr-{key.replace(':', '')}"
    keyopt = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if key == "ec" else [
        "-newkey", key]
    subprocess.run(["openssl", "req", "-new", *keyopt, "-nodes", "-keyout", f"{stem}.key",
                    "-subj", f"/CN={NAME}", "-addext", f"subjectAltName=DNS:{NAME}", *extra,
                    "-out", f"{stem}.csr"], check=True, capture_output=True, timeout=60)
    return Path(f"{stem}.csr").read_text()


def _issued(server: Server) -> int:
    return len(server.events("certificate.issued"))


def _refusals(server: Server) -> list[dict[str, object]]:
    return server.events("certificate.refused")


@pytest.mark.parametrize("key,extra,named", [
    ("rsa:1024", (), "RSA-1024"),
    ("ec", ("-sha1",), "SHA-1"),
    ("ed25519", (), "Ed25519"),
])
def test_fips_refuses_unapproved_csrs(fips: Server, tmp_path: Path, key: str,
                                      extra: tuple[str, ...], named: str) -> None:
    csr = _csr(tmp_path, key, *extra)
    issued, refused, rows = _issued(fips), len(_refusals(fips)), len(fips.certificate_rows())
    r = fips.sign(csr, fips.token(NAME))
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "not_approved", body
    assert body["message"].startswith("not approved in FIPS mode: ") and named in body["message"]
    assert _issued(fips) == issued and len(fips.certificate_rows()) == rows
    events = _refusals(fips)
    assert len(events) == refused + 1
    details = events[-1]["details"]
    assert isinstance(details, dict) and details["error"] == "not_approved"
    assert named in str(details["message"])


def test_fips_refuses_rsa_2048_past_2030(fips: Server, tmp_path: Path) -> None:
    csr = _csr(tmp_path, "rsa:2048")
    late = datetime(2031, 3, 1, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = fips.sign(csr, fips.token(NAME), notAfter=late)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "not_approved"
    assert "not approved in FIPS mode: RSA-2048 (112-bit security strength)" in \
        r.json()["message"] and "2031-03-01" in r.json()["message"]
    # ...and a P-256 key for the same lifetime is fine.
    r = fips.sign(_csr(tmp_path / "p256", "ec"), fips.token(NAME), notAfter=late)
    assert r.status_code == 201, r.text
    assert load_pem(r.json()["crt"]).not_valid_after_utc.year == 2031


def test_fips_accepts_approved_csrs(fips: Server, tmp_path: Path) -> None:
    for key in ("ec", "rsa:2048", "rsa:3072"):
        r = fips.sign(_csr(tmp_path / key.replace(":", ""), key), fips.token(NAME))
        assert r.status_code == 201, (key, r.text)
        body = r.json()
        root = body["certChain"][-1]
        proc = verify_chain(tmp_path, root, [body["ca"]], body["crt"])
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_default_mode_issues_for_an_ed25519_csr(default: Server, tmp_path: Path) -> None:
    r = default.sign(_csr(tmp_path, "ed25519"), default.token(NAME))
    assert r.status_code == 201, r.text
    body = r.json()
    leaf = load_pem(body["crt"])
    assert isinstance(leaf.public_key(), ed25519.Ed25519PublicKey)
    root = body["certChain"][-1]
    proc = verify_chain(tmp_path, root, [body["ca"]], body["crt"], "-purpose", "sslserver")
    assert proc.returncode == 0 and ": OK" in proc.stdout, proc.stdout + proc.stderr
    # Its OCSP status, as a relying party asks for it.
    files = {n: tmp_path / f"{n}.pem" for n in ("leaf", "ca", "root")}
    files["leaf"].write_text(body["crt"])
    files["ca"].write_text(body["ca"])
    files["root"].write_text(root)
    ocsp = subprocess.run(["openssl", "ocsp", "-issuer", str(files["ca"]), "-cert",
                           str(files["leaf"]), "-url", f"{default.http}/ocsp", "-CAfile",
                           str(files["root"]), "-verify_other", str(files["ca"])],
                          capture_output=True, text=True, timeout=60, check=False)
    assert ocsp.returncode == 0 and ": good" in ocsp.stdout, ocsp.stdout + ocsp.stderr


# -- refusals before the pipeline: a provisioner token, an ACME account key -----------------

def test_fips_refuses_an_hs256_token_naming_fips_and_audits(fips: Server, tmp_path: Path) -> None:
    claims = jwt.decode(fips.token(NAME), options={"verify_signature": False})
    hs256 = jwt.encode(claims, "k" * 32, algorithm="HS256")
    before = len(fips.events("algorithm.refused"))
    r = fips.sign(_csr(tmp_path, "ec"), hs256)
    assert r.status_code == 401, r.text
    assert r.json()["message"] == "not approved in FIPS mode: token algorithm 'HS256'; use ES256"
    events = fips.events("algorithm.refused")
    assert len(events) == before + 1 and events[-1]["outcome"] == "denied"
    assert events[-1]["details"]["entry"] == "rest"
    assert "HS256" in events[-1]["details"]["reason"]


def _rs256_new_account(c: Client, key: rsa.RSAPrivateKey) -> requests.Response:
    n = key.public_key().public_numbers()
    jwk = {"kty": "RSA", "n": b64(n.n.to_bytes((n.n.bit_length() + 7) // 8, "big")),
           "e": b64(n.e.to_bytes(3, "big"))}
    url = c.dir["newAccount"]
    p64 = b64(json.dumps({"alg": "RS256", "url": url, "nonce": c.new_nonce(),
                          "jwk": jwk}).encode())
    body = b64(b'{"termsOfServiceAgreed": true}')
    sig = key.sign(f"{p64}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return c.session.post(url, data=json.dumps({"protected": p64, "payload": body,
                                                "signature": b64(sig)}),
                          headers={"Content-Type": "application/jose+json"},
                          verify=str(c.ca_file), timeout=60)


def test_fips_acme_rsa_1024_account_key_is_bad_public_key(fips: Server) -> None:
    c = Client(f"{fips.api}/acme/acme/directory", fips.roots)
    before = len(fips.events("algorithm.refused"))
    r = _rs256_new_account(c, rsa.generate_private_key(65537, 1024))
    assert r.status_code == 400, r.text
    problem = r.json()
    assert problem["type"] == "urn:ietf:params:acme:error:badPublicKey"
    assert problem["detail"].startswith("not approved in FIPS mode: RSA-1024 account key")
    events = fips.events("algorithm.refused")
    assert len(events) == before + 1 and events[-1]["details"]["entry"] == "acme"
    with fips.db() as conn:
        accounts = conn.execute("SELECT COUNT(*) FROM acme_accounts").fetchone()[0]
    assert _rs256_new_account(c, rsa.generate_private_key(65537, 2048)).status_code == 201
    with fips.db() as conn:
        assert conn.execute("SELECT COUNT(*) FROM acme_accounts").fetchone()[0] == accounts + 1


# -- a ceremony ---------------------------------------------------------------------------

ROOT_2045 = """version: 1
name: long-root
operators: [op]
steps:
  - id: root-key
    type: key
    label: {label}
    key_type: {key_type}
  - id: root
    type: root
    key: root-key
    authority: {label}
    subject: {{CN: Long Root}}
    validity: {{not_after: '2045-01-01T00:00:00Z'}}
"""


def test_fips_ceremony_refuses_an_rsa_2048_root_to_2045(fips: Server, tmp_path: Path) -> None:
    script = tmp_path / "root.yaml"
    script.write_text(ROOT_2045.format(label="long-root", key_type="rsa-2048"))
    before = len(fips.events("ceremony.refused"))
    for args in (("--dry-run",), ()):
        proc = run_cli("--dir", str(fips.data_dir), "ceremony", "run", str(script), *args)
        assert proc.returncode != 0, proc.stdout
        assert "not approved in FIPS mode: RSA-2048 (112-bit security strength)" in \
            proc.stderr, proc.stderr
    events = fips.events("ceremony.refused")
    assert len(events) == before + 1  # the run, not the dry run (which writes nothing)
    assert "RSA-2048" in events[-1]["details"]["reason"]
    assert not fips.events("ceremony.started") or all(
        e["object_ids"].get("ceremony") != "long-root" for e in fips.events("ceremony.started"))
    keys = run_cli("--dir", str(fips.data_dir), "hsm", "keys", check=True).stdout
    assert "long-root" not in keys
    # The same script with an RSA-3072 key passes validation (the plan prints).
    script.write_text(ROOT_2045.format(label="long-root", key_type="rsa-3072"))
    proc = run_cli("--dir", str(fips.data_dir), "ceremony", "run", str(script), "--dry-run")
    assert proc.returncode == 0, proc.stderr


# -- the API's TLS ---------------------------------------------------------------------------

def _handshake(server: Server, *opts: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{server.api_port}",
         "-servername", "127.0.0.1", *opts],
        input="", capture_output=True, text=True, timeout=60, check=False)


def _negotiated(proc: subprocess.CompletedProcess[str]) -> bool:
    return proc.returncode == 0 and "Cipher is (NONE)" not in proc.stdout \
        and "Cipher is " in proc.stdout


CHACHA12 = ("-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")
CHACHA13 = ("-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256")
X25519 = ("-tls1_3", "-groups", "X25519")


@pytest.mark.parametrize("opts", [CHACHA12, CHACHA13, X25519])
def test_fips_tls_refuses_chacha20_and_x25519(fips: Server, opts: tuple[str, ...]) -> None:
    proc = _handshake(fips, *opts)
    assert not _negotiated(proc), proc.stdout


@pytest.mark.parametrize("opts", [
    ("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"),
    ("-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"),
    ("-tls1_3", "-groups", "P-384"),
])
def test_fips_tls_accepts_aes_gcm_and_nist_curves(fips: Server, opts: tuple[str, ...]) -> None:
    proc = _handshake(fips, *opts)
    assert _negotiated(proc), proc.stdout + proc.stderr


@pytest.mark.parametrize("opts", [CHACHA12, CHACHA13, X25519])
def test_default_tls_accepts_chacha20_and_x25519(default: Server, opts: tuple[str, ...]) -> None:
    proc = _handshake(default, *opts)
    assert _negotiated(proc), proc.stdout + proc.stderr
