"""What every ACME resource shares: the request's provisioner (``Ctx``), the ``Reply`` the
web layer turns into HTTP, the directory, the account lookup behind every ``kid``, and ids.

Provisioner and account are read on every request (Core, the few columns needed), so a
changed or removed provisioner and a deactivated account or changed key take effect at once
in every worker; only the parsing of a stored key is cached, by its text. A signed request
reads both in the transaction that spends its nonce (``read_context``, ``read_account``):
one transaction for the three.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, cast

from josepy.jwk import JWK
from sqlalchemy import Connection, Table, bindparam, select

from appliance.acme.problems import AcmeProblem
from appliance.issuance.request import ProvisionerContext
from appliance.provisioners.authorize import context_of as provisioner_context_of
from appliance.provisioners.authorize import settings_of
from appliance.provisioners.settings import ProvisionerSettings
from appliance.runtime import Appliance
from appliance.store.models import AcmeAccount, Provisioner

_PROVISIONERS = cast(Table, Provisioner.__table__)
_ACCOUNTS = cast(Table, AcmeAccount.__table__)
# Per-request reads, built once (values bound per call).
_PROVISIONER_BY_NAME = select(*(_PROVISIONERS.c[k] for k in (
    "id", "name", "type", "config", "authority_id"))).where(
    _PROVISIONERS.c.name == bindparam("b_name"))
_ACCOUNT_BY_ID = select(_ACCOUNTS).where(_ACCOUNTS.c.id == bindparam("b_id"))
NOT_READ: Any = object()  # account_key: the row was not read with the nonce


@dataclass
class Reply:
    status: int
    body: Any  # a JSON-able object, or str for a PEM chain, or None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass(frozen=True)
class Ctx:
    """One request's provisioner and the absolute URL prefix the client used."""

    prov: ProvisionerContext
    settings: ProvisionerSettings  # the ACME ones: EAB required, challenges offered
    base: str  # https://host:port/acme/<provisioner>

    def url(self, *parts: str) -> str:
        return "/".join((self.base, *parts))


class Row:
    """A row's values by attribute, for the JSON builders (as an ORM object would give)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def new_id() -> str:
    """An id for URLs and for the operator's CLI, which would read a leading '-' as an
    option (1 id in 64 did; `acme account show -x...` failed)."""
    while (value := secrets.token_urlsafe(16)).startswith("-"):
        pass
    return value


def retry_after(app: Appliance) -> dict[str, str]:
    """The header that tells a polling client when to look again (RFC 8555 §8.2)."""
    return {"Retry-After": str(app.settings.config.acme.retry_after_seconds)}


def context(app: Appliance, name: str, base: str) -> Ctx:
    with app.db.read() as db:
        return read_context(db, app, name, base)


def read_context(db: Connection, app: Appliance, name: str, base: str) -> Ctx:
    """The request's provisioner, read on ``db`` (a signed request reads it in the
    transaction that spends its nonce); refused if it is not an enabled ACME one."""
    row = db.execute(_PROVISIONER_BY_NAME, {"b_name": name}).first()
    if row is None or row.type != "acme":
        raise AcmeProblem("malformed", f"no ACME provisioner named {name!r}", status=404)
    settings = settings_of(row.config)
    if settings.disabled:  # `provisioner update NAME --disable`: at once, every resource
        raise AcmeProblem("unauthorized", f"ACME provisioner {name!r} is disabled",
                          status=403)
    return Ctx(provisioner_context_of(app, row.id, row.name, row.type, row.config,
                                      row.authority_id), settings, base)


def directory(ctx: Ctx, caa_identities: tuple[str, ...]) -> Reply:
    return Reply(200, {
        "newNonce": ctx.url("new-nonce"), "newAccount": ctx.url("new-account"),
        "newOrder": ctx.url("new-order"), "revokeCert": ctx.url("revoke-cert"),
        "keyChange": ctx.url("key-change"), "renewalInfo": ctx.url("renewal-info"),
        "meta": {"externalAccountRequired": ctx.settings.require_eab,
                 **({"caaIdentities": list(caa_identities)} if caa_identities else {})},
    })


def account_id_of(ctx: Ctx, kid: str) -> str | None:
    """The account id a ``kid`` names in this directory (None: not one of its URLs)."""
    prefix = ctx.url("account", "")
    return kid[len(prefix):] if kid.startswith(prefix) else None


def read_account(db: Connection, ctx: Ctx, kid: str) -> Any:
    """The account row a ``kid`` names (None: none), read on ``db``: the web layer reads it
    in the transaction that spends the request's nonce, one transaction for both."""
    account_id = account_id_of(ctx, kid)
    if account_id is None:
        return None
    return db.execute(_ACCOUNT_BY_ID, {"b_id": account_id}).first()


def account_key(app: Appliance, ctx: Ctx, kid: str,
                row: Any = NOT_READ) -> tuple[AcmeAccount, JWK]:
    """The valid account a ``kid`` names in this directory, and its key; ``row`` is what
    ``read_account`` read on this request, if it was (otherwise it is read here)."""
    if account_id_of(ctx, kid) is None:
        raise AcmeProblem("accountDoesNotExist", "kid is not an account of this directory")
    if row is NOT_READ:
        with app.db.read() as db:
            row = read_account(db, ctx, kid)
    if row is None or row.provisioner_id != ctx.prov.id:
        raise AcmeProblem("accountDoesNotExist", "no such account")
    acct = AcmeAccount(**row._asdict())  # transient: never added to a session
    if acct.status != "valid":
        raise AcmeProblem("unauthorized", f"the account is {acct.status}")
    return acct, _account_jwk(acct.jwk)


@lru_cache(maxsize=4096)
def _account_jwk(text: str) -> JWK:
    return cast(JWK, JWK.from_json(json.loads(text)))
