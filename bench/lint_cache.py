"""Per-certificate pkilint CPU: ``lint_certificate(der, "leaf")`` vs the memoised ``lint_leaf``.

Issue 16: pkilint is ~5.7 ms of the ~15 ms an issuance costs in-process. This prints what
one leaf lint costs both ways in the same run, on certificates like the pipeline's: built by
the appliance's own template build (``templates.build.to_builder`` with the CA's CRL, OCSP
and CA-issuers URLs, as ``issuance/pipeline.py`` does) from descriptions as the shipped
``tls-server`` (EC and RSA keys), ``mtls-service`` and ``iot-device`` templates render them,
each certificate with its own key, names and serial. The shapes are interleaved.

Rounds alternate full / memoised over the same certificates so background load hits both
alike; CPU time is the process's (``time.process_time``). The first memoised round starts
from an empty cache (its first certificate of each shape is a miss) and is reported apart
as ``cold``. It also checks that both give identical findings for every certificate. Never
asserts on time.

    .venv/bin/python bench/lint_cache.py [--count 200] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from appliance import lint
from appliance.lint.shape_cache import ShapeCache
from appliance.templates import build as template_build
from appliance.templates.model import CertificateDescription

BASE = "https://ca.example.com"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "Issuing CA 1")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _descriptions() -> dict[str, tuple[Callable[[int], dict[str, Any]], Callable[[], Any]]]:
    """Shape name -> (description for instance i, subject key maker), as the shipped
    templates render them."""
    def ec_key() -> Any:
        return ec.generate_private_key(ec.SECP256R1())

    rsa_keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048)
                for _ in range(4)]

    def rsa_key() -> Any:
        return random.choice(rsa_keys)  # RSA generation would dominate the set-up

    common = {"basic_constraints": {"ca": False}, "policies": ["2.23.140.1.2.1"]}
    return {
        "tls-server-ec": (lambda i: {
            **common, "subject": {"CN": f"host{i}.example.com"},
            "sans": [{"type": "dns", "value": f"host{i}.example.com"},
                     {"type": "ip", "value": f"10.{i // 250 % 250}.{i % 250}.1"}],
            "key_usage": ["digital_signature"],
            "extended_key_usage": ["server_auth", "client_auth"]}, ec_key),
        "tls-server-rsa": (lambda i: {
            **common, "subject": {"CN": f"www{i}.example.org"},
            "sans": [{"type": "dns", "value": f"www{i}.example.org"}],
            "key_usage": ["digital_signature", "key_encipherment"],
            "extended_key_usage": ["server_auth", "client_auth"]}, rsa_key),
        "mtls-service": (lambda i: {
            "basic_constraints": {"ca": False}, "policies": [],
            "subject": {"CN": f"svc{i}"},
            "sans": [{"type": "uri", "value": f"spiffe://example.org/svc{i}"},
                     {"type": "dns", "value": f"svc{i}.mesh.example.org"}],
            "key_usage": ["digital_signature"],
            "extended_key_usage": ["server_auth", "client_auth"]}, ec_key),
        "iot-device": (lambda i: {
            "basic_constraints": {"ca": False}, "policies": [],
            "subject": [["CN", f"dev-{i:08d}"], ["serialNumber", f"SN{i:010d}"]],
            "sans": [], "key_usage": ["digital_signature"],
            "extended_key_usage": ["client_auth"]}, ec_key),
    }


def corpus(count: int) -> list[bytes]:
    ca_key, ca_cert = _ca()
    items: list[bytes] = []
    for _shape, (describe, make_key) in _descriptions().items():
        for i in range(count):
            desc = CertificateDescription.model_validate(describe(i))
            desc = template_build.with_default_urls(
                desc, crl_urls=[f"{BASE}/crl/issuing.crl"], ocsp_urls=[f"{BASE}/ocsp"],
                ca_issuers_urls=[f"{BASE}/ca/issuing.crt"])
            builder = template_build.to_builder(
                desc, public_key=make_key().public_key(), issuer=ca_cert,
                serial=x509.random_serial_number(), not_before=NOW,
                not_after=NOW + dt.timedelta(days=30))
            items.append(builder.sign(ca_key, hashes.SHA256()).public_bytes(
                serialization.Encoding.DER))
    random.Random(16).shuffle(items)
    return items


def _per_cert_ms(fn: Callable[[bytes], Any], ders: list[bytes]) -> float:
    start = time.process_time()
    for der in ders:
        fn(der)
    return (time.process_time() - start) / len(ders) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="certificates per shape")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    ders = corpus(args.count)
    lint.warm()
    lint.lint_certificate(ders[0], "leaf")  # pkilint's first-call imports, out of the clock
    cache = ShapeCache()
    identical = all(cache.lint_leaf(d) == lint.lint_certificate(d, "leaf") for d in ders)
    cache.clear()

    full: list[float] = []
    memo: list[float] = []
    cold = 0.0
    for r in range(args.rounds):
        full.append(_per_cert_ms(lambda d: lint.lint_certificate(d, "leaf"), ders))
        ms = _per_cert_ms(cache.lint_leaf, ders)
        if r == 0:
            cold = ms
        else:
            memo.append(ms)
    info = cache.info()
    result = {
        "certificates": len(ders), "shapes": len(_descriptions()), "rounds": args.rounds,
        "identical_findings": identical,
        "full_ms_per_cert": round(statistics.median(full), 3),
        "memo_cold_ms_per_cert": round(cold, 3),
        "memo_ms_per_cert": round(statistics.median(memo), 3) if memo else None,
        "full_rounds": [round(x, 3) for x in full], "memo_rounds": [round(x, 3) for x in memo],
        "cache_hits": info.hits, "cache_misses": info.misses, "cache_entries": info.entries,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{len(ders)} leaf certificates, {result['shapes']} shapes interleaved, "
          f"{args.rounds} rounds; findings identical: {identical}")
    print(f"  lint_certificate(der, 'leaf')  {result['full_ms_per_cert']:.3f} ms CPU/cert "
          f"(rounds {result['full_rounds']})")
    print(f"  lint_leaf, cold cache          {cold:.3f} ms CPU/cert (first round)")
    if memo:
        saved = 1 - statistics.median(memo) / statistics.median(full)
        print(f"  lint_leaf, warm                {result['memo_ms_per_cert']:.3f} ms CPU/cert "
              f"(rounds {result['memo_rounds']}; {saved:.0%} less)")
    print(f"  cache: {info.hits} hits, {info.misses} misses, {info.entries} entries")


if __name__ == "__main__":
    main()
