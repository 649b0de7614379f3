"""Generating a token key and recording it, as one audited operation.

The key is generated first (the token is the slow, fallible part), then the
database row and the audit event commit together. If that commit fails the
new key is destroyed: a key the audit log does not know of must not exist.
"""

from __future__ import annotations

from datetime import UTC, datetime

from appliance import logs
from appliance.audit.log import Actor
from appliance.errors import ApplianceError, HsmLoginError
from appliance.hsm import keys
from appliance.hsm.module import token_text
from appliance.runtime import Appliance
from appliance.store.models import HsmKey

log = logs.get("ops.keys")


def generate(app: Appliance, label: str, key_type: str, actor: Actor) -> keys.KeyInfo:
    audit = app.audit_log()
    try:
        pool = app.signing_pool()
        info = keys.generate_keypair(pool, label, key_type)
    except ApplianceError as exc:
        record_failure(app, "key.generate", actor, exc, {"label": label, "key_type": key_type})
        raise
    token = pool.token
    try:
        with app.db.transaction() as s:
            s.add(HsmKey(
                label=info.label, ck_id=info.id.hex(), key_type=info.spec.name,
                spki_sha256=info.spki_sha256, spki_der=info.spki_der,
                token_label=str(token.label), token_serial=token_text(token.serial),
                created_at=datetime.now(UTC),
            ))
            audit.append(
                s, "key.generated", actor,
                object_ids={"label": info.label, "ck_id": info.id.hex()},
                details={
                    "key_type": info.spec.name, "spki_sha256": info.spki_sha256,
                    "token_label": str(token.label), "token_serial": token_text(token.serial),
                    "sensitive": info.sensitive, "always_sensitive": info.always_sensitive,
                    "extractable": info.extractable,
                    "never_extractable": info.never_extractable,
                    "pairwise_test": "passed",
                },
            )
    except BaseException:
        log.error("recording the new key failed; destroying it", extra={"label": label})
        keys.destroy_keypair(pool, info)
        raise
    log.info("key generated", extra={"label": label, "key_type": key_type,
                                     "spki_sha256": info.spki_sha256})
    return info


def record_failure(app: Appliance, what: str, actor: Actor, exc: ApplianceError,
                   objects: dict[str, str]) -> None:
    """Audit a refused or failed operation; a failed login is its own event type."""
    event = "hsm.login_failed" if isinstance(exc, HsmLoginError) else f"{what}.failed"
    try:
        with app.db.transaction() as s:
            app.audit_log().append(
                s, event, actor, outcome="failure", object_ids=objects,
                details={"error": exc.code, "message": str(exc)[:1000]},
            )
    except ApplianceError as audit_exc:
        log.error("could not audit a failure", extra={"fault": audit_exc.code})
