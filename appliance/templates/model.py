"""What a template produces: a certificate description, validated strictly.

The description is the template's JSON output parsed into
``CertificateDescription`` (unknown keys are errors, like the ceremony
schema, whose attribute, key usage, EKU, OID, URL and name constraint types
it reuses). Everything that would make a malformed or misleading
certificate is refused here, with the path of the offending value, so a
template author sees "sans.2.value: 'foo bar' is not a valid DNS name" and
not a lint failure later:

* subject: a mapping ``{"CN": ..., "O": ...}`` (attribute order kept) or a
  list of ``[attr, value]`` pairs (to repeat OU or DC); stored as pairs.
* SAN values are syntax-checked and normalised (DNS names and email domains
  to lower case, IP addresses to canonical form, URI schemes to lower case;
  ``spiffe://`` URIs must be valid SPIFFE IDs); duplicates are dropped.
* a CA certificate (``basic_constraints.ca``) only when the caller passes
  ``allow_ca`` in the validation context; path length and name constraints
  only on a CA; keyCertSign only on a CA, and a CA must have it.
* custom extensions: a dotted OID, a base64 DER value that is one complete
  TLV, and not an OID a standard field of the description owns (that would
  put two copies of e.g. subjectAltName into the certificate).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from cryptography import x509
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from appliance.x509.vocabulary import EkuName, KeyUsageName, NameConstraints, Oid, SubjectAttr, Url

SanType = Literal["dns", "ip", "email", "uri"]

MAX_SANS: Final = 500
MAX_EXTENSION_DER: Final = 16 * 1024

# OIDs that a standard field of the description (or the builder itself) owns.
OWNED_EXTENSION_OIDS: Final[dict[str, str]] = {
    "2.5.29.14": "subjectKeyIdentifier (always added by the builder)",
    "2.5.29.35": "authorityKeyIdentifier (always added by the builder)",
    "2.5.29.15": "keyUsage (use 'key_usage')",
    "2.5.29.37": "extKeyUsage (use 'extended_key_usage')",
    "2.5.29.17": "subjectAltName (use 'sans')",
    "2.5.29.19": "basicConstraints (use 'basic_constraints')",
    "2.5.29.30": "nameConstraints (use 'name_constraints')",
    "2.5.29.32": "certificatePolicies (use 'policies')",
    "2.5.29.31": "cRLDistributionPoints (use 'crl_urls')",
    "1.3.6.1.5.5.7.1.1": "authorityInfoAccess (use 'ocsp_urls' / 'ca_issuers_urls')",
    "1.3.6.1.4.1.11129.2.4.2": "CT SCT list (added by the CA, never by a template)",
    "1.3.6.1.4.1.11129.2.4.3": "CT precertificate poison (added by the CA, never by a template)",
}

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_RE = re.compile(rf"(?:\*\.)?(?:{_LABEL}\.)*{_LABEL}")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_PART_RE = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_URI_CHARS_RE = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_SPIFFE_TD_RE = re.compile(r"[a-z0-9._-]{1,255}")
_SPIFFE_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")
# X.520 PrintableString
_PRINTABLE_RE = re.compile(r"[A-Za-z0-9 '()+,\-./:=?]+")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SUBJECT_MAX = {"C": 2, "ST": 128, "L": 128, "O": 64, "OU": 64, "CN": 64, "serialNumber": 64,
                "DC": 63, "emailAddress": 255}


# -- SAN syntax ------------------------------------------------------------------------------


def normalize_dns(value: str, *, wildcard: bool = True) -> str:
    """A DNS name in preferred name syntax (RFC 5280 4.2.1.6), lower-cased; ``*.`` leftmost only."""
    name = value.lower()
    if not _DNS_RE.fullmatch(name) or len(name) > 253:
        raise ValueError(f"{value!r} is not a valid DNS name")
    if name.startswith("*.") and not wildcard:
        raise ValueError(f"{value!r}: a wildcard is not allowed here")
    if all(part.isdigit() for part in name.split(".")):
        raise ValueError(f"{value!r} looks like an IP address; use an 'ip' SAN")
    return name


def normalize_ip(value: str) -> str:
    if "%" in value or "/" in value:
        raise ValueError(f"{value!r} is not a single IP address (no zone, no prefix length)")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a valid IP address") from None


def normalize_email(value: str) -> str:
    local, at, domain = value.rpartition("@")
    if not at or not _LOCAL_PART_RE.fullmatch(local) or len(local) > 64 or len(value) > 254:
        raise ValueError(f"{value!r} is not a valid email address (ASCII local@domain)")
    try:
        return f"{local}@{normalize_dns(domain, wildcard=False)}"
    except ValueError:
        raise ValueError(f"{value!r} is not a valid email address (bad domain)") from None


def normalize_uri(value: str) -> str:
    """An absolute URI (RFC 3986 characters); an authority must be a DNS name or IP address."""
    if len(value) > 2048 or not _URI_CHARS_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid URI (RFC 3986 characters only, at most 2048)")
    scheme, colon, rest = value.partition(":")
    if not colon or not _SCHEME_RE.fullmatch(scheme) or not rest:
        raise ValueError(f"{value!r} is not an absolute URI (it needs a scheme and a scheme part)")
    scheme = scheme.lower()
    if scheme == "spiffe":
        return _normalize_spiffe(value, rest)
    if rest.startswith("//"):
        authority = rest[2:].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
        host = authority.rpartition("@")[2]
        if host.startswith("["):
            if not host.endswith("]") and "]:" not in host:
                raise ValueError(f"{value!r}: malformed IPv6 host")
            _ = normalize_ip(host[1:].split("]", 1)[0])
        else:
            host = host.split(":", 1)[0]
            try:
                _ = normalize_ip(host)
            except ValueError:
                try:
                    _ = normalize_dns(host, wildcard=False)
                except ValueError:
                    raise ValueError(
                        f"{value!r}: the host must be a fully qualified domain name or an IP "
                        "address (RFC 5280 4.2.1.6)"
                    ) from None
    return f"{scheme}:{rest}"


def _normalize_spiffe(value: str, rest: str) -> str:
    """A SPIFFE ID with a workload path (SPIFFE-ID spec 2.1, 2.2; X509-SVID 2)."""
    if not rest.startswith("//"):
        raise ValueError(f"{value!r} is not a SPIFFE ID (spiffe://<trust domain>/<path>)")
    trust_domain, slash, path = rest[2:].partition("/")
    if not _SPIFFE_TD_RE.fullmatch(trust_domain):
        raise ValueError(
            f"{value!r}: the SPIFFE trust domain must be lower-case letters, digits, '.', '-' "
            "or '_' (no port, no user info)"
        )
    if not slash or not path:
        raise ValueError(f"{value!r}: a workload SPIFFE ID needs a path")
    for segment in path.split("/"):
        if segment in ("", ".", "..") or not _SPIFFE_SEGMENT_RE.fullmatch(segment):
            raise ValueError(
                f"{value!r}: SPIFFE path segments are non-empty, not '.' or '..', and use only "
                "letters, digits, '.', '-' and '_' (no query, no fragment, no trailing '/')"
            )
    return f"spiffe://{trust_domain}/{path}"


_NORMALIZERS = {"dns": normalize_dns, "ip": normalize_ip, "email": normalize_email,
                "uri": normalize_uri}


def normalize_san(san_type: str, value: str) -> str:
    """The normalised value, or ``ValueError`` saying what is wrong with it."""
    return _NORMALIZERS[san_type](value)


def general_name(san_type: str, value: str) -> x509.GeneralName:
    """A validated SAN as a ``cryptography`` general name."""
    value = normalize_san(san_type, value)
    if san_type == "dns":
        return x509.DNSName(value)
    if san_type == "ip":
        return x509.IPAddress(ipaddress.ip_address(value))
    if san_type == "email":
        return x509.RFC822Name(value)
    return x509.UniformResourceIdentifier(value)


# -- OIDs and DER ----------------------------------------------------------------------------


def _valid_oid(value: str) -> str:
    try:
        x509.ObjectIdentifier(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid OID ({exc})") from None
    return value


CheckedOid = Annotated[Oid, AfterValidator(_valid_oid)]


def check_der_tlv(der: bytes) -> None:
    """Raise ``ValueError`` unless ``der`` is exactly one DER TLV (definite, minimal length)."""
    if len(der) < 2:
        raise ValueError("too short to be DER")
    pos = 1
    if der[0] & 0x1F == 0x1F:  # high tag number form
        while True:
            if pos >= len(der):
                raise ValueError("truncated tag")
            pos += 1
            if not der[pos - 1] & 0x80:
                break
    if pos >= len(der):
        raise ValueError("truncated length")
    first = der[pos]
    pos += 1
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise ValueError("indefinite length is not DER")
    else:
        count = first & 0x7F
        if count > 4 or pos + count > len(der):
            raise ValueError("bad length")
        octets = der[pos:pos + count]
        if octets[0] == 0 or (count == 1 and octets[0] < 0x80):
            raise ValueError("length is not minimally encoded")
        length = int.from_bytes(octets, "big")
        pos += count
    if pos + length != len(der):
        raise ValueError(f"the value is {len(der)} bytes but its TLV says {pos + length}")


# -- the description -------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class San(_Strict):
    type: SanType
    value: Annotated[str, Field(min_length=1, max_length=2048)]

    @field_validator("value")
    @classmethod
    def _syntax(cls, value: str, info: ValidationInfo) -> str:
        san_type = info.data.get("type")
        return value if san_type is None else normalize_san(san_type, value)


class BasicConstraints(_Strict):
    ca: bool = False
    path_length: int | None = Field(default=None, ge=0, le=10)


class CustomExtension(_Strict):
    oid: CheckedOid
    critical: bool = False
    value_der_b64: Annotated[str, Field(min_length=4, max_length=(MAX_EXTENSION_DER * 4) // 3 + 4)]

    @field_validator("value_der_b64")
    @classmethod
    def _der(cls, value: str) -> str:
        try:
            der = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("value_der_b64 is not valid base64") from None
        if len(der) > MAX_EXTENSION_DER:
            raise ValueError(f"extension value is {len(der)} bytes; at most {MAX_EXTENSION_DER}")
        try:
            check_der_tlv(der)
        except ValueError as exc:
            raise ValueError(f"value_der_b64 is not one DER value: {exc}") from None
        return value

    @property
    def der(self) -> bytes:
        return base64.b64decode(self.value_der_b64, validate=True)


SubjectValue = Annotated[str, Field(min_length=1, max_length=255)]


class CertificateDescription(_Strict):
    """A leaf (or, with ``allow_ca``, CA) certificate as a template describes it.

    Validate with ``CertificateDescription.model_validate(data,
    context={"allow_ca": bool})``; without the context a CA is refused.
    """

    subject: tuple[tuple[SubjectAttr, SubjectValue], ...] = ()
    sans: tuple[San, ...] = Field(default=(), max_length=MAX_SANS)
    not_before: datetime | None = None
    not_after: datetime | None = None
    key_usage: tuple[KeyUsageName, ...] | None = Field(default=None, min_length=1, max_length=7)
    extended_key_usage: tuple[EkuName | CheckedOid, ...] | None = Field(
        default=None, min_length=1, max_length=20)
    basic_constraints: BasicConstraints | None = None
    name_constraints: NameConstraints | None = None
    policies: tuple[CheckedOid, ...] = Field(default=(), max_length=20)
    crl_urls: tuple[Url, ...] = Field(default=(), max_length=5)
    ocsp_urls: tuple[Url, ...] = Field(default=(), max_length=5)
    ca_issuers_urls: tuple[Url, ...] = Field(default=(), max_length=5)
    extensions: tuple[CustomExtension, ...] = Field(default=(), max_length=20)

    @field_validator("subject", mode="before")
    @classmethod
    def _subject_pairs(cls, value: Any) -> Any:
        # A JSON object keeps its key order; a list of [attr, value] pairs allows repeats.
        if isinstance(value, dict):
            return list(value.items())
        return value

    @field_validator("subject")
    @classmethod
    def _subject_values(
        cls, pairs: tuple[tuple[str, str], ...]
    ) -> tuple[tuple[str, str], ...]:
        for attr, value in pairs:
            if _CONTROL_RE.search(value) or value != value.strip():
                raise ValueError(f"{attr}: no control characters or surrounding blanks")
            if len(value) > _SUBJECT_MAX[attr]:
                raise ValueError(f"{attr}: at most {_SUBJECT_MAX[attr]} characters")
            if attr == "C" and not re.fullmatch(r"[A-Z]{2}", value):
                raise ValueError("C must be a two-letter upper-case country code")
            if attr == "serialNumber" and not _PRINTABLE_RE.fullmatch(value):
                raise ValueError(
                    "serialNumber is a PrintableString: letters, digits, blank and ' ( ) + , - . "
                    f"/ : = ? only (got {value!r})"
                )
            if attr in ("emailAddress", "DC") and not value.isascii():
                raise ValueError(f"{attr} is an IA5String: ASCII only")
        return pairs

    @field_validator("sans")
    @classmethod
    def _unique_sans(cls, sans: tuple[San, ...]) -> tuple[San, ...]:
        seen: set[tuple[str, str]] = set()
        unique = []
        for san in sans:
            if (san.type, san.value) not in seen:
                seen.add((san.type, san.value))
                unique.append(san)
        if sum(1 for s in unique if s.type == "uri" and s.value.startswith("spiffe:")) > 1:
            raise ValueError("at most one spiffe:// URI SAN (X509-SVID)")
        return tuple(unique)

    @field_validator("not_before", "not_after")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("times must carry a time zone (use Z for UTC)")
        return value

    @field_validator("policies", "crl_urls", "ocsp_urls", "ca_issuers_urls")
    @classmethod
    def _no_repeats(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(values)) != len(values):
            raise ValueError("lists a value twice")
        return values

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> CertificateDescription:
        allow_ca = bool((info.context or {}).get("allow_ca", False))
        bc = self.basic_constraints
        ca = bc is not None and bc.ca
        usage = set(self.key_usage or ())
        if not self.subject and not self.sans:
            raise ValueError("a certificate needs a subject or at least one SAN")
        if ca and not allow_ca:
            raise ValueError("basic_constraints.ca: a template may not issue a CA certificate "
                             "(allow_ca is off)")
        if bc is not None and bc.path_length is not None and not ca:
            raise ValueError("basic_constraints.path_length only applies to a CA")
        if self.name_constraints is not None and not ca:
            raise ValueError("name_constraints only apply to a CA certificate")
        if "key_cert_sign" in usage and not ca:
            raise ValueError("key_usage key_cert_sign needs basic_constraints.ca")
        if ca and "key_cert_sign" not in usage:
            raise ValueError("a CA certificate needs key_usage key_cert_sign")
        if (self.not_before is not None and self.not_after is not None
                and self.not_after <= self.not_before):
            raise ValueError("not_after must be later than not_before")
        seen: set[str] = set()
        for ext in self.extensions:
            owner = OWNED_EXTENSION_OIDS.get(ext.oid)
            if owner is not None:
                raise ValueError(f"extensions: {ext.oid} is {owner}")
            if ext.oid in seen:
                raise ValueError(f"extensions: {ext.oid} appears twice")
            seen.add(ext.oid)
        return self

    @property
    def is_ca(self) -> bool:
        return self.basic_constraints is not None and self.basic_constraints.ca
