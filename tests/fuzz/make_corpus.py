"""Writes the seed corpus (tests/fuzz/corpus/<target>/): small, well-formed inputs and the
known bad ones, from which the fuzzers mutate. Run again only to change the seeds:

    python -m tests.fuzz.make_corpus
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from tests import bad_csrs
from tests.acme_client import b64, jwk_of, sign

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"


def _write(target: str, seeds: list[bytes]) -> None:
    d = CORPUS / target
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for s in seeds:
        (d / hashlib.sha1(s).hexdigest()[:16]).write_bytes(s)


def _cert(key: ec.EllipticCurvePrivateKey, cn: str = "leaf.test") -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(4242)
            .not_valid_before(now).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), False)
            .sign(key, hashes.SHA256()))


def sign_seeds() -> list[bytes]:
    good = bad_csrs.good_csr("f.test", cn="f.test")
    der = x509.load_pem_x509_csr(good.encode()).public_bytes(serialization.Encoding.DER)
    bodies = [
        {"csr": good, "ott": "e30.e30.sig"},
        {"csr": good, "ott": "x", "notBefore": "2026-12-04T10:00:00Z",
         "notAfter": "2026-12-05T10:00:00+01:00"},
        {"csr": good, "ott": "x", "templateData": {"team": "a", "n": [1, {"b": None}]}},
    ]
    seeds = [b"\x00" + json.dumps(b).encode() for b in bodies]
    seeds.append(b"\x01" + der)
    seeds += [b"\x01" + d for d in bad_csrs.cases().values()]
    seeds.append(b"\x01" + bad_csrs.csr_der(extensions=[bad_csrs.extension(
        bad_csrs.SAN_OID, bad_csrs.san_dns(b"a.test", b"*.b.test"))]))
    seeds += [b"\x02" + json.dumps(v).encode() for v in (
        {"team": "x"}, {"sans": ["a.test"], "cn": "0.0"}, {"k": "\u00e9", "l": [1.5, True]})]
    t = int(time.time())
    claims = {"iss": "admin", "aud": "https://127.0.0.1:8443/1.0/sign", "sub": "f.test",
              "sans": ["f.test"], "iat": t, "nbf": t, "exp": t + 300,
              "jti": "0123456789abcdef", "cert_lifetime": 3600}
    timed = json.dumps(claims).replace(str(t + 300), "$EXP").replace(str(t), "$NOW").encode()
    seeds.append(b"\x04" + timed)
    seeds.append(b"\x05" + timed)
    seeds.append(b"\x04" + json.dumps({**claims, "exp": str(t + 300), "sub": 5}).encode())
    seeds.append(b"\x03" + jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()),
                                       algorithm="ES256").encode())
    return seeds


def revoke_seeds() -> list[bytes]:
    return [json.dumps(b).encode() for b in (
        {"serial": "1a2b3c", "reasonCode": 1},
        {"serial": "0x01:02", "reason": "keyCompromise", "ott": "e30.e30.sig"},
        {"serial": "ff", "reasonCode": "4"},
    )]


def renew_seeds() -> list[bytes]:
    k = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(k)
    x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
    t = int(time.time())
    claims = {"aud": "https://ca.test/1.0/renew", "iat": t, "nbf": t, "exp": t + 600,
              "jti": "0123456789abcdef"}
    return [b"\x00" + jwt.encode(claims, k, algorithm="ES256", headers={"x5c": x5c}).encode(),
            b"\x00" + jwt.encode({**claims, "exp": "soon"}, k, algorithm="ES256",
                                  headers={"x5c": x5c}).encode(),
            b"\x01" + json.dumps(claims).replace(str(t + 600), "$EXP").replace(
                str(t), "$NOW").encode(),
            b"\x01" + json.dumps({**claims, "iat": "1", "jti": 5}).encode()]


def ocsp_seeds() -> list[bytes]:
    k = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(k)
    out = []
    for algo in (hashes.SHA1(), hashes.SHA256()):
        der = (ocsp.OCSPRequestBuilder().add_certificate(cert, cert, algo)
               .build().public_bytes(serialization.Encoding.DER))
        out += [der, base64.b64encode(der)]
    return out


def ceremony_seeds() -> list[bytes]:
    files = [REPO / "appliance" / "ceremony" / "quickstart.yaml",
             *sorted((REPO / "ceremonies").glob("*.yaml"))]
    return [f.read_bytes() for f in files if f.stat().st_size < 8000]


def template_seeds() -> list[bytes]:
    out = [f.read_bytes() for f in sorted((REPO / "appliance" / "templates" / "builtin")
                                          .glob("*.json.j2"))]
    out.append(json.dumps({"subject": {"common_name": "x.test"},
                           "sans": [{"type": "dns", "value": "x.test"}],
                           "key_usage": ["digital_signature"],
                           "extended_key_usage": ["server_auth"]}).encode())
    return out


def acme_seeds() -> list[bytes]:
    k = ec.generate_private_key(ec.SECP256R1())
    base = "https://ca.test/acme/acme/"
    prot_jwk = {"alg": "ES256", "url": base + "new-account", "nonce": "n0", "jwk": jwk_of(k)}
    prot_kid = {"alg": "ES256", "url": base + "new-order", "nonce": "n1",
                "kid": base + "account/abc"}
    new_key = ec.generate_private_key(ec.SECP256R1())
    inner = sign(new_key, {"alg": "ES256", "url": base + "key-change", "jwk": jwk_of(new_key)},
                 {"account": base + "account/abc", "oldKey": jwk_of(k)})
    csr = x509.load_pem_x509_csr(bad_csrs.good_csr("a.test", "b.test").encode())
    der = csr.public_bytes(serialization.Encoding.DER)
    payloads = [
        (prot_jwk, {"termsOfServiceAgreed": True, "contact": ["mailto:a@b.test"]}),
        (prot_kid, {"identifiers": [{"type": "dns", "value": "a.test"},
                                    {"type": "ip", "value": "192.0.2.1"}],
                    "notAfter": "2026-12-05T00:00:00Z"}),
        (prot_kid, inner),
        (prot_kid, {"csr": b64(der), "identifiers": [{"type": "dns", "value": "a.test"},
                                                     {"type": "dns", "value": "b.test"}]}),
        (prot_kid, {"csr": b64(bad_csrs.cases()["duplicate_san"]),
                    "identifiers": [{"type": "dns", "value": "bad.example.com"}]}),
        (prot_kid, None),
    ]
    seeds = [b"\x00" + json.dumps(sign(k, p, body)).encode() for p, body in payloads]
    seeds += [b"\x01" + json.dumps(body).encode() for _, body in payloads if body]
    seeds += [b"\x02" + json.dumps(p).encode() for p in (prot_jwk, prot_kid)]
    seeds += [b"\x03" + der, b"\x03" + bad_csrs.cases()["duplicate_san"]]
    return seeds


def app_seeds() -> list[bytes]:
    """For fuzz_app: the endpoint's index (fuzz_app.ENDPOINTS), then the body."""
    out = [b"\x00" + s[1:] for s in sign_seeds() if s[:1] == b"\x00"]
    out += [b"\x01" + s for s in revoke_seeds()]
    out += [b"\x02" + s[1:] for s in renew_seeds() if s[:1] == b"\x00"]
    envelopes = [s[1:] for s in acme_seeds() if s[:1] == b"\x00"]
    out += [bytes([3 + i % 7]) + e for i, e in enumerate(envelopes)]
    out.append(b"\x09" + b"aGVsbG8.AQ")
    return out


def main() -> None:
    for target, make in (("sign", sign_seeds), ("revoke", revoke_seeds),
                         ("renew", renew_seeds), ("ocsp", ocsp_seeds),
                         ("ceremony", ceremony_seeds), ("templates", template_seeds),
                         ("acme", acme_seeds), ("app", app_seeds)):
        seeds = make()
        _write(target, seeds)
        print(f"{target}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
