"""Adding, changing and removing provisioners; each change is audited with the change.

A JWK provisioner's private key (which signs one-time tokens) is written to
the data directory's ``secrets/`` (mode 0600) and never stored in the
database: the database holds only the public JWK.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance import secretfile
from appliance.audit.log import Actor
from appliance.errors import ApplianceError
from appliance.ops import authorities as authz
from appliance.provisioners import tokens
from appliance.provisioners.settings import ProvisionerSettings, effective
from appliance.runtime import Appliance
from appliance.store.models import Authority, Provisioner


class ProvisionerError(ApplianceError):
    code = "provisioner_error"


def key_path(app: Appliance, name: str) -> Path:
    return app.settings.base_dir / "secrets" / f"provisioner-{name}.pem"


def add(app: Appliance, name: str, ptype: str, settings: ProvisionerSettings, actor: Actor, *,
        authority: str | None = None, roots_pem: bytes | None = None) -> Provisioner:
    authority = authority or app.settings.config.service.issuing_authority
    credential: str
    key = None
    if ptype == "jwk":
        key = tokens.new_key()
        credential = json.dumps(tokens.public_jwk(key.public_key()), sort_keys=True)
    elif ptype == "x5c":
        if not roots_pem:
            raise ProvisionerError("an x5c provisioner needs --root PEM (the roots it trusts)")
        roots = _load_roots(roots_pem)
        credential = "".join(r.public_bytes(serialization.Encoding.PEM).decode() for r in roots)
    elif ptype == "acme":
        credential = ""  # accounts bring their own keys (and EAB keys live in their table)
    else:
        raise ProvisionerError(f"unknown provisioner type {ptype!r}")
    now = datetime.now(UTC)
    with app.db.transaction() as db:
        if db.scalars(select(Provisioner).where(Provisioner.name == name)).first():
            raise ProvisionerError(f"a provisioner named {name!r} already exists")
        ca = authz.get(db, authority)
        row = Provisioner(name=name, type=ptype, config=settings.model_dump_json(),
                          credential=credential, authority_id=ca.id, created_at=now,
                          updated_at=now)
        db.add(row)
        db.flush()
        app.audit_log().append(db, "provisioner.added", actor, object_ids={"provisioner": name},
                               details={"type": ptype, "authority": authority,
                                        "settings": settings.model_dump()})
        if key is not None:
            secretfile.write_new(key_path(app, name), key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))
    return row


def update(app: Appliance, name: str, changes: dict[str, Any], actor: Actor) -> Provisioner:
    with app.db.transaction() as db:
        row = get(db, name)
        current = ProvisionerSettings.model_validate_json(row.config).model_dump()
        claims = {**current["claims"], **changes.pop("claims", {})}
        merged = ProvisionerSettings.model_validate({**current, **changes, "claims": claims})
        row.config = merged.model_dump_json()
        row.updated_at = datetime.now(UTC)
        app.audit_log().append(db, "provisioner.updated", actor, object_ids={"provisioner": name},
                               details={"before": current, "after": merged.model_dump()})
        return row


def remove(app: Appliance, name: str, actor: Actor) -> None:
    with app.db.transaction() as db:
        row = get(db, name)
        db.delete(row)
        app.audit_log().append(db, "provisioner.removed", actor, object_ids={"provisioner": name},
                               details={"type": row.type})
    path = key_path(app, name)
    if path.exists():
        path.unlink()


def get(db: Session, name: str) -> Provisioner:
    row = db.scalars(select(Provisioner).where(Provisioner.name == name)).one_or_none()
    if row is None:
        raise ProvisionerError(f"no provisioner named {name!r}")
    return row


def describe(app: Appliance, db: Session, row: Provisioner, *, public: bool = False
             ) -> dict[str, Any]:
    settings = ProvisionerSettings.model_validate_json(row.config)
    ca = db.get(Authority, row.authority_id)
    out: dict[str, Any] = {
        "name": row.name, "type": row.type, "authority": ca.name if ca else None,
        "claims": effective(settings.claims, app.settings.config.claims).as_dict(),
    }
    if row.type == "jwk":
        out["key"] = json.loads(row.credential)
    if row.type == "acme":
        svc = app.settings.config.service
        host = f"[{svc.api_hostname}]" if ":" in svc.api_hostname else svc.api_hostname
        out["directory"] = (f"https://{host}:{svc.api_listen.rsplit(':', 1)[1]}"
                            f"/acme/{row.name}/directory")
        out["require_eab"] = settings.require_eab
        out["challenges"] = list(settings.challenges)
    if not public:
        out.update({"template": settings.template,
                    "require_inventory": settings.require_inventory,
                    "allow_template_data": settings.allow_template_data,
                    "created_at": row.created_at.isoformat(),
                    "updated_at": row.updated_at.isoformat()})
    return out


def list_all(app: Appliance, db: Session, *, public: bool = False) -> list[dict[str, Any]]:
    rows = db.scalars(select(Provisioner).order_by(Provisioner.name)).all()
    return [describe(app, db, r, public=public) for r in rows]


def _load_roots(pem: bytes) -> list[x509.Certificate]:
    try:
        roots = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ProvisionerError(f"not PEM certificates: {exc}") from None
    for r in roots:
        try:
            if not r.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                raise ProvisionerError(f"{r.subject.rfc4514_string()} is not a CA certificate")
        except x509.ExtensionNotFound:
            raise ProvisionerError(f"{r.subject.rfc4514_string()} is not a CA certificate") \
                from None
    return roots
