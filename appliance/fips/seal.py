"""The sealed manifest: the crypto officers' approval of the installed code, signed in the
token, and its check at every power-on.

``appliance fips seal`` (after its quorum) calls :func:`write_sealed`, which signs the
manifest's canonical bytes with a token key (the audit checkpoint key unless told
otherwise) and stores the document as the installation fact ``manifest``. The power-on
integrity test reads it back with :func:`load_sealed` and trusts its manifest only after
:func:`verify_sealed`: the digest and the signature over the canonical bytes must hold,
so editing the row in the database cannot make changed code look sealed.

The stored document (JSON)::

    {"manifest": "<canonical manifest JSON>", "sha256": "<hex of those bytes>",
     "algorithm": "ecdsa-sha256" | "rsa-pkcs1-sha256", "signature": "<base64>",
     "key_label": "...", "officers": ["..."], "sealed_at": "<RFC 3339>"}
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from appliance import rfc3339
from appliance.audit.log import Actor
from appliance.audit.signer import CheckpointSigner, verify_signature
from appliance.errors import ApplianceError, ServerFault
from appliance.fips.host import Host
from appliance.fips.manifest import Manifest, parse
from appliance.hsm import keys
from appliance.hsm.signer import token_private_key
from appliance.store.models import Installation
from appliance.x509.algorithms import PublicKey

INSTALLATION_KEY = "manifest"
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024


class SealError(ServerFault):
    """The sealed manifest is missing its parts, or its digest or signature does not hold."""

    code = "seal_invalid"
    public_detail = True


@dataclass(frozen=True)
class Sealed:
    manifest_text: str
    sha256: str
    algorithm: str
    signature: bytes
    key_label: str
    officers: list[str]
    sealed_at: str


def load_sealed(db: Session) -> Sealed | None:
    """The sealed document of this installation, None when it was never sealed; SealError
    when the row is there but not a sealed document."""
    row = db.get(Installation, INSTALLATION_KEY)
    if row is None:
        return None
    if len(row.value) > MAX_DOCUMENT_BYTES:
        raise SealError("the sealed manifest is larger than any manifest can be")
    try:
        doc = json.loads(row.value)
        sealed = Sealed(
            manifest_text=_str(doc, "manifest"), sha256=_str(doc, "sha256"),
            algorithm=str(doc.get("algorithm", "ecdsa-sha256")),
            signature=base64.b64decode(_str(doc, "signature"), validate=True),
            key_label=_str(doc, "key_label"),
            officers=[str(o) for o in doc.get("officers", [])],
            sealed_at=str(doc.get("sealed_at", "")))
    except (ValueError, TypeError, AttributeError, binascii.Error) as exc:
        raise SealError(f"the sealed manifest cannot be read: {exc}") from None
    return sealed


def _str(doc: dict[str, object], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key!r} missing")
    return value


def verify_sealed(sealed: Sealed, public_key: PublicKey) -> Manifest:
    """The sealed manifest, once its digest and its signature by ``public_key`` hold."""
    data = sealed.manifest_text.encode()
    if hashlib.sha256(data).hexdigest() != sealed.sha256:
        raise SealError("the sealed manifest does not match its recorded SHA-256")
    if not verify_signature(public_key, sealed.algorithm, data, sealed.signature):
        raise SealError(f"the signature of the sealed manifest by {sealed.key_label!r} "
                        "does not verify")
    try:
        manifest = parse(sealed.manifest_text)
    except ValueError as exc:
        raise SealError(f"the sealed manifest is not a manifest: {exc}") from None
    if manifest.canonical() != data:
        raise SealError("the sealed manifest is not in canonical form")
    return manifest


def write_sealed(app: Host, manifest: Manifest, key_label: str, officers: list[str],
                 actor: Actor | None = None) -> Sealed:
    """Sign ``manifest`` with the token key ``key_label`` and store it (replacing an older
    seal), audited as ``fips.manifest.sealed`` in the same transaction. Call it only after
    the officers' quorum (``appliance fips seal``). Uses the token pool without the FIPS
    power-on tests, which cannot pass before the first seal."""
    try:
        info = keys.find_key(app.pool, key_label)
    except ApplianceError as exc:
        raise SealError(f"the sealing key {key_label!r} cannot be used: {exc}") from exc
    data = manifest.canonical()
    algorithm, signature = CheckpointSigner(token_private_key(app.pool, info)).sign(data)
    if not verify_signature(info.public_key, algorithm, data, signature):
        raise SealError("the token's signature of the manifest did not verify")
    now = datetime.now(UTC)
    sealed = Sealed(data.decode(), hashlib.sha256(data).hexdigest(), algorithm, signature,
                    key_label, list(officers), rfc3339.format_z(now))
    doc = {"manifest": sealed.manifest_text, "sha256": sealed.sha256,
           "algorithm": algorithm, "signature": base64.b64encode(signature).decode(),
           "key_label": key_label, "officers": sealed.officers,
           "sealed_at": sealed.sealed_at}
    with app.db.transaction() as session:
        row = session.get(Installation, INSTALLATION_KEY)
        previous = None if row is None else json.loads(row.value).get("sha256")
        if row is None:
            session.add(Installation(key=INSTALLATION_KEY, value=json.dumps(doc),
                                     recorded_at=now))
        else:
            row.value, row.recorded_at = json.dumps(doc), now
        app.audit_log().append(
            session, "fips.manifest.sealed", actor or Actor("appliance", "system"),
            object_ids={"manifest_sha256": sealed.sha256, "key": key_label},
            details={"officers": sealed.officers, "files": len(manifest.files),
                     "previous_sha256": previous, "algorithm": algorithm})
    return sealed
