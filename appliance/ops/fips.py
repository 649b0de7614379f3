"""Audited FIPS-style-mode actions: officers, the crypto-officer quorum gate, sealing.

The gate (:func:`require_quorum`) is the one place that decides whether a crypto-officer
action may go ahead: in the default mode it always may (nothing changes there); in FIPS
mode ``fips.quorum`` distinct registered crypto officers must present their secrets, and
a refusal is audited (outcome "denied", error ``quorum_refused``) before it is raised, so
the auditor's report counts it.

The operator gate (:func:`require_operator`) is its sibling for everything else that
changes state (provisioners, policies, templates, inventory, EAB keys, revocation, CRLs,
OCSP, ACME accounts): in FIPS mode ONE registered person whose role is ``operator`` must
present their secret, and that person (not the terminal's login) is the actor of the
action's audit records. A crypto officer is not an operator: separation of duties means
the people who hold the keys are not the people who run the service day to day.
"""

from __future__ import annotations

import os
import secrets as pysecrets
from pathlib import Path
from typing import Any

from appliance import logs, secretfile
from appliance.audit.log import Actor
from appliance.errors import ApplianceError
from appliance.fips import officers as off
from appliance.fips import seal as seal_mod
from appliance.fips.manifest import compute
from appliance.fips.mode import FipsModeMismatch
from appliance.fips.quorum import QuorumError, check_secret
from appliance.runtime import Appliance, cli_actor

log = logs.get("ops.fips")

TRIAL_OFFICERS = 3  # at least; more when fips.quorum asks for more
OPERATOR = "operator"
OPERATOR_ENV = "APPLIANCE_OPERATOR"
TRIAL_OPERATOR = "operator-1"


class RoleError(ApplianceError):
    """An operator action in FIPS mode without an authenticated operator: the client's
    fault (403), refused before anything changes."""

    code = "role_refused"
    status = 403
    acme_type = "unauthorized"


def fips_enabled(app: Appliance) -> bool:
    return app.settings.config.fips.enabled


def presented_officers(specs: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """The ``--officer NAME=FILE`` options, else ``$APPLIANCE_OFFICERS``."""
    return off.presented(specs, os.environ.get(off.OFFICERS_ENV))


def require_quorum(app: Appliance, action: str, presented: list[tuple[str, str]],
                   actor: Actor, objects: dict[str, Any] | None = None, *,
                   bootstrap: bool = False) -> list[str]:
    """The crypto officers who approved ``action`` ([] in the default mode), or an audited
    QuorumError. With ``bootstrap`` (adding or removing a crypto officer) the gate is open
    while fewer than the quorum are registered, so the first officers can be enrolled."""
    try:
        app.require_mode()
    except FipsModeMismatch:
        # No quorum means anything on a node whose file disagrees with the installation:
        # the key use itself refuses it at its gate (signing_pool), and audits that.
        return []
    if not fips_enabled(app):
        return []
    required = app.settings.config.fips.quorum
    names = [n for n, _ in presented]
    try:
        with app.db.sessions() as db:
            if bootstrap and len(off.active_verifiers(db)) < required:
                return []
            met = off.check_officer_quorum(db, action, required, presented)
    except QuorumError as exc:
        with app.db.transaction() as s:
            app.audit_log().append(
                s, "fips.quorum.refused", actor, outcome="denied",
                object_ids={"action": action, **(objects or {})},
                details={"error": exc.code, "message": str(exc)[:1000], "required": required,
                         "officers": names})
        raise
    finally:
        presented.clear()
    with app.db.transaction() as s:
        app.audit_log().append(s, "fips.quorum.met", actor,
                               object_ids={"action": action, **(objects or {})},
                               details={"required": required, "officers": met})
    return met


def require_operator(app: Appliance, action: str, spec: str | None,
                     objects: dict[str, Any] | None = None) -> Actor:
    """The actor of operator ``action``: in the default mode the terminal's login (nothing
    changes there); in FIPS mode the operator who presented ``spec`` (``NAME=SECRET_FILE``,
    else ``$APPLIANCE_OPERATOR``), checked against their registered verifier and role, as
    ``Actor("operator:NAME", "operator")``. Anything else is an audited RoleError
    (``fips.role.refused``: the action, the claimed name, the reason; never the secret)."""
    try:
        app.require_mode()
    except FipsModeMismatch:
        # As for the quorum: the key's gate refuses (and audits) a disagreeing node.
        return cli_actor()
    if not fips_enabled(app):
        return cli_actor()
    given = spec or os.environ.get(OPERATOR_ENV) or ""
    claimed = given.partition("=")[0].strip()[:64]
    try:
        name = _authenticate_operator(app, action, given)
    except ApplianceError as exc:
        reason = str(exc)[:1000]
        with app.db.transaction() as s:
            app.audit_log().append(
                s, "fips.role.refused", cli_actor(), outcome="denied",
                object_ids={"action": action, **(objects or {})},
                details={"error": RoleError.code, "role": OPERATOR, "claimed": claimed,
                         "reason": reason})
        if isinstance(exc, RoleError):
            raise
        raise RoleError(f"FIPS mode: {action} needs an authenticated operator: "
                        f"{reason}") from None
    return Actor(f"operator:{name}", OPERATOR)


def _authenticate_operator(app: Appliance, action: str, spec: str) -> str:
    if not spec:
        raise RoleError(f"FIPS mode: {action} needs one person in the operator role: "
                        f"--operator NAME=SECRET_FILE or ${OPERATOR_ENV} (a crypto officer "
                        "is not an operator)")
    name, path = off.parse_presentation(spec)
    secret = off.read_secret_file(path)
    with app.db.sessions() as db:
        person = next((o for o in off.list_all(db) if o.name == name), None)
        verifier = off.active_verifiers(db, person.role).get(name) if person else None
    # The secret first: a caller who does not hold it learns nothing of the name's role.
    if verifier is None or not check_secret(verifier, secret):
        raise RoleError(f"FIPS mode: {action}: {name!r} is not an operator whose secret "
                        "this is")
    if person is None or person.role != OPERATOR:
        raise RoleError(f"FIPS mode: {action} needs the operator role; {name!r} is a "
                        f"{person.role if person else 'stranger'} (separation of duties: a "
                        "crypto officer is not an operator)")
    return name


def officer_add(app: Appliance, name: str, role: str, secret: str, actor: Actor,
                presented: list[tuple[str, str]]) -> off.OfficerView:
    """Register an officer; a new crypto officer needs the existing officers' quorum once
    enough of them are registered (FIPS mode)."""
    off.check_name(name)
    off.check_role(role)
    if role == off.CRYPTO_OFFICER:
        require_quorum(app, "fips officer add", presented, actor, {"officer": name},
                       bootstrap=True)
    try:
        with app.db.transaction() as s:
            return off.add(s, app.audit_log(), actor, name, role, secret)
    except ApplianceError as exc:
        _audit_failure(app, "fips.officer.add", actor, exc, {"officer": name})
        raise


def officer_remove(app: Appliance, name: str, actor: Actor,
                   presented: list[tuple[str, str]]) -> off.OfficerView:
    with app.db.sessions() as db:
        current = {o.name: o for o in off.list_all(db)}
    if name in current and current[name].role == off.CRYPTO_OFFICER:
        require_quorum(app, "fips officer remove", presented, actor, {"officer": name},
                       bootstrap=True)
    try:
        with app.db.transaction() as s:
            return off.remove(s, app.audit_log(), actor, name)
    except ApplianceError as exc:
        _audit_failure(app, "fips.officer.remove", actor, exc, {"officer": name})
        raise


def officer_list(app: Appliance, *, include_removed: bool = False) -> list[off.OfficerView]:
    with app.db.sessions() as db:
        return off.list_all(db, include_removed=include_removed)


def seal(app: Appliance, presented: list[tuple[str, str]], actor: Actor) -> dict[str, object]:
    """Officers approve the installed code's manifest; the audit key signs it. In the
    default mode a seal is allowed too (it records what was installed), without a quorum."""
    manifest = compute()
    officers = require_quorum(app, "fips seal", presented, actor,
                              {"manifest": manifest.sha256})
    label = app.settings.config.audit.key_label
    try:
        sealed = seal_mod.write_sealed(app, manifest, label, officers, actor)
    except ApplianceError as exc:
        _audit_failure(app, "fips.seal", actor, exc, {"manifest": manifest.sha256})
        raise
    return {"sha256": sealed.sha256, "algorithm": sealed.algorithm,
            "key_label": sealed.key_label, "officers": sealed.officers,
            "sealed_at": sealed.sealed_at}


def trial_officers_and_seal(app: Appliance, data_dir: Path, actor: Actor) -> list[Path]:
    """``quickstart --fips``: three trial crypto officers whose secrets are written under
    ``secrets/`` (0600), registered, then two of them seal the manifest. Returns the
    secret files (the operator hands each to its officer, or replaces the officers)."""
    folder = data_dir / "secrets"
    required = app.settings.config.fips.quorum
    names = [f"officer-{i}" for i in range(1, max(TRIAL_OFFICERS, required) + 1)]
    files = []
    for name in names:
        path = folder / f"{name}.secret"
        secret = pysecrets.token_urlsafe(24)
        secretfile.write_new(path, (secret + "\n").encode())
        with app.db.transaction() as s:
            off.add(s, app.audit_log(), actor, name, off.CRYPTO_OFFICER, secret)
        files.append(path)
    presented = [(name, off.read_secret_file(path))
                 for name, path in zip(names, files, strict=True)][:required]
    seal(app, presented, actor)
    return files


def trial_operator(app: Appliance, data_dir: Path, actor: Actor) -> Path:
    """``quickstart --fips``: one trial operator (``operator-1``) beside the trial crypto
    officers, so the node can be run at once; its secret goes to ``secrets/`` (0600)."""
    path = data_dir / "secrets" / f"{TRIAL_OPERATOR}.secret"
    secret = pysecrets.token_urlsafe(24)
    secretfile.write_new(path, (secret + "\n").encode())
    with app.db.transaction() as s:
        off.add(s, app.audit_log(), actor, TRIAL_OPERATOR, OPERATOR, secret)
    return path


def _audit_failure(app: Appliance, what: str, actor: Actor, exc: ApplianceError,
                   objects: dict[str, str]) -> None:
    try:
        with app.db.transaction() as s:
            app.audit_log().append(s, f"{what}.failed", actor, outcome="failure",
                                   object_ids=objects,
                                   details={"error": exc.code, "message": str(exc)[:1000]})
    except ApplianceError as audit_exc:
        log.error("could not audit a failure", extra={"fault": audit_exc.code})
