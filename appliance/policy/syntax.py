"""How each kind of name is parsed and normalised.

Shared by the policy rules (``model``) and the evaluation (``engine``), so a rule and a
requested name are always normalised the same way:

- Host names (DNS SANs, email domains, URI hosts): split on ``.`` (and the IDNA 2003
  alternative dots), each non-ASCII label converted with ``encodings.idna`` (nameprep +
  punycode, IDNA 2003: the ``idna`` package is not installed), ``xn--`` labels checked to
  round-trip, everything lowercased. Each label must then be LDH (``a-z``, ``0-9``, ``-``,
  not at either end), 1..63 characters; the whole name at most 253 characters, no trailing
  dot, and an all-numeric last label is refused (that is an IP address written as a DNS
  name).
- A wildcard request name is ``*.`` followed by a valid host name; an asterisk anywhere
  else makes the name malformed.
- Email addresses: ``local@domain``; the local part is a dot-atom or a quoted string of
  printable ASCII (at most 64 characters, kept case-sensitive), the domain a host name.
- URIs: a scheme, no whitespace or control characters; the host (userinfo and port
  removed) is a host name, an IP literal, or absent.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from encodings import idna as _idna
from typing import Literal
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_NAME_CHARS = 4096  # anything longer is refused before any parsing work
MAX_HOSTNAME_CHARS = 253
MAX_LABEL_CHARS = 63
MAX_LOCAL_PART_CHARS = 64

_DOTS = re.compile("[\u002e\u3002\uff0e\uff61]")
_LDH = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
_ATEXT = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+$")
_QTEXT = re.compile(r'^"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"$')


class MalformedName(ValueError):
    """A name (or rule) that cannot be parsed; the message says why, without the name."""


def quote(text: str, limit: int = 300) -> str:
    """``text`` in double quotes with control characters escaped, cut at ``limit`` characters."""
    if len(text) > limit:
        text = text[:limit] + "…"
    return json.dumps(text, ensure_ascii=False)


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text)


def normalise_hostname(text: str) -> str:
    """``text`` as a lowercase A-label host name, or MalformedName saying what is wrong."""
    if not text:
        raise MalformedName("empty name")
    if len(text) > MAX_NAME_CHARS:
        raise MalformedName("name too long")
    if _has_control(text) or any(c.isspace() for c in text):
        raise MalformedName("whitespace or control character")
    labels = _DOTS.split(text)
    if labels[-1] == "" and len(labels) > 1:
        raise MalformedName("trailing dot")
    out: list[str] = []
    for label in labels:
        if not label:
            raise MalformedName("empty label")
        out.append(_normalise_label(label))
    name = ".".join(out)
    if len(name) > MAX_HOSTNAME_CHARS:
        raise MalformedName(f"longer than {MAX_HOSTNAME_CHARS} characters")
    if out[-1].isdigit():
        raise MalformedName("all-numeric top-level label")
    return name


def _normalise_label(label: str) -> str:
    if "*" in label:
        raise MalformedName("wildcard only allowed as the whole leftmost label")
    try:
        if label.isascii():
            ascii_label = label.lower()
            if ascii_label.startswith("xn--"):
                _idna.ToUnicode(ascii_label)  # raises unless valid punycode that round-trips
        else:
            ascii_label = _idna.ToASCII(label).decode("ascii").lower()
    except (UnicodeError, ValueError):
        raise MalformedName("label is not valid IDNA") from None
    if len(ascii_label) > MAX_LABEL_CHARS:
        raise MalformedName(f"label longer than {MAX_LABEL_CHARS} characters")
    if not _LDH.match(ascii_label):
        raise MalformedName("label has characters other than letters, digits and inner hyphens")
    return ascii_label


@dataclass(frozen=True)
class DnsName:
    """A parsed DNS name; ``wildcard`` for ``*.host`` (``host`` is then the part after ``*.``)."""

    host: str
    wildcard: bool = False

    def __str__(self) -> str:
        return f"*.{self.host}" if self.wildcard else self.host


def parse_dns_name(text: str) -> DnsName:
    if text.startswith("*."):
        return DnsName(normalise_hostname(text[2:]), wildcard=True)
    return DnsName(normalise_hostname(text))


@dataclass(frozen=True)
class Mailbox:
    local: str  # case-sensitive, as written (quotes kept)
    domain: str  # normalised host name


def parse_mailbox(text: str) -> Mailbox:
    if len(text) > MAX_NAME_CHARS:
        raise MalformedName("name too long")
    local, at, domain = text.rpartition("@")
    if not at or not local:
        raise MalformedName("not local@domain")
    if len(local) > MAX_LOCAL_PART_CHARS:
        raise MalformedName(f"local part longer than {MAX_LOCAL_PART_CHARS} characters")
    if local.startswith('"'):
        if not _QTEXT.match(local):
            raise MalformedName("bad quoted local part")
    elif not all(_ATEXT.match(atom) for atom in local.split(".")):
        raise MalformedName("bad local part")
    try:
        return Mailbox(local, normalise_hostname(domain))
    except MalformedName as exc:
        raise MalformedName(f"bad domain: {exc}") from None


HostKind = Literal["name", "ip", "none"]


@dataclass(frozen=True)
class UriHost:
    """The host of a URI: a normalised host name, an IP literal, or none at all."""

    kind: HostKind
    host: str = ""


def parse_uri_host(text: str) -> UriHost:
    if len(text) > MAX_NAME_CHARS:
        raise MalformedName("name too long")
    if _has_control(text) or any(c.isspace() for c in text):
        raise MalformedName("whitespace or control character")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise MalformedName("cannot be parsed as a URI") from None
    if not parts.scheme or not _SCHEME.match(parts.scheme):
        raise MalformedName("no scheme")
    host = parts.hostname
    if not host:
        return UriHost("none")
    if parts.netloc.rpartition("@")[2].startswith("["):
        return UriHost("ip", host)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return UriHost("ip", host)
    try:
        return UriHost("name", normalise_hostname(host))
    except MalformedName as exc:
        raise MalformedName(f"bad host: {exc}") from None


def looks_like_uri(text: str) -> bool:
    scheme, sep, _ = text.partition(":")
    return bool(sep) and bool(_SCHEME.match(scheme)) and (
        "://" in text or scheme.lower() in {"urn", "mailto", "tag", "did"}
    )


SanKind = Literal["dns", "ip", "email", "uri"]
MAX_COMMON_NAME_CHARS = 64  # RFC 5280 ub-common-name


def check_san(text: str) -> tuple[SanKind, str]:
    """A SAN written as plain text, classified as the pipeline classifies a credential's names
    (``Names.from_sans``) and checked as its kind's rules say: ``(kind, value)`` with a DNS
    name as its lowercase A-label (wildcard kept) and an IP address in canonical form, or
    MalformedName saying which kind it was read as and what is wrong.

    For names written before any CSR exists (a one-time token's ``--san``): a name that no
    CSR could carry would otherwise make a token that can only fail at signing.
    """
    try:
        return "ip", str(ipaddress.ip_address(text))
    except ValueError:
        pass
    kind: SanKind
    try:
        if looks_like_uri(text):
            kind = "uri"
            parse_uri_host(text)
            return kind, text
        if "@" in text:
            kind = "email"
            parse_mailbox(text)
            return kind, text
        kind = "dns"
        return kind, str(parse_dns_name(text))
    except MalformedName as exc:
        what = {"uri": "a URI", "email": "an email address", "dns": "a DNS name"}[kind]
        raise MalformedName(f"{quote(text, 100)} is not {what}: {exc}") from None


def check_common_name(text: str) -> str:
    """A subject common name written as plain text: 1..64 characters, no control character."""
    if not text or len(text) > MAX_COMMON_NAME_CHARS:
        raise MalformedName(f"a common name is 1 to {MAX_COMMON_NAME_CHARS} characters")
    if _has_control(text):
        raise MalformedName(f"{quote(text, 100)} has a control character")
    return text
