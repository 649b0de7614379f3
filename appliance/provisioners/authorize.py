"""From a credential to a ``ProvisionerContext``: who asks, under which provisioner."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, select

from appliance.audit.log import Actor
from appliance.issuance import spend as spending
from appliance.issuance.request import ProvisionerContext, TokenSpend
from appliance.provisioners import tokens, x5c
from appliance.provisioners.settings import ProvisionerSettings, accepted_audiences, effective
from appliance.runtime import Appliance
from appliance.store import epochs as store_epochs
from appliance.store.models import Provisioner

PRUNE_ONE_IN = 512
PROVISIONER_CACHE = 256  # provisioner rows by name, per process (behind the epoch)
SPENT_MARGIN = timedelta(seconds=tokens.LEEWAY + 600)
_PROVISIONERS = cast(Table, Provisioner.__table__)
# Built once (values bound per call).
_BY_NAME = select(*(_PROVISIONERS.c[k] for k in (
    "id", "name", "type", "config", "credential", "authority_id"))).where(
    _PROVISIONERS.c.name == bindparam("b_name"))


def prune_spent(db: Connection, now: datetime) -> int:
    """Forget spent token ids that can no longer come back: a token is refused once past
    its ``exp`` (plus the verification leeway), so its id guards nothing after that. The
    margin also covers clocks of other nodes that run a little behind."""
    return spending.prune(db, now - SPENT_MARGIN)


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


@dataclass(frozen=True)
class Verified:
    """A one-time token verified and not yet spent: the pipeline spends ``spend`` with the
    serial reservation (or with the refusal), in one transaction."""

    ctx: ProvisionerContext
    claims: tokens.TokenClaims
    spend: TokenSpend
    epochs: Mapping[str, int]  # read before the provisioner row: the request's epochs


def one_time_token(app: Appliance, ott: str, path: str = "/1.0/sign"
                   ) -> tuple[ProvisionerContext, tokens.TokenClaims]:
    """Verify a one-time token and spend it now, in a transaction of its own (revocation;
    issuance leaves the spend to the pipeline: ``verify_one_time_token``)."""
    verified = verify_one_time_token(app, ott, path)
    try:
        with spending.replay_refused(), app.db.write() as db:
            spending.spend(db, verified.spend)
    except tokens.TokenError as exc:
        audit_failure(app, path, verified.ctx.name, exc)
        raise
    return verified.ctx, verified.claims


def verify_one_time_token(app: Appliance, ott: str, path: str = "/1.0/sign") -> Verified:
    """Verify a one-time token (JWK or x5c provisioner); a refusal is audited. Not spent:
    the caller spends ``Verified.spend`` (``spend``, or the pipeline's transaction)."""
    try:
        return _verify(app, ott, path)
    except tokens.TokenError as exc:
        claimed = "?"
        with contextlib.suppress(tokens.TokenError):
            claimed = tokens.unverified_issuer(ott)
        audit_failure(app, path, claimed, exc)
        raise


def replayed(app: Appliance, verified: Verified, exc: tokens.TokenError,
             path: str = "/1.0/sign") -> None:
    """Audit a token the pipeline found spent already, as ``one_time_token`` audits one."""
    audit_failure(app, path, verified.ctx.name, exc)


def _row(app: Appliance, name: str) -> tuple[Mapping[str, int], Any]:
    """The epochs, and the provisioner row ``name`` (None if there is none): cached in this
    process while no provisioner changed anywhere (``appliance.store.epochs``)."""
    cache = app.epoch_cache("provisioner", "provisioner-rows", PROVISIONER_CACHE)
    with app.db.read() as db:  # every request: a changed provisioner counts at once
        epochs = store_epochs.read(db)
        return epochs, cache.get(epochs, name,
                                 lambda: db.execute(_BY_NAME, {"b_name": name}).first())


def _verify(app: Appliance, ott: str, path: str) -> Verified:
    name = tokens.unverified_issuer(ott)
    epochs, row = _row(app, name)
    if row is None or row.type not in ("jwk", "x5c"):
        raise tokens.TokenError("invalid token: unknown provisioner")
    ctx = context_of(app, row.id, row.name, row.type, row.config, row.authority_id)
    credential = row.credential
    svc = app.settings.config.service
    audience = accepted_audiences(svc, path)
    if ctx.type == "jwk":
        claims = tokens.verify(ott, json.loads(credential), provisioner=name, audience=audience)
    else:
        claims = x5c.verify(ott, credential, provisioner=name, audience=audience)
    # After the signature: only the provisioner's own key holder learns it is disabled.
    require_enabled(row.config, row.name)
    assert ctx.id is not None
    prune = (datetime.now(UTC) - SPENT_MARGIN
             if secrets.randbelow(PRUNE_ONE_IN) == 0 else None)  # now and then, as for nonces
    return Verified(ctx, claims, TokenSpend(
        jti=f"{name}:{claims.jti}", provisioner_id=ctx.id,
        expires_at=datetime.fromtimestamp(claims.expires_at, UTC), prune_before=prune),
        epochs)
