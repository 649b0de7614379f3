"""What only a ceremony needs to turn its steps into certificates and CRLs.

The shared X.509 helpers (names, extensions, the signing gate) live in
``appliance.x509``; this is the ceremony's own part: its error, its validity rules
for CA certificates and its offline CRL entries.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509

from appliance.ceremony.schema import RevokedEntry, Validity
from appliance.errors import ApplianceError, KeyPolicyError
from appliance.x509 import signing
from appliance.x509.algorithms import PublicKey

_REASONS = {r.name: r for r in x509.ReasonFlags}


class CeremonyError(ApplianceError):
    """A ceremony step cannot go on; nothing of that step was signed or registered."""

    code = "ceremony_error"


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


def revoked_entries(entries: list[RevokedEntry], extra_serials: list[int],
                    now: datetime) -> list[x509.RevokedCertificate]:
    out = []
    for entry in entries:
        serial = int(entry.serial.removeprefix("0x"), 16)
        b = (x509.RevokedCertificateBuilder().serial_number(serial)
             .revocation_date(entry.revoked_at or now))
        if entry.reason != "unspecified":
            b = b.add_extension(x509.CRLReason(_REASONS[entry.reason]), critical=False)
        out.append(b.build())
    for serial in extra_serials:
        out.append(x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
                   .add_extension(x509.CRLReason(x509.ReasonFlags.cessation_of_operation),
                                  critical=False).build())
    return out


def ca_public_key(cert: x509.Certificate) -> PublicKey:
    """The CA certificate's key; one the appliance cannot work with stops the step."""
    try:
        return signing.ca_public_key(cert)
    except KeyPolicyError as exc:
        raise CeremonyError(str(exc)) from None
