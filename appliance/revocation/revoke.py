"""Revoking a certificate.

The revocation and its audit event commit together first: from that moment the
status store says "revoked", and the OCSP responder, which checks the status
store, never serves "good" for it again, whatever any cache holds. Then, in the
same request, the OCSP response is re-signed as revoked and the issuer's CRL
republished. If either of those fails the revocation still stands; the
pre-signer and the CRL timer finish the job, and the failure is logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from appliance import logs
from appliance.audit.log import Actor
from appliance.errors import ApplianceError
from appliance.ocsp import cache as ocsp_cache
from appliance.ocsp import presign
from appliance.revocation import crl
from appliance.revocation.reasons import parse
from appliance.runtime import Appliance
from appliance.store.models import Authority, Certificate

log = logs.get("revocation")
MAX_SERIAL_HEX = 40


class RevocationError(ApplianceError):
    code = "bad_request"


class AlreadyRevoked(RevocationError):
    """The certificate is revoked already; revocation is final, so nothing changed."""

    acme_type = "alreadyRevoked"


class NotIssued(ApplianceError):
    code = "not_found"
    status = 404


@dataclass(frozen=True)
class Revoked:
    serial_hex: str
    authority: str
    reason: str
    revoked_at: datetime
    ocsp_resigned: bool
    crl_number: int | None


def normalise_serial(value: str | int) -> str:
    """A serial as stored: lowercase hex without leading zeros (decimal with ``--decimal``)."""
    if isinstance(value, int):
        number = value
    else:
        text = value.strip().lower().replace(":", "")
        text = text.removeprefix("0x")
        if not text or len(text) > MAX_SERIAL_HEX or any(c not in "0123456789abcdef"
                                                          for c in text):
            raise RevocationError(f"not a hexadecimal serial number: {value!r}")
        number = int(text, 16)
    if number <= 0:
        raise RevocationError("serial numbers are positive")
    return f"{number:x}"


def revoke(app: Appliance, serial: str | int, reason: str | int, actor: Actor, *,
           provisioner: str | None = None) -> Revoked:
    """Revoke ``serial``; with ``provisioner`` only a certificate that provisioner issued."""
    serial_hex = normalise_serial(serial)
    reason_name = parse(reason)
    now = datetime.now(UTC).replace(microsecond=0)
    with app.db.transaction() as db:
        row = db.scalars(select(Certificate).where(
            Certificate.serial_hex == serial_hex)).one_or_none()
        if row is None or row.status not in ("issued", "revoked"):
            raise NotIssued(f"no issued certificate with serial {serial_hex}")
        if provisioner is not None and row.provisioner_name != provisioner:
            raise NotIssued(f"no certificate with serial {serial_hex} issued by {provisioner}")
        if row.status == "revoked":
            raise AlreadyRevoked(f"certificate {serial_hex} is already revoked "
                                 f"({row.revocation_reason})")
        ca = db.get(Authority, row.authority_id)
        assert ca is not None
        row.status = "revoked"
        row.revoked_at = now
        row.revocation_reason = reason_name
        cert_id, authority, shard = row.id, ca.name, row.crl_shard
        app.audit_log().append(db, "certificate.revoked", actor, object_ids={
            "serial": serial_hex, "authority": authority},
            details={"reason": reason_name, "revoked_at": now.isoformat(),
                     "subject": row.subject, "provisioner": row.provisioner_name,
                     "crl_shard": row.crl_shard})
    ocsp_cache.revocation_happened(app, serial_hex)
    resigned = False
    try:
        presign.presign_one(app, cert_id)
        resigned = True
    except Exception:
        log.exception("re-signing the OCSP response after a revocation failed; the pre-signer "
                      "will retry (the status store already answers revoked)",
                      extra={"serial": serial_hex})
    number = None
    try:
        # Only the CRL whose scope the certificate is in (its shard's, when sharded).
        number = crl.publish(app, authority, actor, shard=shard).number
    except Exception:
        log.exception("publishing the CRL after a revocation failed; the CRL timer will retry",
                      extra={"serial": serial_hex, "authority": authority, "shard": shard})
    return Revoked(serial_hex, authority, reason_name, now, resigned, number)
