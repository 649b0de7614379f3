"""From a credential to a ``ProvisionerContext``: who asks, under which provisioner."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from appliance.audit.log import Actor
from appliance.issuance.pipeline import ProvisionerContext
from appliance.provisioners import tokens, x5c
from appliance.provisioners.settings import ProvisionerSettings, effective, sign_audience
from appliance.runtime import Appliance
from appliance.store.models import Provisioner, UsedToken


def context(app: Appliance, row: Provisioner) -> ProvisionerContext:
    settings = ProvisionerSettings.model_validate_json(row.config)
    return ProvisionerContext(
        id=row.id, name=row.name, type=row.type, settings=settings,
        claims=effective(settings.claims, app.settings.config.claims),
        authority_id=row.authority_id)


def audit_failure(app: Appliance, what: str, claimed: str, exc: Exception) -> None:
    """A refused credential is a failed login: audited (never the credential itself)."""
    with app.db.transaction() as db:
        app.audit_log().append(db, "auth.failed", Actor(f"unauthenticated:{claimed[:100]}",
                                                         "client"), outcome="denied",
                               object_ids={"endpoint": what},
                               details={"reason": str(exc)[:300]})


def one_time_token(app: Appliance, ott: str, path: str = "/1.0/sign"
                   ) -> tuple[ProvisionerContext, tokens.TokenClaims]:
    try:
        return _one_time_token(app, ott, path)
    except tokens.TokenError as exc:
        claimed = "?"
        with contextlib.suppress(tokens.TokenError):
            claimed = tokens.unverified_issuer(ott)
        audit_failure(app, path, claimed, exc)
        raise


def _one_time_token(app: Appliance, ott: str, path: str
                    ) -> tuple[ProvisionerContext, tokens.TokenClaims]:
    """Verify a one-time token (JWK or x5c provisioner) and spend it: a second use is
    refused in every worker and node sharing the database."""
    name = tokens.unverified_issuer(ott)
    with app.db.sessions() as db:
        row = db.scalars(select(Provisioner).where(Provisioner.name == name)).one_or_none()
        if row is None or row.type not in ("jwk", "x5c"):
            raise tokens.TokenError("invalid token: unknown provisioner")
        ctx = context(app, row)
        credential = row.credential
    svc = app.settings.config.service
    audience = sign_audience(svc.api_hostname, svc.api_listen, path)
    if ctx.type == "jwk":
        claims = tokens.verify(ott, json.loads(credential), provisioner=name, audience=audience)
    else:
        claims = x5c.verify(ott, credential, provisioner=name, audience=audience)
    try:
        with app.db.transaction() as db:
            db.add(UsedToken(jti=f"{name}:{claims.jti}", provisioner_id=ctx.id,
                             expires_at=datetime.fromtimestamp(claims.expires_at, UTC),
                             used_at=datetime.now(UTC)))
    except IntegrityError:
        raise tokens.TokenError("token already used") from None
    return ctx, claims
