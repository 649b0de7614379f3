"""ACME authorizations and challenges (RFC 8555 §7.5): reading and deactivating an
authorization, starting a challenge's validation in the bounded pool, recording its outcome,
and moving the order to ready (or invalid) when its authorizations are settled.

A challenge is claimed by a conditional update (pending -> processing, or a stale attempt
restarted) so that of two POSTs racing on any database exactly one runs the attempt; only
the attempt holding the claim records its outcome.
"""

from __future__ import annotations

import contextlib
import json
from concurrent import futures
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update

from appliance import logs
from appliance.acme import jws, queries, validation
from appliance.acme.context import Ctx, Reply, retry_after
from appliance.acme.problems import AcmeProblem
from appliance.acme.validation_pool import ValidationPool
from appliance.audit.log import Actor
from appliance.rfc3339 import format_z, to_utc
from appliance.runtime import Appliance
from appliance.store.models import AcmeAccount, AcmeAuthorization, AcmeChallenge, AcmeOrder

log = logs.get("acme")
# An attempt is bounded by the validation timeout; one older than that plus this margin
# (clock differences between nodes, the recording transaction) belongs to a process that
# died. Restarting early is harmless anyway: only the attempt holding the claim records.
STALE_MARGIN_SECONDS = 10
_AUTHZS, _CHALLS = queries.AUTHZS, queries.CHALLS
_SET_AUTHZ = update(_AUTHZS).where(_AUTHZS.c.id == bindparam("b_id"))
_SET_CHALL = update(_CHALLS).where(_CHALLS.c.id == bindparam("b_id"))
# pending -> processing, or a stale processing attempt restarted, only from exactly the
# state the request read: of two POSTs racing on any database, one wins.
_CLAIM_CHALL = update(_CHALLS).where(
    _CHALLS.c.id == bindparam("b_id"), _CHALLS.c.status == "pending").values(
    status="processing", processing_since=bindparam("b_started"))
_RECLAIM_CHALL = update(_CHALLS).where(
    _CHALLS.c.id == bindparam("b_id"), _CHALLS.c.status == "processing",
    _CHALLS.c.processing_since == bindparam("b_since")).values(
    processing_since=bindparam("b_started"))
_AUTHZ_STATUSES = select(_AUTHZS.c.status).where(_AUTHZS.c.order_id == bindparam("b_order"))
_AUTHZ_BY_ID = select(_AUTHZS).where(_AUTHZS.c.id == bindparam("b_id"))
_CHALLS_OF = select(_CHALLS).where(_CHALLS.c.authorization_id == bindparam("b_authz")).order_by(
    _CHALLS.c.type)
_CHALL_AND_AUTHZ = select(
    _CHALLS.c.id, _CHALLS.c.authorization_id, _CHALLS.c.type, _CHALLS.c.token,
    _CHALLS.c.status, _CHALLS.c.validated_at, _CHALLS.c.error, _CHALLS.c.processing_since,
    _AUTHZS.c.account_id, _AUTHZS.c.order_id, _AUTHZS.c.status.label("authz_status"),
    _AUTHZS.c.expires_at, _AUTHZS.c.identifier_type, _AUTHZS.c.identifier_value,
    _AUTHZS.c.wildcard,
).select_from(_CHALLS.join(_AUTHZS, _AUTHZS.c.id == _CHALLS.c.authorization_id)).where(
    _CHALLS.c.id == bindparam("b_id"))


class Authorizations:
    """Authorizations and their challenges for one worker; validations run in its pool."""

    def __init__(self, app: Appliance, settings: validation.ValidationSettings,
                 pool: ValidationPool) -> None:
        self.app = app
        self.validation = settings
        self.pool = pool

    def _challenge_json(self, ctx: Ctx, ch: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"type": ch.type, "url": ctx.url("chall", ch.id),
                               "status": ch.status, "token": ch.token}
        if ch.validated_at:
            out["validated"] = format_z(ch.validated_at)
        if ch.error:
            out["error"] = json.loads(ch.error)
        return out

    def _authz_json(self, ctx: Ctx, az: Any, challenges: list[Any]) -> dict[str, Any]:
        status = az.status
        if status == "pending" and to_utc(az.expires_at) <= datetime.now(UTC):
            status = "expired"
        out: dict[str, Any] = {
            "identifier": {"type": az.identifier_type, "value": az.identifier_value},
            "status": status, "expires": format_z(az.expires_at),
            "challenges": [self._challenge_json(ctx, c) for c in challenges],
        }
        if az.wildcard:
            out["wildcard"] = True
        return out

    def _load_authz(self, db: Any, acct: AcmeAccount, authz_id: str) -> AcmeAuthorization:
        az = db.get(AcmeAuthorization, authz_id)
        if az is None or az.account_id != acct.id:
            raise AcmeProblem("malformed", "no such authorization", status=404)
        return az  # type: ignore[no-any-return]

    def authorization(self, ctx: Ctx, acct: AcmeAccount, authz_id: str,
                      req: jws.Verified) -> Reply:
        payload = req.json()
        if payload and payload != {"status": "deactivated"}:
            raise AcmeProblem("malformed", "an authorization can only be deactivated")
        if not payload:  # a read (POST-as-GET): Core, one snapshot
            with self.app.db.read() as conn:
                found = conn.execute(_AUTHZ_BY_ID, {"b_id": authz_id}).first()
                if found is None or found.account_id != acct.id:
                    raise AcmeProblem("malformed", "no such authorization", status=404)
                rows = conn.execute(_CHALLS_OF, {"b_authz": authz_id}).all()
            # A client polling an authorization whose challenge is being validated is told
            # when to look again (RFC 8555 §8.2), as it is by the challenge itself.
            headers = retry_after(self.app) if any(r.status == "processing"
                                                   for r in rows) else {}
            return Reply(200, self._authz_json(ctx, found, list(rows)), headers)
        with self.app.db.transaction() as db:
            az = self._load_authz(db, acct, authz_id)
            if payload:
                if az.status not in ("pending", "valid"):
                    raise AcmeProblem("malformed", f"the authorization is {az.status}")
                az.status = "deactivated"
                order = db.get(AcmeOrder, az.order_id)
                if order is not None and order.status in ("pending", "ready"):
                    order.status = "invalid"
                self.app.audit_log().append(
                    db, "acme.authorization.deactivated", Actor(f"acme:{acct.id}", "client"),
                    object_ids={"authorization": az.id, "account": acct.id},
                    details={"identifier": az.identifier_value})
            challenges = db.scalars(select(AcmeChallenge).where(
                AcmeChallenge.authorization_id == authz_id).order_by(AcmeChallenge.type)).all()
            body = self._authz_json(ctx, az, list(challenges))
        return Reply(200, body)

    def challenge(self, ctx: Ctx, acct: AcmeAccount, chall_id: str,
                  req: jws.Verified) -> Reply:
        """POST {} starts validation; POST-as-GET only reads.

        The attempt runs in the bounded validation pool (a slow or silent target does
        not hold a request worker); the request waits up to
        ``acme.validation_wait_seconds`` for the outcome and otherwise answers
        "processing" with Retry-After (RFC 8555 §7.5.1), the client polls. A challenge
        left "processing" by a process that died can be started again once its attempt
        is older than the validation timeout plus a margin.
        """
        start = not req.post_as_get
        if start:
            req.json()  # must be a JSON object (normally {})
        with self.app.db.read() as conn:
            ch = conn.execute(_CHALL_AND_AUTHZ, {"b_id": chall_id}).first()
        if ch is None or ch.account_id != acct.id:
            raise AcmeProblem("malformed", "no such challenge", status=404)
        up = {"Link": f'<{ctx.url("authz", ch.authorization_id)}>;rel="up"'}
        now = datetime.now(UTC)
        if not start or ch.authz_status != "pending" or not (
                ch.status == "pending" or self._stale(ch, now)):
            return self._challenge_reply(ctx, ch, up)
        if to_utc(ch.expires_at) <= now:
            raise AcmeProblem("malformed", "the authorization has expired")
        started = now.replace(microsecond=0)
        reserved = False
        # The first claim is one conditional update (Core); a restart is audited with it
        # (the audit log writes through an ORM session).
        claim: contextlib.AbstractContextManager[Any] = (
            self.app.db.write() if ch.status == "pending" else self.app.db.transaction())
        try:
            with claim as db:
                if ch.status == "pending":
                    claimed = db.execute(_CLAIM_CHALL, {"b_id": ch.id, "b_started": started})
                else:
                    claimed = db.execute(_RECLAIM_CHALL, {
                        "b_id": ch.id, "b_since": ch.processing_since, "b_started": started})
                if claimed.rowcount == 1:
                    # A slot is taken before the claim commits: a full pool undoes the
                    # claim, and nobody ever sees an attempt that will not run.
                    if not self.pool.reserve():
                        raise AcmeProblem(
                            "rateLimited", "too many validations are running; retry later",
                            headers=retry_after(self.app))
                    reserved = True
                    if ch.status == "processing":
                        self.app.audit_log().append(
                            db, "acme.challenge.restarted",
                            Actor(f"acme:{acct.id}", "client"),
                            object_ids={"challenge": ch.id,
                                        "authorization": ch.authorization_id,
                                        "account": acct.id, "provisioner": ctx.prov.name},
                            details={"interrupted_attempt_started": format_z(
                                ch.processing_since)})
        except BaseException:
            if reserved:
                self.pool.release()
            raise
        if not reserved:  # another request claimed it first: show where its attempt is
            return self._current_challenge(ctx, ch.id, up)
        job = _Validation(self, ctx.prov.name, acct.id, acct.thumbprint, ch, started,
                          ctx.url("account", acct.id))
        future = self.pool.submit(job.run)
        wait = self.app.settings.config.acme.validation_wait_seconds
        if wait > 0:  # done or not, the row says where the attempt is
            futures.wait([future], timeout=wait)
        return self._current_challenge(ctx, ch.id, up)

    def _current_challenge(self, ctx: Ctx, chall_id: str, up: dict[str, str]) -> Reply:
        with self.app.db.read() as conn:
            return self._challenge_reply(
                ctx, conn.execute(_CHALL_AND_AUTHZ, {"b_id": chall_id}).one(), up)

    def _stale(self, ch: Any, now: datetime) -> bool:
        """A "processing" attempt older than any live one can be (its process died)."""
        if ch.status != "processing" or ch.processing_since is None:
            return False
        limit = self.validation.timeout + STALE_MARGIN_SECONDS
        return bool(to_utc(ch.processing_since) + timedelta(seconds=limit) < now)

    def _challenge_reply(self, ctx: Ctx, ch: Any, up: dict[str, str]) -> Reply:
        headers = dict(up)
        if ch.status == "processing":
            headers.update(retry_after(self.app))
        return Reply(200, self._challenge_json(ctx, ch), headers)

    def record_validation(self, prov_name: str, account_id: str, ch: Any,
                          started: datetime, checked: str,
                          error: dict[str, Any] | None) -> None:
        """Store one attempt's outcome and audit it, in one transaction; only the attempt
        that holds the claim (same start time, still processing) changes the rows."""
        now = datetime.now(UTC).replace(microsecond=0)
        with self.app.db.transaction() as db:
            row: Any = db.execute(_CHALL_AND_AUTHZ, {"b_id": ch.id}).one()
            mine = row.status == "processing" and row.processing_since is not None and \
                to_utc(row.processing_since) == started
            recorded = False
            if mine:
                new = {"status": "invalid" if error else "valid",
                       "error": json.dumps(error) if error else None,
                       "validated_at": None if error else now, "processing_since": None}
                if row.authz_status != "pending":  # deactivated or expired meanwhile
                    new = {"status": "invalid", "processing_since": None, "validated_at": None,
                           "error": json.dumps(AcmeProblem(
                               "malformed",
                               f"the authorization became {row.authz_status}").document())}
                db.execute(_SET_CHALL, {"b_id": ch.id, **new})
                if row.authz_status == "pending":
                    db.execute(_SET_AUTHZ, {"b_id": ch.authorization_id,
                                            "status": new["status"]})
                    self._advance_order(db, row.order_id)
                recorded = True
            self.app.audit_log().append(
                db, "acme.challenge.validated" if not error else "acme.challenge.failed",
                Actor(f"acme:{account_id}", "client"), outcome="success" if not error else
                "failure", object_ids={"challenge": ch.id,
                                       "authorization": ch.authorization_id,
                                       "account": account_id, "provisioner": prov_name},
                details={"type": ch.type, "identifier": {"type": ch.identifier_type,
                                                         "value": ch.identifier_value},
                         "checked": checked, "error": error, "started": format_z(started),
                         "recorded": recorded})

    def _advance_order(self, db: Any, order_id: str) -> None:
        order = db.execute(queries.ORDER_BY_ID, {"b_id": order_id}).first()
        if order is None or order.status != "pending":
            return
        statuses = db.execute(_AUTHZ_STATUSES, {"b_order": order_id}).scalars().all()
        if any(s in ("invalid", "deactivated", "revoked") for s in statuses):
            db.execute(queries.SET_ORDER, {
                "b_id": order_id, "status": "invalid", "error": json.dumps(
                    {"type": "urn:ietf:params:acme:error:unauthorized",
                     "detail": "an authorization failed"})})
        elif all(s == "valid" for s in statuses):
            db.execute(queries.SET_ORDER, {"b_id": order_id, "status": "ready"})


class _Validation:
    """One attempt, run on a pool thread: validate, then record (never raises to the pool
    for a validation failure; those are outcomes)."""

    def __init__(self, service: Authorizations, prov_name: str, account_id: str,
                 thumbprint: str, ch: Any, started: datetime, account_uri: str) -> None:
        self.service, self.prov_name, self.account_id = service, prov_name, account_id
        self.thumbprint, self.ch, self.started = thumbprint, ch, started
        self.account_uri = account_uri

    def run(self) -> None:
        ch = self.ch
        key_auth = validation.key_authorization(ch.token, self.thumbprint)
        error: dict[str, Any] | None = None
        # A wildcard is proven at its base name, but CAA reads issuewild for it.
        ident = f"*.{ch.identifier_value}" if ch.wildcard else ch.identifier_value
        try:
            checked = validation.validate(ch.type, ch.identifier_type, ident, ch.token,
                                          key_auth, self.service.validation,
                                          account_uri=self.account_uri)
        except validation.ValidationError as exc:
            checked = ""
            error = AcmeProblem(exc.problem, str(exc)).document()
        except Exception as exc:  # a bug must not leave the challenge looking alive
            log.exception("validation of challenge %s raised", ch.id)
            checked = ""
            error = AcmeProblem("serverInternal", "validation failed on the server: "
                                f"{type(exc).__name__}").document()
        self.service.record_validation(self.prov_name, self.account_id, ch, self.started,
                                       checked, error)
