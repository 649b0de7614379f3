"""Building and signing OCSP responses for one certificate (RFC 6960, RFC 5019, BR 4.9.10).

* Responder: the CA's delegated OCSP signer (an authority of kind ``ocsp`` whose
  parent is the issuing CA, active, valid now and for the whole response
  validity, with EKU OCSPSigning), else the issuing CA itself. A delegated
  signer's certificate goes into ``certs``; the responder ID is by key hash.
* Two responses per certificate, identical but for the CertID hash: SHA-1 (what
  nearly every client sends) and SHA-256. Clients match the CertID's hash
  algorithm, and RFC 5019 allows one SingleResponse per response.
* thisUpdate = now - 5 minutes (clients with slow clocks), never before the
  revocation time; nextUpdate = thisUpdate + ``ocsp.validity`` (8h..10d, BR).
* The signature is SHA-256 (ECDSA P-256 / RSA PKCS#1 v1.5; a P-384/P-521 key
  uses its curve's hash), made by the token and verified before the response leaves
  this module. The token key verifies every signature it makes over the bytes it
  signed, with the public key that matched the responder certificate when the key
  was found (:mod:`appliance.hsm.signer`); :class:`_Witness` keys remember that
  (bytes, signature) pair, and a response is released only if its encoded
  ``tbs_response_bytes`` and ``signature`` are exactly that pair. That is the same
  proof as verifying the response again (which cost ~90 µs per response, a fifth of
  the pre-signer's time), minus the second ECDSA/RSA verification of the same bytes.
* pkilint: the first response of each shape (responder, status, CertID hash)
  in a process is linted before it is released (a response, unlike a
  certificate, is harmless until published, and a throw-away-key trial is not
  possible: the builder insists the key matches the responder certificate);
  later ones differ only in serial and times, which linting each (~3 ms) would
  not make safer, and which would cap pre-signing at ~300/s.

Token keys and responder choices are cached per process (and re-checked every
``RESPONDER_TTL`` seconds, so a new delegated signer is picked up).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.padding import AsymmetricPadding
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo, Prehashed
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from sqlalchemy import select

from appliance import durations, lint, logs, rfc3339
from appliance.ca import authorities as authz
from appliance.errors import ServerFault, SignatureCheckError
from appliance.hsm import keys
from appliance.hsm.pool import SessionPool
from appliance.hsm.signer import TokenECPrivateKey, TokenRSAPrivateKey
from appliance.ocsp.certid import CERTID_HASHES, cert_id_hashes
from appliance.runtime import Appliance
from appliance.store.models import Authority, HsmKey
from appliance.x509 import algorithms, signing
from appliance.x509.algorithms import PublicKey

log = logs.get("ocsp.signer")

BACKDATE = timedelta(minutes=5)
RESPONDER_TTL = 300.0


class OcspSigningError(ServerFault):
    code = "ocsp_error"


class _Witness:
    """Mixin for token keys: remembers, per thread, the last (data, signature) that the
    key signed and verified (its ``sign`` raises instead of returning a signature that
    does not verify)."""

    _seen: threading.local

    def witnessed(self) -> tuple[bytes, bytes] | None:
        found: tuple[bytes, bytes] | None = getattr(self._seen, "last", None)
        self._seen.last = None
        return found

    def _remember(self, data: bytes | bytearray | memoryview, signature: bytes) -> bytes:
        self._seen.last = (bytes(data), signature)
        return signature


class _WitnessEC(_Witness, TokenECPrivateKey):
    def __init__(self, pool: SessionPool, info: keys.KeyInfo) -> None:
        super().__init__(pool, info)
        self._seen = threading.local()

    def sign(self, data: bytes | bytearray | memoryview,
             signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        return self._remember(data, super().sign(data, signature_algorithm))


class _WitnessRSA(_Witness, TokenRSAPrivateKey):
    def __init__(self, pool: SessionPool, info: keys.KeyInfo) -> None:
        super().__init__(pool, info)
        self._seen = threading.local()

    def sign(self, data: bytes, padding: AsymmetricPadding,
             algorithm: hashes.HashAlgorithm | Prehashed | NoDigestInfo) -> bytes:
        return self._remember(data, super().sign(data, padding, algorithm))


WitnessKey = _WitnessEC | _WitnessRSA


def witness_key(pool: SessionPool, info: keys.KeyInfo) -> WitnessKey:
    if isinstance(info.public_key, rsa.RSAPublicKey):
        return _WitnessRSA(pool, info)
    return _WitnessEC(pool, info)


def check_released(resp: ocsp.OCSPResponse, key: WitnessKey) -> None:
    """The response must carry exactly the TBS bytes the token key signed and the
    signature it verified over them (see the module docstring)."""
    seen = key.witnessed()
    if seen is None or resp.tbs_response_bytes != seen[0] or resp.signature != seen[1]:
        raise SignatureCheckError("OCSP response does not carry the verified signature over "
                                  "its own TBS bytes; not released")


@dataclass
class Responder:
    """Who signs the responses about one CA's certificates, and with which token key."""

    authority_id: int
    authority_name: str
    issuer: x509.Certificate
    id_hashes: dict[str, tuple[bytes, bytes]]  # CertID hash name -> (name hash, key hash)
    cert: x509.Certificate  # the delegated signer's, or the CA's own
    delegated: bool
    key: WitnessKey
    algorithm: hashes.HashAlgorithm
    reuse_until: float  # time.monotonic() deadline
    fingerprint: str = ""  # of ``cert``: the lint-once shape

    def __post_init__(self) -> None:
        self.fingerprint = authz.fingerprint(self.cert)

    @property
    def public(self) -> PublicKey:
        return signing.ca_public_key(self.cert)


@dataclass(frozen=True)
class CertStatus:
    """What a response says about one certificate (a ``certificates`` row, in short)."""

    certificate_id: int
    authority_id: int
    serial_hex: str
    status: str  # "issued" or "revoked"
    revoked_at: datetime | None = None
    reason: str | None = None  # RFC 5280 name, e.g. "keyCompromise"


@dataclass(frozen=True)
class SignedResponse:
    certificate_id: int
    authority_id: int
    serial_hex: str
    status: str  # "good" or "revoked"
    der: bytes  # SHA-1 CertID
    der_sha256: bytes  # SHA-256 CertID
    this_update: datetime
    next_update: datetime
    produced_at: datetime


def ocsp_status(cert_status: str) -> str:
    """The OCSP status a certificate status is answered with ("good" / "revoked")."""
    if cert_status == "issued":
        return "good"
    if cert_status == "revoked":
        return "revoked"
    raise OcspSigningError(f"no OCSP answer for a certificate that is {cert_status!r}")


def reason_flag(name: str | None) -> x509.ReasonFlags | None:
    """RFC 5280 reason name → flag; ``unspecified`` (and none) is left out of the response."""
    if not name or name.lower() == "unspecified":
        return None
    for flag in x509.ReasonFlags:
        if flag.value.lower() == name.lower():
            if flag in (x509.ReasonFlags.remove_from_crl, x509.ReasonFlags.certificate_hold):
                break
            return flag
    raise OcspSigningError(f"unknown revocation reason {name!r}")


def validity_of(app: Appliance) -> timedelta:
    return timedelta(seconds=durations.parse(app.settings.config.ocsp.validity))


class OcspSigner:
    """Signs responses for one process; caches responders (and their token keys)."""

    def __init__(self, app: Appliance, validity: timedelta | None = None) -> None:
        self.app = app
        self.validity = validity or validity_of(app)
        if not timedelta(hours=8) <= self.validity <= timedelta(days=10):
            raise OcspSigningError("OCSP response validity must be 8 hours .. 10 days (BR)")
        self._responders: dict[int, Responder] = {}
        self._linted: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    # -- responders ------------------------------------------------------------

    def responder(self, authority_id: int) -> Responder:
        with self._lock:
            cached = self._responders.get(authority_id)
        if cached is not None and cached.reuse_until > time.monotonic():
            return cached
        found = self._load_responder(authority_id)
        with self._lock:
            self._responders[authority_id] = found
        return found

    def _load_responder(self, authority_id: int) -> Responder:
        now = datetime.now(UTC)
        with self.app.db.sessions() as db:
            ca = db.get(Authority, authority_id)
            if ca is None:
                raise OcspSigningError(f"no authority {authority_id}")
            issuer = authz.certificate(ca)
            candidates = db.execute(
                select(Authority, HsmKey.label)
                .join(HsmKey, HsmKey.id == Authority.key_id)
                .where(Authority.kind == "ocsp", Authority.parent_id == authority_id,
                       Authority.status == "active")
                .order_by(Authority.not_before.desc(), Authority.id.desc())
            ).all()
            own_label = db.scalar(select(HsmKey.label).where(HsmKey.id == ca.key_id)) \
                if ca.key_id is not None else None
            ca_name = ca.name
        chosen: tuple[x509.Certificate, str] | None = None
        for row, label in candidates:
            cert = authz.certificate(row)
            if self._usable_delegate(cert, issuer, now):
                chosen = (cert, label)
                break
        reuse = RESPONDER_TTL
        if chosen is not None:
            signer_cert, label = chosen
            # Look again before the signer would outlive a response signed with it.
            left = (signer_cert.not_valid_after_utc - now - self.validity).total_seconds()
            reuse = max(1.0, min(reuse, left))
            delegated = True
        else:
            if own_label is None:
                raise OcspSigningError(f"authority {ca_name} has neither a delegated OCSP "
                                       "signer nor a key of its own in the token")
            signer_cert, label, delegated = issuer, own_label, False
        public = signing.ca_public_key(signer_cert)
        pool = self.app.signing_pool()
        info = keys.find_key(pool, label, public)
        algorithm: hashes.HashAlgorithm = algorithms.ocsp_signature_hash(public)
        return Responder(authority_id, ca_name, issuer, cert_id_hashes(issuer), signer_cert,
                         delegated, witness_key(pool, info), algorithm,
                         time.monotonic() + reuse)

    def _usable_delegate(self, cert: x509.Certificate, issuer: x509.Certificate,
                         now: datetime) -> bool:
        if cert.not_valid_before_utc > now or cert.not_valid_after_utc < now + self.validity:
            return False
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            cert.verify_directly_issued_by(issuer)
        except (x509.ExtensionNotFound, ValueError, TypeError, InvalidSignature):
            log.warning("delegated OCSP signer not usable",
                        extra={"subject": cert.subject.rfc4514_string()})
            return False
        return ExtendedKeyUsageOID.OCSP_SIGNING in eku

    # -- signing ---------------------------------------------------------------

    def sign(self, cs: CertStatus, now: datetime | None = None) -> SignedResponse:
        responder = self.responder(cs.authority_id)
        status = ocsp_status(cs.status)
        now = (now or datetime.now(UTC)).replace(microsecond=0)
        this_update = now - BACKDATE
        revoked_at = reason = None
        if status == "revoked":
            revoked_at = rfc3339.to_utc(cs.revoked_at or now).replace(microsecond=0)
            reason = reason_flag(cs.reason)
            this_update = max(this_update, revoked_at)
        next_update = this_update + self.validity
        serial = int(cs.serial_hex, 16)
        ders: dict[str, bytes] = {}
        produced = now
        # Both CertID variants share everything but the CertID (status, times, responder
        # ID, certs): only add_response_by_hash differs between the two builders.
        base = ocsp.OCSPResponseBuilder().responder_id(ocsp.OCSPResponderEncoding.HASH,
                                                       responder.cert)
        if responder.delegated:
            base = base.certificates([responder.cert])
        cert_status = ocsp.OCSPCertStatus.REVOKED if revoked_at else ocsp.OCSPCertStatus.GOOD
        for hash_name, algo in CERTID_HASHES.items():
            name_hash, key_hash = responder.id_hashes[hash_name]
            resp = base.add_response_by_hash(
                name_hash, key_hash, serial, algo, cert_status, this_update, next_update,
                revoked_at, reason,
            ).sign(responder.key, responder.algorithm)
            check_released(resp, responder.key)
            if resp.serial_number != serial or resp.this_update_utc != this_update:
                raise SignatureCheckError("signed OCSP response differs from what was built")
            produced = resp.produced_at_utc
            der = resp.public_bytes(serialization.Encoding.DER)
            self._lint_once(der, responder, status, hash_name)
            ders[hash_name] = der
        return SignedResponse(cs.certificate_id, cs.authority_id, cs.serial_hex, status,
                              ders["sha1"], ders["sha256"], this_update, next_update, produced)

    def _lint_once(self, der: bytes, responder: Responder, status: str, hash_name: str) -> None:
        shape = (responder.fingerprint, status, hash_name)
        if shape in self._linted:
            return
        findings = lint.lint_ocsp_response(der)
        lint.require_clean(findings, f"OCSP response ({status}, {hash_name} CertID) "
                                             f"by {responder.cert.subject.rfc4514_string()}")
        with self._lock:
            self._linted.add(shape)
