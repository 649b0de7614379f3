"""The installation's officers and the quorum their crypto-officer acts need.

FIPS 140-3 asks for roles: a crypto officer (key generation, ceremonies, zeroization,
sealing the code), an operator (provisioners, policies, revocation) and an auditor
(read-only). Officers are stored per installation (``officers`` table, shared by every
node of one database) with the scrypt verifier of their secret, never the secret. A
secret is presented from a file only its owner can read (mode 0600, one line), never on
the command line, so it never reaches ``ps``, shell history or a log.

This module holds the rules (names, roles, reading secret files, checking a quorum); the
audited actions that change rows are :mod:`appliance.ops.fips`, above the runtime.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.audit.log import Actor, AuditLog
from appliance.errors import ApplianceError
from appliance.fips.quorum import (
    MAX_SECRET,
    MIN_SECRET,
    QuorumError,
    QuorumRequest,
    check_quorum,
    make_verifier,
)
from appliance.rfc3339 import format_z
from appliance.store.models import Officer

CRYPTO_OFFICER = "crypto-officer"
ROLES = (CRYPTO_OFFICER, "operator", "auditor")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# How officers present their secrets without a terminal: NAME=FILE pairs, comma-separated.
OFFICERS_ENV = "APPLIANCE_OFFICERS"
MAX_PRESENTED = 16


class OfficerError(ApplianceError):
    code = "officer_invalid"
    status = 400


class OfficerNotFound(OfficerError):
    code = "officer_not_found"
    status = 404


@dataclass(frozen=True)
class OfficerView:
    name: str
    role: str
    status: str
    added_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "status": self.status,
                "added_at": format_z(self.added_at)}


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise OfficerError(f"officer name {name!r}: 1..64 of A-Z a-z 0-9 . _ -, "
                           "starting with a letter or digit")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise OfficerError(f"role {role!r}: choose one of {', '.join(ROLES)}")
    return role


def read_secret_file(path: Path) -> str:
    """One officer's secret from ``path``: a regular file of its owner, mode 0600 or
    stricter, one line. Anything else is refused before the secret is read."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise OfficerError(f"cannot open secret file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise OfficerError(f"secret file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise OfficerError(f"secret file {path} is readable by group or others "
                               f"(mode {st.st_mode & 0o777:o}); chmod 600 it")
        raw = fh.read(MAX_SECRET * 4 + 3)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise OfficerError(f"secret file {path} is not UTF-8 text") from None
    secret = text[:-1] if text.endswith("\n") else text
    secret = secret.removesuffix("\r")
    if "\n" in secret or "\r" in secret:
        raise OfficerError(f"secret file {path} must hold one line")
    if not MIN_SECRET <= len(secret) <= MAX_SECRET:
        raise OfficerError(f"the secret in {path} must be {MIN_SECRET}..{MAX_SECRET} "
                           "characters")
    return secret


def parse_presentation(spec: str) -> tuple[str, Path]:
    """``NAME=FILE`` (an ``--officer`` option or one item of ``APPLIANCE_OFFICERS``)."""
    name, sep, file = spec.partition("=")
    if not sep or not file:
        raise OfficerError(f"officer {spec!r}: write NAME=SECRET_FILE (the secret itself "
                           "never goes on the command line)")
    return check_name(name.strip()), Path(file.strip())


def presented(specs: tuple[str, ...] | list[str], env: str | None = None) -> list[tuple[str, str]]:
    """(name, secret) of every officer presenting: the ``--officer`` options, else the
    ``APPLIANCE_OFFICERS`` environment value (``NAME=FILE,NAME=FILE``)."""
    items = list(specs)
    if not items and env:
        items = [i for i in env.split(",") if i.strip()]
    if len(items) > MAX_PRESENTED:
        raise OfficerError(f"at most {MAX_PRESENTED} officers may present at once")
    out = []
    for item in items:
        name, path = parse_presentation(item)
        out.append((name, read_secret_file(path)))
    return out


def view(row: Officer) -> OfficerView:
    return OfficerView(row.name, row.role, row.status, row.added_at)


def list_all(session: Session, *, include_removed: bool = False) -> list[OfficerView]:
    query = select(Officer).order_by(Officer.name)
    if not include_removed:
        query = query.where(Officer.status == "active")
    return [view(r) for r in session.scalars(query)]


def active_verifiers(session: Session, role: str = CRYPTO_OFFICER) -> dict[str, str]:
    rows = session.scalars(select(Officer).where(Officer.role == role,
                                                 Officer.status == "active"))
    return {r.name: r.verifier for r in rows}


def add(session: Session, audit: AuditLog, actor: Actor, name: str, role: str,
        secret: str) -> OfficerView:
    """Register NAME (or bring a removed NAME back) with a verifier of ``secret``."""
    check_name(name)
    check_role(role)
    if not MIN_SECRET <= len(secret) <= MAX_SECRET:
        raise OfficerError(f"an officer secret must be {MIN_SECRET}..{MAX_SECRET} characters")
    row = session.scalar(select(Officer).where(Officer.name == name))
    if row is not None and row.status == "active":
        raise OfficerError(f"officer {name!r} is already registered (as {row.role}); "
                           "remove them first to change role or secret")
    now = datetime.now(UTC)
    verifier = make_verifier(secret)
    if row is None:
        row = Officer(name=name, role=role, verifier=verifier, status="active", added_at=now)
        session.add(row)
    else:
        row.role, row.verifier, row.status, row.added_at = role, verifier, "active", now
    session.flush()
    audit.append(session, "fips.officer.added", actor, object_ids={"officer": name},
                 details={"role": role})
    return view(row)


def remove(session: Session, audit: AuditLog, actor: Actor, name: str) -> OfficerView:
    """Mark NAME removed and forget their verifier (the row stays for the record)."""
    check_name(name)
    row = session.scalar(select(Officer).where(Officer.name == name,
                                               Officer.status == "active"))
    if row is None:
        raise OfficerNotFound(f"no registered officer named {name!r}")
    row.status, row.verifier = "removed", ""
    session.flush()
    audit.append(session, "fips.officer.removed", actor, object_ids={"officer": name},
                 details={"role": row.role})
    return view(row)


def check_officer_quorum(session: Session, action: str, required: int,
                         presented_: list[tuple[str, str]]) -> list[str]:
    """The crypto officers who met ``required`` for ``action``, or QuorumError saying why
    not (FIPS named, no secret ever in the message)."""
    verifiers = active_verifiers(session)
    if len(verifiers) < required:
        raise QuorumError(f"FIPS mode: {action} needs {required} crypto officers; "
                          f"{len(verifiers)} registered (appliance fips officer add)")
    request = QuorumRequest(action, required, tuple(sorted(verifiers)))
    try:
        return check_quorum(request, presented_, verifiers)
    except QuorumError as exc:
        raise QuorumError(f"FIPS mode: {action} needs a quorum of {required} crypto "
                          f"officers: {str(exc).removeprefix(f'step {action}: ')}") from None
