"""Adding, changing and removing provisioners; each change is audited with the change.

A JWK provisioner's private key (which signs one-time tokens) is never stored by the
appliance in the clear: either its owner keeps it and the appliance is given only the
public key (``--public-key``), or the appliance makes it and hands it out sealed under a
password (a JWE, see ``provisioners.sealed``) in ``secrets/provisioner-NAME.jwe``, to be
taken off the host. The database holds only the public JWK. Data directories from before
(a plaintext ``provisioner-NAME.pem``) are migrated by ``seal``.
"""

from __future__ import annotations

import json
import os
import secrets as pysecrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance import secretfile
from appliance.audit.log import Actor
from appliance.ca import authorities as authz
from appliance.errors import ApplianceError
from appliance.provisioners import sealed, tokens
from appliance.provisioners.settings import ProvisionerSettings, effective
from appliance.runtime import Appliance
from appliance.store.models import Authority, Provisioner


class ProvisionerError(ApplianceError):
    code = "provisioner_error"
    status = 404


def key_path(app: Appliance, name: str) -> Path:
    """Where the appliance puts the sealed key it made for NAME (to be taken off the host)."""
    return sealed_key_path(app.settings.base_dir, name)


def sealed_key_path(base_dir: Path, name: str) -> Path:
    return base_dir / "secrets" / f"provisioner-{name}.jwe"


def password_path(base_dir: Path, name: str) -> Path:
    """The generated password of a sealed key (only with ``--generate-password``)."""
    return base_dir / "secrets" / f"provisioner-{name}.password"


def plaintext_key_path(base_dir: Path, name: str) -> Path:
    """Where appliances before sealed keys wrote the key in the clear (migrated by ``seal``)."""
    return base_dir / "secrets" / f"provisioner-{name}.pem"


@dataclass(frozen=True)
class KeyCustody:
    """How a new JWK provisioner's key is held: the owner's public key (the appliance never
    sees the private one), or a password to seal the key the appliance makes (and whether
    that password is written beside it, as quickstart does)."""

    public_key: bytes | None = None
    password: str | None = None
    store_password: bool = False

    @classmethod
    def generated(cls) -> KeyCustody:
        return cls(password=pysecrets.token_urlsafe(24), store_password=True)


def add(app: Appliance, name: str, ptype: str, settings: ProvisionerSettings, actor: Actor, *,
        authority: str | None = None, roots_pem: bytes | None = None,
        custody: KeyCustody | None = None) -> Provisioner:
    authority = authority or app.settings.config.service.issuing_authority
    credential: str
    key = None
    details: dict[str, Any] = {}
    if ptype == "jwk":
        custody = custody or KeyCustody()
        if custody.public_key is not None:
            public = sealed.load_public_key(custody.public_key, "the public key")
            details["key"] = "owner-held"
        elif custody.password is not None:
            sealed.check_new_password(custody.password)
            key = tokens.new_key()
            public = key.public_key()
            details.update({"key": "sealed", "alg": sealed.ALG, "enc": sealed.ENC,
                            "p2c": sealed.P2C, "password_stored": custody.store_password})
        else:
            raise ProvisionerError("a jwk provisioner needs the owner's public key, or a "
                                   "password to seal the key the appliance makes")
        jwk = tokens.public_jwk(public)
        details["kid"] = jwk["kid"]
        credential = json.dumps(jwk, sort_keys=True)
    elif ptype == "x5c":
        if not roots_pem:
            raise ProvisionerError("an x5c provisioner needs --root PEM (the roots it trusts)")
        roots = _load_roots(roots_pem)
        credential = "".join(r.public_bytes(serialization.Encoding.PEM).decode() for r in roots)
    elif ptype == "acme":
        credential = ""  # accounts bring their own keys (and EAB keys live in their table)
    else:
        raise ProvisionerError(f"unknown provisioner type {ptype!r}")
    if key is not None and custody is not None:
        base = app.settings.base_dir
        targets = [sealed_key_path(base, name)]
        if custody.store_password:
            targets.append(password_path(base, name))
        for path in targets:
            if path.exists():  # never overwritten: someone may still rely on it
                raise ProvisionerError(f"{path} already exists: move it away first")
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
                                        "settings": settings.model_dump(), **details})
        if key is not None and custody is not None and custody.password is not None:
            base = app.settings.base_dir
            secretfile.write_new(sealed_key_path(base, name),
                                 sealed.seal(key, custody.password).encode())
            if custody.store_password:
                secretfile.write_new(password_path(base, name),
                                     custody.password.encode() + b"\n")
    return row


@dataclass(frozen=True)
class Sealed:
    name: str
    sealed_key: Path
    password_file: Path | None


def plaintext_keys(app: Appliance) -> list[str]:
    """JWK provisioners whose key is still a plaintext file in the data directory."""
    with app.db.sessions() as db:
        names = db.scalars(select(Provisioner.name).where(Provisioner.type == "jwk")).all()
    base = app.settings.base_dir
    return [n for n in names if plaintext_key_path(base, n).exists()]


def seal(app: Appliance, name: str, password: str, actor: Actor, *,
         store_password: bool = False) -> Sealed:
    """Re-encrypt NAME's plaintext key file as a sealed key, audit it, and overwrite and
    remove the plaintext. The sealed file appears only once the audit event is committed."""
    sealed.check_new_password(password)
    base = app.settings.base_dir
    plain, target = plaintext_key_path(base, name), sealed_key_path(base, name)
    pw_file = password_path(base, name) if store_password else None
    with app.db.sessions() as db:
        row = get(db, name)
        if row.type != "jwk":
            raise ProvisionerError(f"{name!r} is a {row.type} provisioner: it has no key")
        stored_kid = json.loads(row.credential).get("kid")
    if not plain.exists():
        raise ProvisionerError(f"no plaintext key for {name!r} at {plain}: nothing to seal")
    if target.exists():
        raise ProvisionerError(f"{target} already exists; {plain} is left as it is")
    if pw_file is not None and pw_file.exists():
        raise ProvisionerError(f"{pw_file} already exists; {plain} is left as it is")
    try:
        key = serialization.load_pem_private_key(plain.read_bytes(), None)
    except (ValueError, TypeError) as exc:
        raise ProvisionerError(f"{plain} is not a plaintext PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ProvisionerError(f"{plain} is not an EC key")
    kid = tokens.public_jwk(key.public_key())["kid"]
    if kid != stored_kid:
        raise ProvisionerError(f"{plain} is not {name!r}'s key (kid {kid} != {stored_kid})")
    pending = target.with_name(target.name + ".new")
    pending.unlink(missing_ok=True)  # left by an interrupted run: never audited, never used
    try:
        secretfile.write_new(pending, sealed.seal(key, password).encode())
    except FileExistsError:
        raise ProvisionerError(f"{name!r} is being sealed by another process") from None
    try:
        with app.db.transaction() as db:
            app.audit_log().append(
                db, "provisioner.key.sealed", actor, object_ids={"provisioner": name},
                details={"kid": kid, "sealed_key": target.name, "alg": sealed.ALG,
                         "enc": sealed.ENC, "p2c": sealed.P2C,
                         "password_stored": store_password, "plaintext_removed": plain.name})
    except BaseException:
        pending.unlink(missing_ok=True)
        raise
    os.replace(pending, target)
    if pw_file is not None:
        secretfile.write_new(pw_file, password.encode() + b"\n")
    sealed.shred(plain)
    return Sealed(name, target, pw_file)


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
    base = app.settings.base_dir
    for path in (plaintext_key_path(base, name), sealed_key_path(base, name),
                 password_path(base, name)):
        sealed.shred(path)


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
        out.update({"disabled": settings.disabled, "template": settings.template,
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
