"""ACME revokeCert (RFC 8555 §7.6): by the account that ordered the certificate, or by a
JWS signed with the certificate's own key; then the appliance's one revocation path.

What the revocation itself refuses (already revoked, a reason it does not accept) is
answered from the error's classification (``acme_type``) by the blueprint's handler.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from josepy.jwk import JWK
from sqlalchemy import select

from appliance.acme import jws
from appliance.acme.context import Ctx, Reply
from appliance.acme.problems import AcmeProblem
from appliance.audit.log import Actor
from appliance.revocation import revoke
from appliance.runtime import Appliance
from appliance.store.models import AcmeAccount, AcmeOrder, Certificate

# Not accepted from an ACME client: 2 (cACompromise), 6 (certificateHold, revocation is
# final here), 7 (unused), 8 (removeFromCRL), 10 (aACompromise).
REFUSED_REASONS = (2, 6, 7, 8, 10)


def revoke_cert(app: Appliance, ctx: Ctx, req: jws.Verified, acct: AcmeAccount | None
                ) -> Reply:
    payload = req.json()
    der = jws.b64decode(payload.get("certificate"), "certificate")
    try:
        cert = x509.load_der_x509_certificate(der)
    except (ValueError, x509.InvalidVersion):
        raise AcmeProblem("malformed", "certificate is not DER") from None
    serial = f"{cert.serial_number:x}"
    with app.db.sessions() as db:
        row = db.scalars(select(Certificate).where(
            Certificate.serial_hex == serial)).one_or_none()
        if row is None or row.der != der:
            raise AcmeProblem("malformed", "this CA did not issue that certificate",
                              status=404)
        if acct is not None:
            owned = db.scalar(select(AcmeOrder.id).where(
                AcmeOrder.account_id == acct.id,
                AcmeOrder.certificate_serial == serial).limit(1))
            if owned is None:
                raise AcmeProblem("unauthorized", "the account did not order that "
                                  "certificate")
    if acct is None and jws.thumbprint(req.jwk) != jws.thumbprint(_jwk_of(cert)):
        raise AcmeProblem("unauthorized", "the JWS key is not the certificate's key")
    reason = payload.get("reason", 0)
    if not isinstance(reason, int) or isinstance(reason, bool) or reason in REFUSED_REASONS:
        raise AcmeProblem("badRevocationReason", f"reason {reason!r} is not accepted "
                          "(0, 1, 3, 4, 5, 9)")
    who = f"acme:{acct.id}" if acct else f"acme:certificate-key:{serial}"
    revoke.revoke(app, serial, reason, Actor(who, "client"), provisioner=row.provisioner_name)
    return Reply(200, None)


def _jwk_of(cert: x509.Certificate) -> JWK:
    """The certificate's public key as a JWK, to compare by RFC 7638 thumbprint."""
    return JWK.load(cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
