"""Signing safely: lint a trial signature, then let the token key sign the same bytes.

Signing is always: build the to-be-signed structure, sign it with a
throw-away software key of the same algorithm and size, lint that with
pkilint, then sign the very same structure with the token key, check the TBS
bytes did not change and verify the signature against the issuer. So the
token key never signs something the linter has not seen.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from appliance import lint
from appliance.errors import KeyPolicyError, SignatureCheckError
from appliance.x509.algorithms import CaHash, KeySpec, PublicKey

_throwaway: dict[str, Any] = {}
_throwaway_lock = threading.Lock()


def throwaway_key(like: PublicKey) -> Any:
    """A software key of the same algorithm and size, made once per process."""
    spec = KeySpec.of_public_key(like)
    with _throwaway_lock:
        key = _throwaway.get(spec.name)
        if key is None:
            if isinstance(like, rsa.RSAPublicKey):
                key = rsa.generate_private_key(65537, like.key_size)
            else:
                key = ec.generate_private_key(like.curve)
            _throwaway[spec.name] = key
        return key


def sign_certificate(builder: x509.CertificateBuilder, signer: Any, algo: CaHash,
                     pad: Any, issuer_public: PublicKey, lint_kind: lint.CertKind,
                     skip_lints: Iterable[str], what: str,
                     check: Callable[[x509.Certificate], None] | None = None
                     ) -> x509.Certificate:
    """Lint with a throw-away signature (and run ``check`` on it: path validation), then
    sign the same TBS with the token key."""
    trial_key = throwaway_key(issuer_public)
    trial = builder.sign(trial_key, algo, rsa_padding=pad)
    if check is not None:
        check(trial)
    findings = lint.lint_certificate(trial.public_bytes(Encoding.DER), lint_kind)
    lint.require_clean(findings, what, skip_lints)
    cert = builder.sign(signer, algo, rsa_padding=pad)
    if cert.tbs_certificate_bytes != trial.tbs_certificate_bytes:
        raise SignatureCheckError(f"{what}: the signed TBS differs from the linted one")
    _verify(lambda: _verify_cert_signature(cert, issuer_public), what)
    return cert


def _der_header(der: bytes, at: int) -> tuple[int, int]:
    """(offset of the contents, their length) of the DER element at ``at``."""
    first = der[at + 1]
    if first < 0x80:
        return at + 2, first
    n = first & 0x7F
    if not 1 <= n <= 4:
        raise SignatureCheckError("certificate DER with an unexpected length form")
    return at + 2 + n, int.from_bytes(der[at + 2:at + 2 + n], "big")


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def sign_as_trial(trial: x509.Certificate, key: Any, algo: CaHash) -> x509.Certificate:
    """``trial`` (linted, checked) signed again by ``key`` (the token's), over exactly its
    TBS bytes: the certificate is the trial's TBS and signature algorithm with the token's
    signature in place of the throw-away key's, so the builder does not encode the same
    TBS a second time. Only for what the pipeline signs: an EC key (ECDSA with ``algo``)
    or an RSA key with PKCS#1 v1.5 (no PSS), the trial signed by a throw-away key of the
    same type (the signature algorithm identifier is the same). The token key's wrapper
    verifies its signature before it returns it; the caller still compares the TBS."""
    tbs = trial.tbs_certificate_bytes
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(tbs, ec.ECDSA(algo))
    elif isinstance(key, rsa.RSAPrivateKey):
        if isinstance(trial.signature_algorithm_parameters, padding.PSS):
            raise SignatureCheckError("sign_as_trial: a PSS trial is not re-signed this way")
        signature = key.sign(tbs, padding.PKCS1v15(), algo)
    else:
        raise KeyPolicyError(f"unsupported signing key {type(key).__name__}")
    der = trial.public_bytes(Encoding.DER)
    if der[0] != 0x30:
        raise SignatureCheckError("certificate DER is not a SEQUENCE")
    inner, _ = _der_header(der, 0)
    if der[inner:inner + len(tbs)] != tbs:
        raise SignatureCheckError("the trial's DER does not start with its TBS")
    alg_at = inner + len(tbs)
    alg_body, alg_len = _der_header(der, alg_at)
    algorithm_id = der[alg_at:alg_body + alg_len]
    bits = b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature
    body = tbs + algorithm_id + bits
    cert = x509.load_der_x509_certificate(b"\x30" + _der_length(len(body)) + body)
    if cert.signature != signature or cert.signature_algorithm_oid != \
            trial.signature_algorithm_oid:
        raise SignatureCheckError("the re-signed certificate does not carry the signature")
    return cert


def sign_crl(builder: x509.CertificateRevocationListBuilder, signer: Any,
             algo: CaHash, pad: Any, issuer_public: PublicKey,
             skip_lints: Iterable[str], what: str) -> x509.CertificateRevocationList:
    trial = builder.sign(throwaway_key(issuer_public), algo, rsa_padding=pad)
    findings = lint.lint_crl(trial.public_bytes(Encoding.DER))
    lint.require_clean(findings, what, skip_lints)
    crl = builder.sign(signer, algo, rsa_padding=pad)
    if crl.tbs_certlist_bytes != trial.tbs_certlist_bytes:
        raise SignatureCheckError(f"{what}: the signed TBS differs from the linted one")
    if not crl.is_signature_valid(issuer_public):
        raise SignatureCheckError(f"{what}: the CRL signature does not verify")
    return crl


def _verify_cert_signature(cert: x509.Certificate, issuer_public: PublicKey) -> None:
    algo = cert.signature_hash_algorithm
    assert algo is not None
    if isinstance(issuer_public, rsa.RSAPublicKey):
        pss = cert.signature_algorithm_parameters
        pad = pss if isinstance(pss, padding.PSS) else padding.PKCS1v15()
        issuer_public.verify(cert.signature, cert.tbs_certificate_bytes, pad, algo)
    else:
        issuer_public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algo))


def _verify(check: Callable[[], None], what: str) -> None:
    try:
        check()
    except Exception as exc:
        raise SignatureCheckError(f"{what}: signature does not verify ({exc!r})") from exc


def ca_public_key(cert: x509.Certificate) -> PublicKey:
    """A CA certificate's key, which must be one the appliance works with (EC or RSA)."""
    key = cert.public_key()
    if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise KeyPolicyError(f"{cert.subject.rfc4514_string()}: unsupported key type")
    return key
