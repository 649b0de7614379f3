"""From a credential to a ``ProvisionerContext``: who asks, under which provisioner."""

from __future__ import annotations

import contextlib
import json
import secrets
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import cast

from sqlalchemy import Connection, Table, bindparam, delete, insert, select
from sqlalchemy.exc import IntegrityError

from appliance.audit.log import Actor
from appliance.issuance.request import ProvisionerContext
from appliance.provisioners import tokens, x5c
from appliance.provisioners.settings import ProvisionerSettings, effective, sign_audience
from appliance.runtime import Appliance
from appliance.store.models import Provisioner, UsedToken

PRUNE_ONE_IN = 512
SPENT_MARGIN = timedelta(seconds=tokens.LEEWAY + 600)
_PROVISIONERS = cast(Table, Provisioner.__table__)
_USED_TOKENS = cast(Table, UsedToken.__table__)
# Built once (values bound per call).
_SPEND = insert(_USED_TOKENS)
_PRUNE_SPENT = delete(_USED_TOKENS).where(_USED_TOKENS.c.expires_at < bindparam("b_before"))
_BY_NAME = select(*(_PROVISIONERS.c[k] for k in (
    "id", "name", "type", "config", "credential", "authority_id"))).where(
    _PROVISIONERS.c.name == bindparam("b_name"))


def prune_spent(db: Connection, now: datetime) -> int:
    """Forget spent token ids that can no longer come back: a token is refused once past
    its ``exp`` (plus the verification leeway), so its id guards nothing after that. The
    margin also covers clocks of other nodes that run a little behind."""
    gone = db.execute(_PRUNE_SPENT, {"b_before": now - SPENT_MARGIN})
    return int(gone.rowcount)


def context(app: Appliance, row: Provisioner) -> ProvisionerContext:
    return context_of(app, row.id, row.name, row.type, row.config, row.authority_id)


def context_of(app: Appliance, id: int, name: str, type: str, config: str,
               authority_id: int) -> ProvisionerContext:
    """The context of a provisioner row as read on this request. Only the parsing of the
    stored settings JSON is cached, keyed by the exact text: a changed row parses afresh on
    the next request in every worker."""
    settings = settings_of(config)
    return ProvisionerContext(
        id=id, name=name, type=type,
        claims=effective(settings.claims, app.settings.config.claims),
        authority_id=authority_id, template=settings.template,
        require_inventory=settings.require_inventory,
        allow_template_data=settings.allow_template_data)


@lru_cache(maxsize=256)
def settings_of(config: str) -> ProvisionerSettings:
    return ProvisionerSettings.model_validate_json(config)  # frozen: safe to share


class ProvisionerDisabled(tokens.TokenError):
    """The credential names a provisioner an operator disabled (``provisioner update NAME
    --disable``): refused like an unknown one, 403, and audited as a failed login."""

    code = "forbidden"
    status = 403
    acme_type = "unauthorized"


def require_enabled(config: str, name: str) -> None:
    """Refuse a disabled provisioner (its stored settings JSON ``config``)."""
    if settings_of(config).disabled:
        raise ProvisionerDisabled(f"provisioner {name} is disabled")


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
    with app.db.read() as db:  # every request: a changed provisioner counts at once
        row = db.execute(_BY_NAME, {"b_name": name}).first()
    if row is None or row.type not in ("jwk", "x5c"):
        raise tokens.TokenError("invalid token: unknown provisioner")
    ctx = context_of(app, row.id, row.name, row.type, row.config, row.authority_id)
    credential = row.credential
    svc = app.settings.config.service
    audience = sign_audience(svc.api_hostname, svc.api_listen, path)
    if ctx.type == "jwk":
        claims = tokens.verify(ott, json.loads(credential), provisioner=name, audience=audience)
    else:
        claims = x5c.verify(ott, credential, provisioner=name, audience=audience)
    # After the signature: only the provisioner's own key holder learns it is disabled.
    require_enabled(row.config, row.name)
    try:
        # Spent before anything is issued; the primary key refuses a replay in every worker
        # and node sharing the database (Core: one INSERT).
        with app.db.write() as db:
            now = datetime.now(UTC)
            db.execute(_SPEND, {
                "jti": f"{name}:{claims.jti}", "provisioner_id": ctx.id,
                "expires_at": datetime.fromtimestamp(claims.expires_at, UTC),
                "used_at": now})
            if secrets.randbelow(PRUNE_ONE_IN) == 0:  # now and then, as for ACME nonces
                prune_spent(db, now)
    except IntegrityError:
        raise tokens.TokenError("token already used") from None
    return ctx, claims
