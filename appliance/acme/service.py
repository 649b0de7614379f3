"""The ACME server (RFC 8555 §7) as the web layer sees it: one object per worker that
composes the resources, each in its own module (``context``: provisioner, directory,
account lookup; ``accounts``; ``orders``; ``challenges``: authorizations and challenges;
``finalize``: finalize and certificates; ``revocation``; ``ari``).

The web layer (``appliance.web.acme``) only turns HTTP into calls here and ``Reply``
objects back into HTTP; every rule and every state change lives in those modules, and
every state change is audited in the transaction that makes it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from josepy.jwk import JWK
from sqlalchemy import Connection

from appliance import durations
from appliance.acme import ari, context, jws, revocation, validation
from appliance.acme.accounts import Accounts
from appliance.acme.challenges import Authorizations
from appliance.acme.context import NOT_READ, Ctx, Reply
from appliance.acme.finalize import Finalizer
from appliance.acme.nonces import Nonces
from appliance.acme.orders import Orders
from appliance.acme.validation_pool import ValidationPool
from appliance.issuance.pipeline import Issuer
from appliance.runtime import Appliance
from appliance.store.models import AcmeAccount


class AcmeService:
    """One per worker (create_app): the resources, sharing the validation settings, the
    validation pool and the nonce store."""

    def __init__(self, app: Appliance, issuer: Issuer) -> None:
        self.app = app
        self.nonces = Nonces(app)
        cfg = app.settings.config.acme
        self.validation = validation.ValidationSettings(
            http_port=cfg.http01_port, tls_alpn_port=cfg.tls_alpn01_port,
            resolvers=tuple(cfg.resolvers), timeout=cfg.validation_timeout_seconds,
            caa_identities=tuple(cfg.caa_identities))
        self.accounts = Accounts(app)
        self.orders = Orders(app, issuer, timedelta(seconds=durations.parse(cfg.order_lifetime)))
        self.authorizations = Authorizations(app, self.validation,
                                             ValidationPool(cfg.max_concurrent_validations))
        self.finalizer = Finalizer(app, issuer)

    def context(self, name: str, base: str) -> Ctx:
        return context.context(self.app, name, base)

    def directory(self, ctx: Ctx) -> Reply:
        return context.directory(ctx, self.validation.caa_identities)

    def account_key(self, ctx: Ctx, kid: str,
                    row: Any = NOT_READ) -> tuple[AcmeAccount, JWK]:
        return context.account_key(self.app, ctx, kid, row)

    def redeem(self, name: str, base: str, nonce: str, kid: str | None,
               found: dict[str, Any]) -> bool:
        """Spend a signed request's nonce and, in the same transaction, read its provisioner
        (``found["ctx"]``, refused there if it is not an enabled ACME one: then the nonce
        is not spent) and the account ``kid`` names (``found["row"]``, judged later by
        ``account_key``); whether the nonce was good."""
        def read(db: Connection) -> None:
            found["ctx"] = ctx = context.read_context(db, self.app, name, base)
            if kid is not None:
                found["row"] = context.read_account(db, ctx, kid)
        return self.nonces.redeem(nonce, also=read)

    def revoke_cert(self, ctx: Ctx, req: jws.Verified, acct: AcmeAccount | None) -> Reply:
        return revocation.revoke_cert(self.app, ctx, req, acct)

    def renewal_info(self, cert_id: str) -> Reply:
        return ari.renewal_info(self.app, cert_id)
