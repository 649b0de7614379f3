"""``/1.0/sign``: the body (bounded JSON, fields, times), the CSR read up front, the
pipeline's CSR checks and names, and the shipped template rendered and built into a
certificate (signed by a throw-away key: no token is needed for any of it).

The first input byte picks what the rest is: 0 a whole body, 1 a CSR in DER (put into a
body as PEM), 2 a templateData object next to a good CSR, 3 the ``ott`` as sent (checked
against a JWK provisioner's key and an x5c provisioner's root), 4 the token's claims (JSON),
signed here with the JWK provisioner's key so that the checks after the signature are
reached too, 5 the same signed by a certificate under the x5c provisioner's root.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

AUDIENCE = "https://127.0.0.1:8443/1.0/sign"


def load() -> Callable[[bytes], None]:
    import base64
    import json
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from appliance import policy
    from appliance.issuance import pipeline
    from appliance.provisioners import tokens, x5c
    from appliance.templates import build as template_build
    from appliance.templates import render as template_render
    from appliance.templates.inputs import TemplateInput
    from appliance.templates.shipped import builtin_templates
    from appliance.web import api
    from tests.fuzz import rawjwt
    from tests.fuzz.verdict import guarded

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fuzz CA")])
    now = datetime.now(UTC).replace(microsecond=0)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=900))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                       False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
          .sign(ca_key, hashes.SHA256()))
    good_csr = (x509.CertificateSigningRequestBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "f.test")]))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("f.test")]), False)
                .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
    templates = builtin_templates()
    prov_key = ec.generate_private_key(ec.SECP256R1())
    prov_jwk = tokens.public_jwk(prov_key.public_key())
    good_pem = good_csr.public_bytes(serialization.Encoding.PEM).decode()

    def issue_offline(body: api.SignBody) -> None:
        """What the pipeline does with the parsed request after the token, minus the
        database and the token."""
        pipeline.check_csr(body.csr)
        names = policy.Names.from_csr(body.csr)
        pipeline._flat_names(names)
        start = body.not_before or now
        end = body.not_after or now + timedelta(days=1)
        for name in ("tls-server", "tls-client"):
            desc = template_render.render(name, templates[name], TemplateInput
                                          .from_request(
                csr=body.csr, token={"sub": "f.test", "sans": ["f.test"]}, inventory=None,
                data=body.template_data or {}, provisioner={"name": "p", "type": "jwk"},
                authority={"name": "ca", "subject": ca.subject.rfc4514_string()},
                validity={"not_before": start.isoformat(), "not_after": end.isoformat()}))
            desc = template_build.with_default_urls(
                desc, crl_urls=["http://ca.test/crl"], ocsp_urls=["http://ca.test/ocsp"],
                ca_issuers_urls=["http://ca.test/ca.crt"])
            builder = template_build.to_builder(
                desc, public_key=body.csr.public_key(), issuer=ca, serial=12345,
                not_before=max(start, ca.not_valid_before_utc), not_after=min(
                    end, ca.not_valid_after_utc))
            cert = builder.sign(ca_key, hashes.SHA256())
            policy.Names.from_certificate(cert)

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")]))
            .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(2)
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=9))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("device.test")]), False)
            .sign(ca_key, hashes.SHA256()))
    leaf_x5c = [base64.b64encode(leaf.public_bytes(serialization.Encoding.DER)).decode()]
    roots_pem = ca.public_bytes(serialization.Encoding.PEM).decode()

    def token(mode: int, rest: bytes) -> None:
        """As ``authorize.one_time_token`` reads it, minus the database."""
        if mode == 3:
            ott = rest.decode("utf-8", "replace")  # a JSON string: valid Unicode
        elif mode == 4:
            ott = rawjwt.es256(rawjwt.timed(rest), prov_key, {"kid": prov_jwk["kid"],
                                                               "typ": "JWT"})
        else:
            ott = rawjwt.es256(rawjwt.timed(rest), leaf_key, {"x5c": leaf_x5c, "typ": "JWT"})
        api.parse_sign_body(json.dumps({"csr": good_pem, "ott": ott}).encode())
        tokens.unverified_issuer(ott)
        if mode in (3, 4):
            guarded(lambda: api.token_lifetime(tokens.verify(
                ott, prov_jwk, provisioner="admin", audience=AUDIENCE).raw))
        if mode in (3, 5):
            guarded(lambda: api.token_lifetime(x5c.verify(
                ott, roots_pem, provisioner="admin", audience=AUDIENCE).raw))

    def one_input(data: bytes) -> None:
        if not data:
            return
        mode, rest = data[0] % 6, data[1:]
        if mode >= 3:
            guarded(lambda: token(mode, rest))
            return
        if mode == 0:
            raw = rest
        elif mode == 1:
            pem = ("-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(rest).decode()
                   + "-----END CERTIFICATE REQUEST-----\n")
            raw = json.dumps({"csr": pem, "ott": "x"}).encode()
        else:
            raw = b'{"csr": ' + json.dumps(good_pem).encode() + b', "ott": "x", ' \
                b'"templateData": ' + rest + b"}"

        def call() -> Any:
            body = api.parse_sign_body(raw)
            issue_offline(body)

        guarded(call)

    return one_input


if __name__ == "__main__":
    from tests.fuzz import harness
    harness.run("sign", load)
