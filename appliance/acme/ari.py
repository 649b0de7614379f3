"""ACME Renewal Information (RFC 9773): the certificate identifier and the suggested window.

The window is the last third of the lifetime, ending a sixth before expiry (as the
large public CAs do); once the certificate is revoked the window lies wholly in the past,
which tells a client to renew now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from sqlalchemy import select

from appliance.acme.context import Reply
from appliance.acme.jws import b64decode, b64encode
from appliance.acme.problems import AcmeProblem
from appliance.ca import authorities
from appliance.rfc3339 import format_z, to_utc
from appliance.runtime import Appliance
from appliance.store.models import Authority, Certificate
from appliance.templates import build as template_build


@dataclass(frozen=True)
class CertId:
    key_identifier: bytes
    serial: int

    @property
    def serial_hex(self) -> str:
        return f"{self.serial:x}"


def serial_der_bytes(serial: int) -> bytes:
    """The INTEGER's content octets (two's complement, minimal), as RFC 9773 §4.1 asks."""
    return serial.to_bytes(serial.bit_length() // 8 + 1, "big")


def cert_id(cert: x509.Certificate) -> str:
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    return f"{b64encode(aki.key_identifier)}.{b64encode(serial_der_bytes(cert.serial_number))}"


def parse_cert_id(text: str) -> CertId:
    if not isinstance(text, str) or len(text) > 256 or text.count(".") != 1:
        raise AcmeProblem("malformed", "a renewalInfo certID is base64url(AKI).base64url(serial)")
    aki_b64, serial_b64 = text.split(".")
    aki, serial = b64decode(aki_b64, "certID key identifier"), b64decode(serial_b64,
                                                                          "certID serial")
    if not aki or not serial or len(serial) > 21 or serial[0] & 0x80:
        raise AcmeProblem("malformed", "the certID serial must be a positive DER INTEGER")
    return CertId(aki, int.from_bytes(serial, "big"))


def window(not_before: datetime, not_after: datetime, revoked_at: datetime | None,
           now: datetime | None = None) -> tuple[datetime, datetime]:
    now = now or datetime.now(UTC)
    if revoked_at is not None:
        return min(revoked_at, now) - timedelta(seconds=1), now
    lifetime = not_after - not_before
    return not_after - lifetime / 3, not_after - lifetime / 6


def renewal_info(app: Appliance, cert_id: str) -> Reply:
    """The renewalInfo resource: the window of a certificate this CA issued (by certID)."""
    cid = parse_cert_id(cert_id)
    with app.db.sessions() as db:
        row = db.scalars(select(Certificate).where(
            Certificate.serial_hex == cid.serial_hex)).one_or_none()
        ca = db.get(Authority, row.authority_id) if row is not None else None
        if row is None or ca is None or row.not_before is None or row.not_after is None \
                or template_build.authority_key_identifier(
                    authorities.certificate(ca)).key_identifier != cid.key_identifier:
            raise AcmeProblem("malformed", "no certificate with that certID", status=404)
        start, end = window(to_utc(row.not_before), to_utc(row.not_after),
                            to_utc(row.revoked_at) if row.revoked_at else None)
    retry = app.settings.config.acme.ari_retry_after_seconds
    return Reply(200, {"suggestedWindow": {"start": format_z(start), "end": format_z(end)}},
                 {"Retry-After": str(retry)})
