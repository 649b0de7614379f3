"""Turning ceremony steps into ``cryptography`` builders, and signing them safely.

Signing is always: build the to-be-signed structure, sign it with a
throw-away software key of the same algorithm and size, lint that with
pkilint, then sign the very same structure with the token key, check the TBS
bytes did not change and verify the signature against the issuer. So the
token key never signs something the linter has not seen.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    NameOID,
    ObjectIdentifier,
)

from appliance.ceremony.schema import (
    KeyUsageName,
    NameConstraints,
    RevokedEntry,
    Validity,
)
from appliance.errors import ApplianceError, SignatureCheckError
from appliance.hsm.keys import KeySpec, PublicKey
from appliance.lint import pkilint_gate

ATTR_OIDS = {
    "C": NameOID.COUNTRY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME, "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME, "serialNumber": NameOID.SERIAL_NUMBER,
    "DC": NameOID.DOMAIN_COMPONENT, "emailAddress": NameOID.EMAIL_ADDRESS,
}
EKU_OIDS = {
    "server_auth": ExtendedKeyUsageOID.SERVER_AUTH, "client_auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code_signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email_protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "time_stamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "ocsp_signing": ExtendedKeyUsageOID.OCSP_SIGNING,
}
REASONS = {r.name: r for r in x509.ReasonFlags}
CaHash = hashes.SHA256 | hashes.SHA384 | hashes.SHA512
HASHES: dict[str, CaHash] = {
    "sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512(),
}


class CeremonyError(ApplianceError):
    """A ceremony step cannot go on; nothing of that step was signed or registered."""

    code = "ceremony_error"


def name(subject: Mapping[Any, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(ATTR_OIDS[k], v) for k, v in subject.items()])


def default_hash(public_key: PublicKey) -> str:
    spec = KeySpec.of_public_key(public_key)
    return {"ec-p256": "sha256", "ec-p384": "sha384", "ec-p521": "sha512",
            "rsa-2048": "sha256"}.get(spec.name, "sha384")


def validity_window(validity: Validity, now: datetime, cap_days: int,
                    issuer: x509.Certificate | None) -> tuple[datetime, datetime]:
    """The certificate's window: within the cap, and (for subordinates) inside the issuer's."""
    try:
        start, end = validity.resolve(now)
    except ValueError as exc:
        raise CeremonyError(str(exc)) from None
    if (end - start).days > cap_days:
        raise CeremonyError(
            f"validity of {(end - start).days} days exceeds the cap of {cap_days} days"
        )
    if issuer is not None and (
        start < issuer.not_valid_before_utc or end > issuer.not_valid_after_utc
    ):
        raise CeremonyError(
            "validity must lie within the issuer's "
            f"({issuer.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} .. "
            f"{issuer.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})"
        )
    return start, end


def key_usage(names: Iterable[KeyUsageName]) -> x509.KeyUsage:
    chosen = set(names)
    return x509.KeyUsage(
        digital_signature="digital_signature" in chosen,
        content_commitment="content_commitment" in chosen,
        key_encipherment="key_encipherment" in chosen,
        data_encipherment="data_encipherment" in chosen,
        key_agreement="key_agreement" in chosen,
        key_cert_sign="key_cert_sign" in chosen,
        crl_sign="crl_sign" in chosen,
        encipher_only=False, decipher_only=False,
    )


def name_constraints(nc: NameConstraints) -> x509.NameConstraints:
    def names(dns: list[str], ip: list[str], email: list[str],
              uri: list[str]) -> list[x509.GeneralName] | None:
        out: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        out += [x509.IPAddress(ipaddress.ip_network(i)) for i in ip]
        out += [x509.RFC822Name(e) for e in email]
        out += [x509.UniformResourceIdentifier(u) for u in uri]
        return out or None

    return x509.NameConstraints(
        permitted_subtrees=names(nc.permitted_dns, nc.permitted_ip, nc.permitted_email,
                                 nc.permitted_uri),
        excluded_subtrees=names(nc.excluded_dns, nc.excluded_ip, nc.excluded_email,
                                nc.excluded_uri),
    )


def add_common_extensions(builder: x509.CertificateBuilder, *, subject_key: PublicKey,
                          issuer_key: PublicKey | None, policies: list[str],
                          crl_urls: list[str], ocsp_urls: list[str],
                          ca_issuers_urls: list[str]) -> x509.CertificateBuilder:
    builder = builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
    if issuer_key is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), critical=False)
    if policies:
        builder = builder.add_extension(x509.CertificatePolicies(
            [x509.PolicyInformation(ObjectIdentifier(p), None) for p in policies]), critical=False)
    if crl_urls:
        builder = builder.add_extension(x509.CRLDistributionPoints([
            x509.DistributionPoint([x509.UniformResourceIdentifier(u)], None, None, None)
            for u in crl_urls]), critical=False)
    access = [x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                     x509.UniformResourceIdentifier(u)) for u in ocsp_urls]
    access += [x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS,
                                      x509.UniformResourceIdentifier(u)) for u in ca_issuers_urls]
    if access:
        builder = builder.add_extension(x509.AuthorityInformationAccess(access), critical=False)
    return builder


def eku(values: list[str]) -> x509.ExtendedKeyUsage:
    return x509.ExtendedKeyUsage(
        [EKU_OIDS[v] if v in EKU_OIDS else ObjectIdentifier(v) for v in values]
    )


# -- trial signing and the lint gate -------------------------------------------

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


def rsa_padding(signer_public: PublicKey, choice: str, algo: CaHash) -> Any:
    if isinstance(signer_public, rsa.RSAPublicKey) and choice == "pss":
        return padding.PSS(padding.MGF1(algo), padding.PSS.DIGEST_LENGTH)
    return None


def sign_certificate(builder: x509.CertificateBuilder, signer: Any, algo: CaHash,
                     pad: Any, issuer_public: PublicKey, lint_kind: pkilint_gate.CertKind,
                     skip_lints: Iterable[str], what: str,
                     check: Callable[[x509.Certificate], None] | None = None
                     ) -> x509.Certificate:
    """Lint with a throw-away signature (and run ``check`` on it: path validation), then
    sign the same TBS with the token key."""
    trial_key = throwaway_key(issuer_public)
    trial = builder.sign(trial_key, algo, rsa_padding=pad)
    if check is not None:
        check(trial)
    findings = pkilint_gate.lint_certificate(trial.public_bytes(Encoding.DER), lint_kind)
    pkilint_gate.require_clean(findings, what, skip_lints)
    cert = builder.sign(signer, algo, rsa_padding=pad)
    if cert.tbs_certificate_bytes != trial.tbs_certificate_bytes:
        raise SignatureCheckError(f"{what}: the signed TBS differs from the linted one")
    _verify(lambda: _verify_cert_signature(cert, issuer_public), what)
    return cert


def sign_crl(builder: x509.CertificateRevocationListBuilder, signer: Any,
             algo: CaHash, pad: Any, issuer_public: PublicKey,
             skip_lints: Iterable[str], what: str) -> x509.CertificateRevocationList:
    trial = builder.sign(throwaway_key(issuer_public), algo, rsa_padding=pad)
    findings = pkilint_gate.lint_crl(trial.public_bytes(Encoding.DER))
    pkilint_gate.require_clean(findings, what, skip_lints)
    crl = builder.sign(signer, algo, rsa_padding=pad)
    if crl.tbs_certlist_bytes != trial.tbs_certlist_bytes:
        raise SignatureCheckError(f"{what}: the signed TBS differs from the linted one")
    if not crl.is_signature_valid(issuer_public):
        raise SignatureCheckError(f"{what}: the CRL signature does not verify")
    return crl


def revoked_entries(entries: list[RevokedEntry], extra_serials: list[int],
                    now: datetime) -> list[x509.RevokedCertificate]:
    out = []
    for entry in entries:
        serial = int(entry.serial.removeprefix("0x"), 16)
        b = (x509.RevokedCertificateBuilder().serial_number(serial)
             .revocation_date(entry.revoked_at or now))
        if entry.reason != "unspecified":
            b = b.add_extension(x509.CRLReason(REASONS[entry.reason]), critical=False)
        out.append(b.build())
    for serial in extra_serials:
        out.append(x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
                   .add_extension(x509.CRLReason(x509.ReasonFlags.cessation_of_operation),
                                  critical=False).build())
    return out


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
        raise CeremonyError(f"{cert.subject.rfc4514_string()}: unsupported key type")
    return key
