"""What a ceremony step handler works with: the appliance, earlier results, and the record.

The handlers (:mod:`.ca_steps`, :mod:`.import_steps`, :mod:`.crl_steps`) are plain
functions of a :class:`StepContext`, so each kind of step lives in its own module
while they all resolve references and write outputs the same way: a reference names an
earlier step of this script first, and the database or the token otherwise; an output
file is created exclusively (nothing is ever overwritten) and its digest recorded for
the transcript.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.audit.log import Actor
from appliance.ca import authorities as authz
from appliance.ceremony import x509build as xb
from appliance.ceremony.script import LoadedScript
from appliance.errors import KeyNotFoundError
from appliance.hsm import keys
from appliance.hsm.keys import KeyInfo
from appliance.hsm.signer import token_private_key
from appliance.rfc3339 import format_z
from appliance.runtime import Appliance
from appliance.store.models import HsmKey
from appliance.x509 import path as x509_path
from appliance.x509.algorithms import PublicKey


@dataclass
class CaRef:
    """A CA certificate the ceremony can sign with or refer to."""

    name: str
    cert: x509.Certificate
    key: KeyInfo | None
    # Its chain, itself first, up to the root: what path validation checks new
    # certificates against before this CA's key signs them.
    chain: list[x509_path.Link] = field(default_factory=list)

    @property
    def public_key(self) -> PublicKey:
        return xb.ca_public_key(self.cert)

    def path(self) -> x509_path.Chain:
        return x509_path.Chain(self.chain or [x509_path.Link(self.name, self.cert)])


@dataclass
class StepResult:
    step_id: str
    type: str
    key: KeyInfo | None = None
    ca: CaRef | None = None
    record: dict[str, Any] = field(default_factory=dict)


class StepContext:
    """The state one ceremony run shares between its steps.

    ``results`` holds every finished step by id (later steps refer to them);
    ``outputs`` the SHA-256 of every file written, for the transcript.
    """

    def __init__(self, app: Appliance, script: LoadedScript, out_dir: Path,
                 actor: Actor) -> None:
        self.app = app
        self.script = script
        self.out_dir = out_dir
        self.actor = actor
        self.results: dict[str, StepResult] = {}
        self.outputs: dict[str, str] = {}
        self.ceremony_ref = f"{script.ceremony.name}@{out_dir.name}"

    def csr_bytes(self, ref: str) -> tuple[bytes, str]:
        """A CSR made by an earlier step of this script, or a file (relative to it)."""
        earlier = self.results.get(ref)
        if earlier is not None:
            name = f"{ref}.csr.pem"
            return (self.out_dir / name).read_bytes(), name
        path = self.script.resolve_path(ref)
        return read_bounded(path, 100_000), str(path)

    def resolve_key(self, ref: str) -> KeyInfo:
        earlier = self.results.get(ref)
        if earlier is not None and earlier.key is not None:
            return earlier.key
        return keys.find_key(self.app.pool, ref)

    def resolve_ca(self, ref: str) -> CaRef:
        earlier = self.results.get(ref)
        if earlier is not None and earlier.ca is not None:
            return earlier.ca
        with self.app.db.sessions() as db:
            row = authz.get(db, ref)
            cert = authz.certificate(row)
            key_row = db.get(HsmKey, row.key_id) if row.key_id is not None else None
            label = key_row.label if key_row is not None else None
            chain = authz.chain_links(db, row)
        key = None
        if label is not None:
            key = keys.find_key(self.app.pool, label, xb.ca_public_key(cert))
        return CaRef(ref, cert, key, chain)

    def signing_key(self, issuer: CaRef) -> Any:
        if issuer.key is None:
            raise KeyNotFoundError(f"authority {issuer.name} has no signing key in this token")
        return token_private_key(self.app.pool, issuer.key)

    def audit_refusal(self, step: Any, event: str, reason: str, **details: Any) -> None:
        with self.app.db.transaction() as db:
            self.app.audit_log().append(db, event, self.actor, outcome="denied", object_ids={
                "ceremony": self.ceremony_ref, "step": step.id},
                details={"reason": reason, **details})

    def write(self, name: str, data: bytes, track: bool = True) -> None:
        path = self.out_dir / name
        with open(path, "xb") as fh:  # exclusive: never overwrite an output
            fh.write(data)
        os.chmod(path, 0o644)
        if track:
            self.outputs[name] = hashlib.sha256(data).hexdigest()


def read_bounded(path: Path, limit: int = 1_000_000) -> bytes:
    try:
        if path.stat().st_size > limit:
            raise xb.CeremonyError(f"{path} is larger than {limit} bytes")
        return path.read_bytes()
    except OSError as exc:
        raise xb.CeremonyError(f"cannot read {path}: {exc.strerror}") from exc


def pem_chain(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_record(info: KeyInfo) -> dict[str, Any]:
    return {"label": info.label, "ck_id": info.id.hex(), "key_type": info.spec.name,
            "spki_sha256": info.spki_sha256}


def cert_record(cert: x509.Certificate) -> dict[str, Any]:
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "serial": f"{cert.serial_number:x}",
            "sha256": authz.fingerprint(cert),
            "not_before": format_z(cert.not_valid_before_utc),
            "not_after": format_z(cert.not_valid_after_utc)}


def validity_cap(step: Any, default: int) -> int:
    """The default cap, or a lower one the script sets; a script can never raise it."""
    cap: int = min(step.max_validity_days or default, default)
    return cap


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
