"""Registration authorities at the node that registers them: register one (issue its
credential), renew its credential, list them, and audit every RA request.

A credential is issued through the one pipeline (``Issuer.issue``) with the built-in
template ``ra-credential`` under an internal context of type ``ra`` (``id`` None, like the
API's own TLS certificate): the certificate carries the RA's name (CN, SAN
``urn:appliance:ra:NAME``) taken from the registration, never from the CSR, and lives
``ra.credential_lifetime`` (short: the RA node renews it through the same path). Such a
certificate belongs to no provisioner, so ``/1.0/renew`` cannot extend it; only
``/1.0/ra/credential/renew`` can, for the same key.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance import durations, policy
from appliance.audit.log import Actor
from appliance.ca import authorities as authz
from appliance.errors import ApplianceError
from appliance.issuance.pipeline import IssuanceError, Issued, Issuer, check_csr
from appliance.issuance.request import EffectiveClaims, ProvisionerContext, SignRequest
from appliance.provisioners.settings import (
    RA_NAME_PATTERN,
    Claims,
    ProvisionerSettings,
    check_effective,
)
from appliance.ra import registry as reg
from appliance.revocation import revoke as revoke_mod
from appliance.runtime import Appliance
from appliance.store.models import NamePolicy, Provisioner

TEMPLATE = "ra-credential"
DONE = {"sign": "issued", "renew": "renewed", "revoke": "revoked", "register": "registered",
        "credential-renew": "renewed"}
DEFAULT_CREDENTIAL_LIFETIME = "72h"
MAX_POLICY_BYTES = 65_536
_NAME = re.compile(RA_NAME_PATTERN)


def credential_lifetime(app: Appliance) -> int:
    """``ra.credential_lifetime`` in seconds (72h when the section is absent)."""
    ra = getattr(app.settings.config, "ra", None)
    return durations.parse(str(getattr(ra, "credential_lifetime", DEFAULT_CREDENTIAL_LIFETIME)))


def is_ra_node(app: Appliance) -> bool:
    return getattr(app.settings.config, "role", "online") == "ra"


def ra_node() -> Any:
    """``appliance.ra.node``, the RA node's half (helper C), imported when first needed."""
    return importlib.import_module("appliance.ra.node")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise reg.RegistryError(f"an RA name is 1 to 64 of A-Z a-z 0-9 . _ - (got {name!r})")
    return name


def check_policy(text: str | None, where: str) -> policy.Policy | None:
    if text is None:
        return None
    if len(text.encode()) > MAX_POLICY_BYTES:
        raise reg.RegistryError(f"the policy of {where} is larger than {MAX_POLICY_BYTES} bytes")
    return policy.parse_policy(text, f"{where} policy")


def _context(app: Appliance, name: str, authority_id: int) -> ProvisionerContext:
    life = credential_lifetime(app)
    return ProvisionerContext(
        id=None, name=name, type="ra",
        claims=EffectiveClaims(min_duration=min(300, life), max_duration=life,
                               default_duration=life, disable_renewal=True,
                               allow_renewal_after_expiry=False, renewal_grace=None),
        authority_id=authority_id, template=TEMPLATE)


def _check_csr_names(csr: x509.CertificateSigningRequest, name: str) -> None:
    """The credential's names come from the registration; a CSR that asks for others is
    refused rather than silently given something else."""
    cns = csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if cns and str(cns[0].value) != name:
        raise IssuanceError(f"the credential CSR's CN {cns[0].value!r} is not the RA name "
                            f"{name!r}")


def _issue_credential(app: Appliance, issuer: Issuer, name: str,
                      csr: x509.CertificateSigningRequest, authority_id: int, requester: str,
                      ra_path: list[str] | None) -> Issued:
    check_csr(csr)
    _check_csr_names(csr, name)
    return issuer.issue(SignRequest(
        csr=csr, provisioner=_context(app, name, authority_id), requester=requester[:256],
        credential_names=None, token_claims={"ra_credential": {"name": name}},
        ra_path=ra_path))


def register(app: Appliance, issuer: Issuer, name: str, csr: x509.CertificateSigningRequest,
             actor: Actor, *, parent: str | None = None, max_duration: int | None = None,
             policy_text: str | None = None, ra_path: list[str] | None = None,
             authority: str | None = None) -> Issued:
    """Register RA ``name`` with the key of ``csr`` under ``parent`` (None: directly here)
    and issue its credential; audited ``ra.registered`` with the provisioner row, its
    policy and the credential's serial, in one transaction."""
    check_name(name)
    where = f"provisioner {name}"
    parsed = check_policy(policy_text, where)
    settings = _ra_settings(app, max_duration, parent)
    spki = reg.spki_digest(csr.public_key())
    authority = authority or app.settings.config.service.issuing_authority
    with app.db.sessions() as db:
        _refuse_taken(db, name, spki, parent)
        authority_id = authz.get(db, authority).id
    issued = _issue_credential(app, issuer, name, csr, authority_id, actor.name, ra_path)
    try:
        _record_registered(app, name, issued, authority, authority_id, settings, parent,
                           policy_text, parsed, spki, ra_path, actor)
    except BaseException:
        # Another registration took the name or key meanwhile: the credential just issued
        # belongs to no RA; it is revoked rather than left valid.
        with contextlib.suppress(ApplianceError):
            revoke_mod.revoke(app, issued.serial_hex, "cessationOfOperation", actor)
        raise
    return issued


def _record_registered(app: Appliance, name: str, issued: Issued, authority: str,
                       authority_id: int, settings: ProvisionerSettings, parent: str | None,
                       policy_text: str | None, parsed: policy.Policy | None, spki: str,
                       ra_path: list[str] | None, actor: Actor) -> None:
    with app.db.transaction() as db:
        row = reg.record(db, name, issued.certificate, authority_id=authority_id,
                         settings=settings)
        if policy_text is not None:
            db.add(NamePolicy(level="provisioner", provisioner_id=row.id, source=policy_text,
                              updated_at=datetime.now(UTC)))
        app.audit_log().append(
            db, "ra.registered", actor, object_ids={"provisioner": name,
                                                   "serial": issued.serial_hex},
            details={"type": "ra", "authority": authority, "parent": parent,
                     "settings": settings.model_dump(),
                     "policy": parsed.to_yaml() if parsed is not None else None,
                     "spki_sha256": spki, "ra_path": ra_path,
                     "not_after": issued.certificate.not_valid_after_utc.isoformat()})


def _refuse_taken(db: Session, name: str, spki: str, parent: str | None) -> None:
    if db.execute(select(Provisioner.id).where(Provisioner.name == name)).first():
        raise reg.RegistryError(f"a provisioner named {name!r} already exists")
    if any(e.spki_sha256 == spki for e in reg.all_entries(db)):
        raise reg.RegistryError("this credential key is already registered for another RA")
    if parent is not None and reg.by_name(db, parent) is None:
        raise reg.RegistryError(f"the parent RA {parent!r} is not registered")


def renew_credential(app: Appliance, issuer: Issuer, name: str,
                     csr: x509.CertificateSigningRequest, actor: Actor, *,
                     ra_path: list[str] | None = None) -> Issued:
    """A new credential for RA ``name``, for the SAME key as its registered one (a renewal,
    not a re-keying: a new key is a new registration); audited ``ra.credential.renewed``."""
    with app.db.sessions() as db:
        entry = reg.by_name(db, name)
        if entry is None:
            raise reg.RegistryError(f"no RA named {name!r}")
        reg.require_enabled(db, entry)
    if reg.spki_digest(csr.public_key()) != entry.spki_sha256:
        raise reg.RaRefused(f"the CSR is for another key than RA {name}'s registered "
                            "credential key")
    before = entry.serial
    issued = _issue_credential(app, issuer, name, csr, entry.authority_id, actor.name, ra_path)
    with app.db.transaction() as db:
        reg.set_credential(db, name, issued.certificate)
        app.audit_log().append(
            db, "ra.credential.renewed", actor,
            object_ids={"provisioner": name, "serial": issued.serial_hex},
            details={"previous_serial": before, "ra_path": ra_path,
                     "not_after": issued.certificate.not_valid_after_utc.isoformat()})
    return issued


def add(app: Appliance, name: str, csr_pem: bytes, actor: Actor, *,
        max_duration: int | None = None, policy_text: str | None = None,
        authority: str | None = None) -> list[str]:
    """``provisioner add NAME --type ra --csr F``: the credential chain (PEM, leaf first,
    up to but without the root). On the CA the credential is issued here; on an RA node
    the registration is forwarded upstream (``ra.node.register_child``, which also records
    the child here, as this node's direct child with its claims and policy)."""
    from appliance.issuance.csr import load_csr

    check_name(name)
    check_policy(policy_text, f"provisioner {name}")
    csr = load_csr(csr_pem, "--csr")
    if is_ra_node(app):
        _ra_settings(app, max_duration)  # a bad --max-duration refuses before forwarding
        chain: list[str] = ra_node().register_child(app, name, csr, max_duration, policy_text)
        return chain
    issued = register(app, Issuer(app), name, csr, actor, max_duration=max_duration,
                      policy_text=policy_text, authority=authority)
    return [issued.pem(), *issued.chain_pem()[:-1]]


def _ra_settings(app: Appliance, max_duration: int | None,
                 parent: str | None = None) -> ProvisionerSettings:
    claims = Claims(max_duration=max_duration)
    try:
        check_effective(claims, app.settings.config.claims)
    except ValueError as exc:
        raise reg.RegistryError(f"--max-duration: {exc}") from None
    return ProvisionerSettings(claims=claims, ra_parent=parent)


def set_enabled(app: Appliance, name: str, enabled: bool, actor: Actor) -> None:
    """``provisioner update NAME --enable/--disable`` (any type), audited with the change;
    for an RA it also says how many RAs registered below it are cut off with it."""
    from appliance.ops import provisioners as prov_ops

    prov_ops.update(app, name, {"disabled": not enabled}, actor)
    with app.db.transaction() as db:
        entry = reg.by_name(db, name)
        below = _descendants(db, name) if entry is not None else []
        app.audit_log().append(
            db, "provisioner.enabled" if enabled else "provisioner.disabled", actor,
            object_ids={"provisioner": name},
            details={"type": "ra" if entry is not None else None,
                     "chained_below": below})


def _descendants(db: Session, name: str) -> list[str]:
    out: list[str] = []
    todo = [name]
    while todo and len(out) < 10_000:
        current = todo.pop()
        for child in reg.children(db, current):
            if child.name not in out:
                out.append(child.name)
                todo.append(child.name)
    return sorted(out)


def list_ras(app: Appliance) -> list[dict[str, Any]]:
    """The RAs below this node: name, parent, state, credential serial and notAfter, last
    contact (and its operation)."""
    now = datetime.now(UTC)
    out = []
    with app.db.sessions() as db:
        contacts = reg.last_contacts(db)
        for e in reg.all_entries(db):
            seen = contacts.get(e.id)
            cert = e.certificate
            out.append({
                "name": e.name, "parent": e.parent, "state": reg.state(db, e, now),
                "credential_serial": e.serial,
                "credential_not_after": (cert.not_valid_after_utc.isoformat()
                                         if cert is not None else None),
                "max_duration": (durations.format_seconds(e.settings.claims.max_duration)
                                 if e.settings.claims.max_duration else None),
                "last_contact": seen[0].isoformat() if seen else None,
                "last_op": seen[1] if seen else None,
            })
    return out


def audit_request(app: Appliance, op: str, path: list[str], request_sha256: str,
                  actor: Actor, *, serial: str | None = None,
                  error: ApplianceError | None = None) -> None:
    """``ra.request``: one record per RA request at this node, with its decision."""
    with app.db.transaction() as db:
        app.audit_log().append(
            db, "ra.request", actor, outcome="success" if error is None else "denied",
            object_ids={"serial": serial, "ra": path[-1] if path else None},
            details={"op": op, "ra_path": path, "request_sha256": request_sha256,
                     "decision": "refused" if error is not None else DONE.get(op, "done"),
                     "error": None if error is None else {"code": error.code,
                                                          "message": str(error)[:500]}})


def stored_path(value: str | None) -> list[str]:
    """``certificates.ra_path`` as a list (empty for a certificate asked for directly)."""
    if not value:
        return []
    try:
        doc = json.loads(value)
    except ValueError:
        return []
    return [str(n) for n in doc] if isinstance(doc, list) else []
