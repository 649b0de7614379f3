"""What a template sees: a typed ``TemplateInput``, handed to Jinja as plain dicts and lists.

The variables (``TemplateInput.variables()``), every key always present
(``None`` or empty when there is nothing), so ``{% if subject.commonName %}``
works under ``StrictUndefined``:

``subject``
    The requested subject (by default the CSR's): ``commonName``,
    ``organization``, ``organizationalUnit``, ``country``, ``province``,
    ``locality``, ``streetAddress``, ``postalCode``, ``serialNumber``,
    ``domainComponent``, ``emailAddress``, ``givenName``, ``surname``,
    ``title`` (first value of each, or ``None``), ``raw`` (RFC 4514 string)
    and ``attributes`` (every attribute in order: ``{type, oid, value}``,
    for repeated OU/DC or unusual attributes).
``sans``
    The requested SANs (by default the CSR's): ``[{type, value}]`` with type
    ``dns``, ``ip``, ``email`` or ``uri`` (other general names are not passed).
``dns_names``, ``ip_addresses``, ``emails``, ``uris``
    The values of ``sans`` by type.
``csr``
    Always the CSR itself: ``public_key_algorithm`` (``rsa``, ``ec``,
    ``ed25519``, ``ed448``), ``key_size`` (RSA modulus or curve bits),
    ``curve`` (``P-256``/``P-384``/``P-521``, else ``None``), ``subject`` (as
    above) and ``sans`` (as above).
``token``
    The verified token's claims (``{}`` without a token).
``inventory``
    The requesting endpoint's inventory record (``metadata``,
    ``identifiers``, ``owner``, ...) or ``None``.
``data``
    User-supplied template data if the provisioner allows it, else ``{}``.
``provisioner``
    ``{name, type}``.
``authority``
    ``{name, subject}`` of the issuing authority (subject as an RFC 4514
    string) plus its publication points ``crl_urls``, ``ocsp_urls``,
    ``ca_issuers_urls`` and its ``policies``, for templates to copy into the
    certificate.
``validity``
    ``{not_before, not_after}``: ISO 8601 UTC strings the pipeline computed.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from appliance.templates.errors import TemplateInputError
from appliance.templates.model import SanType

MAX_INPUT_BYTES: Final = 1024 * 1024
"""The variables as JSON may be at most this large (claims and template data come from
requesters)."""
MAX_INPUT_DEPTH: Final = 32

SUBJECT_KEYS: Final[dict[x509.ObjectIdentifier, str]] = {
    NameOID.COMMON_NAME: "commonName",
    NameOID.ORGANIZATION_NAME: "organization",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "organizationalUnit",
    NameOID.COUNTRY_NAME: "country",
    NameOID.STATE_OR_PROVINCE_NAME: "province",
    NameOID.LOCALITY_NAME: "locality",
    NameOID.STREET_ADDRESS: "streetAddress",
    NameOID.POSTAL_CODE: "postalCode",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.DOMAIN_COMPONENT: "domainComponent",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.GIVEN_NAME: "givenName",
    NameOID.SURNAME: "surname",
    NameOID.TITLE: "title",
}
_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


@dataclass(frozen=True)
class SanValue:
    type: SanType
    value: str

    def plain(self) -> dict[str, str]:
        return {"type": self.type, "value": self.value}


def sans_of(names: Sequence[x509.GeneralName]) -> tuple[SanValue, ...]:
    """DNS, IP, email and URI names; other general name forms are left out."""
    out: list[SanValue] = []
    for gn in names:
        if isinstance(gn, x509.DNSName):
            out.append(SanValue("dns", gn.value))
        elif isinstance(gn, x509.IPAddress) and isinstance(
                gn.value, ipaddress.IPv4Address | ipaddress.IPv6Address):
            out.append(SanValue("ip", str(gn.value)))
        elif isinstance(gn, x509.RFC822Name):
            out.append(SanValue("email", gn.value))
        elif isinstance(gn, x509.UniformResourceIdentifier):
            out.append(SanValue("uri", gn.value))
    return tuple(out)


def csr_sans(csr: x509.CertificateSigningRequest | x509.Certificate) -> tuple[SanValue, ...]:
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    except ValueError as exc:
        raise TemplateInputError(f"the CSR's extensions do not parse: {exc}") from None
    return sans_of(list(ext.value))


def subject_variables(name: x509.Name) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(SUBJECT_KEYS.values())
    attributes = []
    for attr in name:
        value = attr.value if isinstance(attr.value, str) else attr.value.hex()
        key = SUBJECT_KEYS.get(attr.oid)
        if key is not None and out[key] is None:
            out[key] = value
        attributes.append({"type": attr.rfc4514_attribute_name,
                           "oid": attr.oid.dotted_string, "value": value})
    out["raw"] = name.rfc4514_string()
    out["attributes"] = attributes
    return out


@dataclass(frozen=True)
class CsrInfo:
    public_key_algorithm: str
    key_size: int | None
    curve: str | None
    subject: x509.Name
    sans: tuple[SanValue, ...]

    @classmethod
    def of(cls, csr: x509.CertificateSigningRequest | x509.Certificate) -> CsrInfo:
        """From a CSR, or from the certificate being renewed (same key, subject, SANs)."""
        key = csr.public_key()
        algorithm: str
        size: int | None = None
        curve: str | None = None
        if isinstance(key, rsa.RSAPublicKey):
            algorithm, size = "rsa", key.key_size
        elif isinstance(key, ec.EllipticCurvePublicKey):
            algorithm, size = "ec", key.curve.key_size
            curve = _CURVES.get(key.curve.name, key.curve.name)
        elif isinstance(key, ed25519.Ed25519PublicKey):
            algorithm = "ed25519"
        elif isinstance(key, ed448.Ed448PublicKey):
            algorithm = "ed448"
        else:
            raise TemplateInputError(f"unsupported CSR key type {type(key).__name__}")
        return cls(algorithm, size, curve, csr.subject, csr_sans(csr))

    def plain(self) -> dict[str, Any]:
        return {"public_key_algorithm": self.public_key_algorithm, "key_size": self.key_size,
                "curve": self.curve, "subject": subject_variables(self.subject),
                "sans": [s.plain() for s in self.sans]}


@dataclass(frozen=True)
class ProvisionerInfo:
    name: str
    type: str
    allow_template_data: bool = False
    """Whether requesters' ``templateData`` reaches the template (else it sees ``{}``)."""


@dataclass(frozen=True)
class AuthorityInfo:
    name: str
    subject: str
    """RFC 4514."""
    crl_urls: tuple[str, ...] = ()
    ocsp_urls: tuple[str, ...] = ()
    ca_issuers_urls: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()

    @classmethod
    def of_certificate(cls, name: str, cert: x509.Certificate, *,
                       crl_urls: Sequence[str] = (), ocsp_urls: Sequence[str] = (),
                       ca_issuers_urls: Sequence[str] = (),
                       policies: Sequence[str] = ()) -> AuthorityInfo:
        return cls(name, cert.subject.rfc4514_string(), tuple(crl_urls), tuple(ocsp_urls),
                   tuple(ca_issuers_urls), tuple(policies))

    def plain(self) -> dict[str, Any]:
        return {"name": self.name, "subject": self.subject,
                "crl_urls": list(self.crl_urls), "ocsp_urls": list(self.ocsp_urls),
                "ca_issuers_urls": list(self.ca_issuers_urls), "policies": list(self.policies)}


def _when(value: str | datetime, what: str) -> datetime:
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise TemplateInputError(f"validity.{what}: {value!r} is not an ISO 8601 time") from None


def _iso(when: datetime) -> str:
    if when.tzinfo is None:
        raise TemplateInputError("validity times must carry a time zone")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class TemplateInput:
    """Everything a template may know about a request (see the module docstring)."""

    subject: x509.Name
    sans: tuple[SanValue, ...]
    csr: CsrInfo
    provisioner: ProvisionerInfo
    authority: AuthorityInfo
    not_before: datetime
    not_after: datetime
    token: Mapping[str, Any] = field(default_factory=dict)
    inventory: Mapping[str, Any] | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_csr(cls, csr: x509.CertificateSigningRequest | x509.Certificate, *,
                 provisioner: ProvisionerInfo,
                 authority: AuthorityInfo, not_before: datetime, not_after: datetime,
                 token: Mapping[str, Any] | None = None,
                 inventory: Mapping[str, Any] | None = None,
                 data: Mapping[str, Any] | None = None,
                 subject: x509.Name | None = None,
                 sans: Sequence[SanValue] | None = None) -> TemplateInput:
        """Subject and SANs default to the CSR's; pass them to template what was authorised."""
        info = CsrInfo.of(csr)
        return cls(subject=info.subject if subject is None else subject,
                   sans=info.sans if sans is None else tuple(sans), csr=info,
                   provisioner=provisioner, authority=authority, not_before=not_before,
                   not_after=not_after, token=token or {}, inventory=inventory,
                   data=data or {})

    @classmethod
    def from_request(cls, *, csr: x509.CertificateSigningRequest | x509.Certificate,
                     provisioner: ProvisionerInfo | Mapping[str, Any],
                     authority: AuthorityInfo | Mapping[str, Any],
                     validity: Mapping[str, str | datetime],
                     token: Mapping[str, Any] | None = None,
                     inventory: Mapping[str, Any] | None = None,
                     data: Mapping[str, Any] | None = None) -> TemplateInput:
        """``from_csr`` with plain mappings, as the issuance pipeline holds them.

        ``provisioner`` ``{name, type}``, ``authority`` ``{name, subject}`` (plus
        optional ``crl_urls``, ``ocsp_urls``, ``ca_issuers_urls``, ``policies``),
        ``validity`` ``{not_before, not_after}`` (ISO 8601 with a zone, or
        datetimes). ``data`` given as a mapping is taken as already filtered by
        the provisioner's setting (a ``ProvisionerInfo`` decides by itself).
        """
        if not isinstance(provisioner, ProvisionerInfo):
            provisioner = ProvisionerInfo(str(provisioner["name"]), str(provisioner["type"]),
                                          allow_template_data=True)
        if not isinstance(authority, AuthorityInfo):
            authority = AuthorityInfo(
                str(authority["name"]), str(authority["subject"]),
                *(tuple(str(u) for u in authority.get(key) or ())
                  for key in ("crl_urls", "ocsp_urls", "ca_issuers_urls", "policies")))
        return cls.from_csr(csr, provisioner=provisioner, authority=authority,
                            not_before=_when(validity["not_before"], "not_before"),
                            not_after=_when(validity["not_after"], "not_after"),
                            token=token, inventory=inventory, data=data)

    def variables(self) -> dict[str, Any]:
        """The template variables as plain JSON-like values (fresh objects on every call)."""
        sans = [s.plain() for s in self.sans]
        by_type = {t: [s.value for s in self.sans if s.type == t]
                   for t in ("dns", "ip", "email", "uri")}
        out = {
            "subject": subject_variables(self.subject),
            "sans": sans,
            "dns_names": by_type["dns"],
            "ip_addresses": by_type["ip"],
            "emails": by_type["email"],
            "uris": by_type["uri"],
            "csr": self.csr.plain(),
            # Copied here at the depth they have among the variables (1), so the nesting
            # bound is the one ``checked_variables`` would apply to the whole.
            "token": plain(self.token, "token", 1),
            "inventory": None if self.inventory is None else plain(self.inventory,
                                                                   "inventory", 1),
            "data": plain(self.data, "data", 1) if self.provisioner.allow_template_data
            else {},
            "provisioner": {"name": self.provisioner.name, "type": self.provisioner.type},
            "authority": self.authority.plain(),
            "validity": {"not_before": _iso(self.not_before), "not_after": _iso(self.not_after)},
        }
        # Every value above is a fresh plain copy already (built here, or by ``plain``):
        # only the size bound is left to check, not a second deep copy.
        return _within_size(out)


def plain(value: Any, path: str, depth: int = 0) -> Any:
    """A JSON-like deep copy (dict with str keys, list, str, int, finite float, bool, None)."""
    if depth > MAX_INPUT_DEPTH:
        raise TemplateInputError(f"{path}: nested deeper than {MAX_INPUT_DEPTH} levels")
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TemplateInputError(f"{path}: {value} is not a JSON number")
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TemplateInputError(f"{path}: keys must be strings, not {key!r}")
            out[key] = plain(item, f"{path}.{key}", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [plain(item, f"{path}.{i}", depth + 1) for i, item in enumerate(value)]
    raise TemplateInputError(
        f"{path}: a {type(value).__name__} cannot be passed to a template")


def checked_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
    """Plain copies of ``variables``, refused if larger than ``MAX_INPUT_BYTES`` as JSON."""
    out = plain(variables, "variables")
    assert isinstance(out, dict)
    return _within_size(out)


def _within_size(out: dict[str, Any]) -> dict[str, Any]:
    """``out`` (plain values), refused if larger than ``MAX_INPUT_BYTES`` as JSON."""
    size = len(json.dumps(out, ensure_ascii=False).encode("utf-8"))
    if size > MAX_INPUT_BYTES:
        raise TemplateInputError(
            f"the template input is {size} bytes as JSON; at most {MAX_INPUT_BYTES}")
    return out
