"""``signing.sign_as_trial``: the pipeline's token signature goes over the linted trial's own
TBS bytes, put into the trial's DER in place of the throw-away signature (issue 16: the
builder no longer encodes the same TBS twice). What it returns must be exactly the
certificate the builder would have made with that key: same TBS, same signature algorithm,
a signature that verifies under the CA's key; for every key type and size the pipeline
signs with (RSA 4096's signature needs the long DER length forms)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from appliance.errors import SignatureCheckError
from appliance.x509 import signing

NOW = datetime.now(UTC).replace(microsecond=0)


def _builder(sans: int) -> x509.CertificateBuilder:
    leaf = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(f"h{i}.example.com") for i in range(sans)]
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "h0.example.com")]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA")]))
            .public_key(leaf.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False))


def _verify(cert: x509.Certificate, public: Any) -> None:
    algo = cert.signature_hash_algorithm
    assert algo is not None
    if isinstance(public, rsa.RSAPublicKey):
        public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algo)
    else:
        public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algo))


KEYS = [
    ("ec-p256", lambda: ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()),
    ("ec-p384", lambda: ec.generate_private_key(ec.SECP384R1()), hashes.SHA384()),
    ("ec-p521", lambda: ec.generate_private_key(ec.SECP521R1()), hashes.SHA512()),
    ("rsa-2048", lambda: rsa.generate_private_key(65537, 2048), hashes.SHA256()),
    ("rsa-4096", lambda: rsa.generate_private_key(65537, 4096), hashes.SHA384()),
]


@pytest.mark.parametrize(("name", "make", "algo"), KEYS, ids=[k[0] for k in KEYS])
@pytest.mark.parametrize("sans", [1, 40])  # a short TBS and one past 256 bytes
def test_the_certificate_is_the_trials_tbs_signed_by_the_key(
        name: str, make: Any, algo: Any, sans: int) -> None:
    ca = make()
    builder = _builder(sans)
    trial = builder.sign(signing.throwaway_key(ca.public_key()), algo)
    cert = signing.sign_as_trial(trial, ca, algo)
    direct = builder.sign(ca, algo)  # what the builder itself makes with the key
    assert cert.tbs_certificate_bytes == trial.tbs_certificate_bytes \
        == direct.tbs_certificate_bytes
    assert cert.signature_algorithm_oid == direct.signature_algorithm_oid
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == algo.name
    _verify(cert, ca.public_key())
    cert.verify_directly_issued_by(_self_signed(ca, algo, cert.issuer))
    with pytest.raises(InvalidSignature):  # the throw-away key did not sign it
        _verify(cert, signing.throwaway_key(ca.public_key()).public_key())
    # the whole DER is the builder's layout: only the signature bytes differ
    assert len(cert.public_bytes(Encoding.DER)) - len(cert.signature) == \
        len(direct.public_bytes(Encoding.DER)) - len(direct.signature)


def test_a_pss_trial_is_refused() -> None:
    ca = rsa.generate_private_key(65537, 2048)
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
    trial = _builder(1).sign(signing.throwaway_key(ca.public_key()), hashes.SHA256(),
                             rsa_padding=pss)
    with pytest.raises(SignatureCheckError, match="PSS"):
        signing.sign_as_trial(trial, ca, hashes.SHA256())


def _self_signed(key: Any, algo: Any, name: x509.Name) -> x509.Certificate:
    """A CA certificate for ``key`` named ``name`` (for verify_directly_issued_by)."""
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=9))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, algo))
