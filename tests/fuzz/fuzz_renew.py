"""``/1.0/renew``: the Bearer token (x5c header, the certificate in it, the signature by its
key, the claims) as the endpoint reads it before looking the certificate up.

The first input byte picks what the rest is: 0 the token as sent, 1 the token's claims
(JSON), signed here by the key of a certificate carried in x5c, so that the checks after
the signature are reached too.
"""

from __future__ import annotations

from collections.abc import Callable

AUDIENCE = "https://ca.test/1.0/renew"


def load() -> Callable[[bytes], None]:
    import base64
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from appliance.provisioners import renewal
    from tests.fuzz import rawjwt
    from tests.fuzz.verdict import guarded

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf.test")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=9))
            .sign(key, hashes.SHA256()))
    x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]

    def one_input(data: bytes) -> None:
        if not data:
            return
        if data[0] % 2 == 0:
            # Headers reach the app as latin-1 text (WSGI), so every byte string is possible.
            token = data[1:].decode("latin-1")
        else:
            token = rawjwt.es256(rawjwt.timed(data[1:]), key, {"x5c": x5c})
        guarded(lambda: renewal.certificate_from_token(token, AUDIENCE))

    return one_input


if __name__ == "__main__":
    from tests.fuzz import harness
    harness.run("renew", load)
