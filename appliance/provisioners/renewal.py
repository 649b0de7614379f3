"""Who may renew which certificate.

A certificate authenticates its own renewal: by mutual TLS while it is valid
(the TLS layer has checked it), or with a short JWT signed by its key that
carries the certificate in the ``x5c`` header (the only way an expired
certificate can authenticate). Either way the certificate must be exactly one
this CA issued (DER compared with the stored copy), not revoked, its
provisioner must still exist and allow renewal, and an expired one is renewed
only where the provisioner allows it, within its grace period.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from appliance import rfc3339
from appliance.errors import ApplianceError
from appliance.issuance import spend as spending
from appliance.issuance.request import ProvisionerContext, SignRequest, TokenSpend
from appliance.provisioners.authorize import audit_failure, context, settings_of
from appliance.provisioners.settings import accepted_audiences
from appliance.provisioners.tokens import LEEWAY, TokenError, check_times
from appliance.provisioners.x5c import header_chain
from appliance.runtime import Appliance
from appliance.store.models import Certificate, Provisioner
from appliance.x509 import algorithms

MAX_TOKEN_LIFETIME = 3600


class RenewalRefused(ApplianceError):
    code = "forbidden"
    status = 403
    acme_type = "unauthorized"


@dataclass(frozen=True)
class RenewalGrant:
    certificate: x509.Certificate
    row_id: int
    provisioner: ProvisionerContext
    after_expiry: bool
    request: SignRequest


def _certificate_from_token(app: Appliance, token: str
                            ) -> tuple[x509.Certificate, str, datetime]:
    svc = app.settings.config.service
    return certificate_from_token(
        token, accepted_audiences(svc, "/1.0/renew"))


def certificate_from_token(token: str, audience: str | Sequence[str]
                           ) -> tuple[x509.Certificate, str, datetime]:
    """The certificate in the token's x5c, the token id, and when the token expires (the
    token checked against that certificate's key; whether we issued it is checked later)."""
    cert = header_chain(token)[0]
    try:
        claims = jwt.decode(
            token, cert.public_key(),  # type: ignore[arg-type]
            algorithms=list(algorithms.jws_algs("x5c")),
            audience=audience, leeway=LEEWAY,
            options={"require": ["exp", "nbf", "iat", "jti"]})
    except jwt.PyJWTError as exc:
        raise TokenError(f"invalid renewal token: {exc}") from None
    check_times(claims)
    if claims["exp"] - claims["iat"] > MAX_TOKEN_LIFETIME:
        raise TokenError("renewal token lifetime exceeds one hour")
    jti = claims["jti"]
    if not isinstance(jti, str) or not 8 <= len(jti) <= 200:
        raise TokenError("token id (jti) missing or malformed")
    return cert, jti, datetime.fromtimestamp(int(claims["exp"]), UTC)


def authenticate(app: Appliance, *, peer_der: bytes | None, bearer: str | None) -> RenewalGrant:
    try:
        return _authenticate(app, peer_der=peer_der, bearer=bearer)
    except (TokenError, RenewalRefused) as exc:
        audit_failure(app, "/1.0/renew", "renewal", exc)
        raise


def _authenticate(app: Appliance, *, peer_der: bytes | None, bearer: str | None
                  ) -> RenewalGrant:
    jti = None
    token_expires = datetime.now(UTC)
    if bearer:
        cert, jti, token_expires = _certificate_from_token(app, bearer)
    elif peer_der:
        cert = x509.load_der_x509_certificate(peer_der)
    else:
        raise TokenError("renewal needs a client certificate (mTLS) or a Bearer token")
    der = cert.public_bytes(serialization.Encoding.DER)
    now = datetime.now(UTC)
    with app.db.sessions() as db:
        row = db.scalars(select(Certificate).where(
            Certificate.serial_hex == f"{cert.serial_number:x}")).one_or_none()
        if row is None or row.der != der:
            raise TokenError("this certificate was not issued by this CA")
        if row.status == "revoked":
            raise RenewalRefused("the certificate is revoked")
        if row.status != "issued":
            raise RenewalRefused(f"the certificate is {row.status}")
        prov = db.get(Provisioner, row.provisioner_id) if row.provisioner_id else None
        if prov is None:
            raise RenewalRefused(f"provisioner {row.provisioner_name} no longer exists")
        if settings_of(prov.config).disabled:
            raise RenewalRefused(f"provisioner {prov.name} is disabled")
        ctx = context(app, prov)
        stored = json.loads(row.request_context or "{}")
        row_id, serial = row.id, row.serial_hex
        issued_at = rfc3339.to_utc(row.issued_at or row.reserved_at)
    if ctx.claims.disable_renewal:
        raise RenewalRefused(f"provisioner {ctx.name} does not allow renewal")
    not_after = cert.not_valid_after_utc
    expired = now > not_after
    if expired:
        if not ctx.claims.allow_renewal_after_expiry:
            raise RenewalRefused(
                f"the certificate expired at {not_after:%Y-%m-%dT%H:%M:%SZ} and provisioner "
                f"{ctx.name} does not allow renewal after expiry")
        grace = ctx.claims.renewal_grace
        if grace is not None and (now - not_after).total_seconds() > grace:
            raise RenewalRefused(
                f"the certificate expired at {not_after:%Y-%m-%dT%H:%M:%SZ}, more than "
                f"{grace}s ago (provisioner {ctx.name}'s renewal grace)")
    if jti is not None:
        assert ctx.id is not None
        # Spent now (a renewal may be forwarded by an RA, which reserves nothing); kept until
        # the token itself has expired (see authorize.prune_spent).
        with spending.replay_refused(), app.db.write() as db:
            spending.spend(db, TokenSpend(jti=f"renew:{serial}:{jti}", provisioner_id=ctx.id,
                                          expires_at=token_expires))
    # Keep the lifetime it was issued with (from issuance, not from the backdated notBefore),
    # within the provisioner's current limits.
    lifetime = round((cert.not_valid_after_utc - issued_at).total_seconds())
    lifetime = max(ctx.claims.min_duration, min(lifetime, ctx.claims.max_duration))
    request = SignRequest(
        csr=cert, provisioner=ctx, requester=f"renew:{serial}", credential_names=None,
        token_claims=stored.get("token", {}), template_data=stored.get("data") or None,
        lifetime=lifetime, renewal_of=serial, after_expiry=expired)
    return RenewalGrant(cert, row_id, ctx, expired, request)
