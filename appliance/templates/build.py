"""From a certificate description to a ``cryptography`` certificate builder.

The builder is not signed here: the issuance pipeline lints a trial
signature and signs with the token key (``x509build.sign_certificate``).
Extensions are built with the ceremony helpers (``x509build``) so a leaf and
a CA certificate encode key usage, EKU, name constraints, policies, CRL DP
and AIA the same way. Always added: subjectKeyIdentifier (method 1) and
authorityKeyIdentifier, taken from the issuer's own subjectKeyIdentifier
when it has one (so it matches whatever method the issuer's SKI used, e.g.
an imported root) and computed from the issuer's public key otherwise.

Criticality: basicConstraints, keyUsage and nameConstraints critical; the
SAN extension critical exactly when the subject is empty (RFC 5280
4.2.1.6); everything else non-critical, custom extensions as described.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ObjectIdentifier
from pydantic import ValidationError

from appliance.templates.errors import TemplateError
from appliance.templates.model import CertificateDescription, general_name
from appliance.x509 import extensions as x509ext
from appliance.x509 import signing

__all__ = ["effective_validity", "subject_name", "to_builder", "with_default_urls"]

_NOT_FOR_EC = frozenset({"key_encipherment", "data_encipherment"})  # RFC 5480 3
_NOT_FOR_RSA = frozenset({"key_agreement"})  # RFC 4055 1.2
# RFC 8410 §5: an Ed25519 key signs only (no encipherment, no key agreement).
_NOT_FOR_ED25519 = frozenset({"key_encipherment", "data_encipherment", "key_agreement",
                              "encipher_only", "decipher_only"})


def _key_kind(public_key: object) -> tuple[str, frozenset[str]] | None:
    """The subject key's kind as messages name it, and the key usages it cannot have."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "EC", _NOT_FOR_EC
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RSA", _NOT_FOR_RSA
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519", _NOT_FOR_ED25519
    return None


def subject_name(desc: CertificateDescription) -> x509.Name:
    pairs = desc.subject
    attrs = [attr for attr, _ in pairs]
    if len(set(attrs)) == len(attrs):
        return x509ext.name(dict(pairs))
    # x509build.name takes a mapping, so repeated attributes (OU, DC) are built here.
    return x509.Name([x509.NameAttribute(x509ext.ATTR_OIDS[attr], value) for attr, value in pairs])


def _utc(when: datetime, what: str) -> datetime:
    if when.tzinfo is None:
        raise ValueError(f"{what} must carry a time zone")
    return when.astimezone(UTC).replace(microsecond=0)


def effective_validity(desc: CertificateDescription, not_before: datetime, not_after: datetime,
                       issuer: x509.Certificate, *,
                       template: str = "<description>") -> tuple[datetime, datetime]:
    """The pipeline's window narrowed by the description's times and the issuer's validity.

    A template can shorten the validity the pipeline computed, never extend
    it, and a certificate never outlives (or predates) its issuer.
    """
    start = max(_utc(not_before, "not_before"), _utc(issuer.not_valid_before_utc, "issuer"))
    end = min(_utc(not_after, "not_after"), _utc(issuer.not_valid_after_utc, "issuer"))
    if desc.not_before is not None:
        start = max(start, _utc(desc.not_before, "not_before"))
    if desc.not_after is not None:
        end = min(end, _utc(desc.not_after, "not_after"))
    if end <= start:
        raise TemplateError(
            template,
            f"no validity left after clamping: {start:%Y-%m-%dT%H:%M:%SZ} .. "
            f"{end:%Y-%m-%dT%H:%M:%SZ} (pipeline window, template times and issuer validity)",
        )
    return start, end


def authority_key_identifier(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The AKI every certificate ``issuer`` signs carries (ARI's certID names it too)."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(signing.ca_public_key(issuer))
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _revalidated(desc: CertificateDescription, allow_ca: bool,
                 template: str) -> CertificateDescription:
    # Again, with this call's allow_ca, and in case the object was built without validation
    # (model_construct) or came from elsewhere: the SAN syntax checks etc. run on what is built.
    try:
        return CertificateDescription.model_validate(
            desc.model_dump(), context={"allow_ca": allow_ca})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(description)'}: "
            f"{str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False)[:10])
        raise TemplateError(template, f"schema violation: {problems}") from None


def with_default_urls(desc: CertificateDescription, *, crl_urls: Sequence[str] = (),
                      ocsp_urls: Sequence[str] = (),
                      ca_issuers_urls: Sequence[str] = ()) -> CertificateDescription:
    """``desc`` with each of its empty URL lists replaced by the given default.

    A list the template filled in is kept as it is. The result is checked
    again by ``to_builder``.
    """
    update: dict[str, tuple[str, ...]] = {}
    for field, default in (("crl_urls", crl_urls), ("ocsp_urls", ocsp_urls),
                           ("ca_issuers_urls", ca_issuers_urls)):
        if not getattr(desc, field) and default:
            update[field] = tuple(default)
    return desc.model_copy(update=update) if update else desc


def to_builder(desc: CertificateDescription, *, public_key: CertificatePublicKeyTypes,
               issuer: x509.Certificate, serial: int, not_before: datetime,
               not_after: datetime, allow_ca: bool = False,
               template: str = "<description>") -> x509.CertificateBuilder:
    """An unsigned builder for ``desc``, issued by ``issuer``, for ``public_key``.

    ``not_before``/``not_after`` are the pipeline's window; see
    ``effective_validity``. ``TemplateError`` (naming ``template``) if the
    description is invalid, makes a CA without ``allow_ca``, asks for a key
    usage the key type cannot have, or leaves no validity; and for a subject
    key that is neither EC nor RSA (``x509build.add_common_extensions`` takes
    only those).
    """
    desc = _revalidated(desc, allow_ca, template)
    kind_rule = _key_kind(public_key)
    if kind_rule is None or not isinstance(
            public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise TemplateError(template, f"unsupported subject key type {type(public_key).__name__}")
    kind, impossible = kind_rule
    wrong = set(desc.key_usage or ()) & impossible
    if wrong:
        raise TemplateError(template, f"key_usage {', '.join(sorted(wrong))} is not possible "
                                      f"with an {kind} key")
    start, end = effective_validity(desc, not_before, not_after, issuer, template=template)
    subject = subject_name(desc)

    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer.subject)
               .public_key(public_key)
               .serial_number(serial)
               .not_valid_before(start)
               .not_valid_after(end))
    bc = desc.basic_constraints
    if bc is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=bc.ca, path_length=bc.path_length if bc.ca else None),
            critical=True)
    if desc.key_usage:
        builder = builder.add_extension(x509ext.key_usage(desc.key_usage), critical=True)
    if desc.extended_key_usage:
        builder = builder.add_extension(x509ext.eku(list(desc.extended_key_usage)), critical=False)
    if desc.sans:
        names = [general_name(san.type, san.value) for san in desc.sans]
        builder = builder.add_extension(x509.SubjectAlternativeName(names),
                                        critical=len(subject) == 0)
    if desc.name_constraints is not None:
        builder = builder.add_extension(x509ext.name_constraints(desc.name_constraints),
                                        critical=True)
    builder = x509ext.add_common_extensions(
        builder, subject_key=public_key, issuer_key=None, policies=list(desc.policies),
        crl_urls=list(desc.crl_urls), ocsp_urls=list(desc.ocsp_urls),
        ca_issuers_urls=list(desc.ca_issuers_urls))
    builder = builder.add_extension(authority_key_identifier(issuer), critical=False)
    for ext in desc.extensions:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(ObjectIdentifier(ext.oid), ext.der), critical=ext.critical)
    return builder
