"""The sealed manifest: crypto officers approve the installed code, a token key signs it.

Minimal version (the roles branch of issue 14): ``write_sealed`` signs the manifest's
canonical bytes with a token key and stores the result as the ``Installation`` row
"manifest", where the software integrity self-test reads it. The reader and verifier
are the self-test's part.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Protocol

from appliance.audit.log import Actor, AuditLog
from appliance.audit.signer import CheckpointSigner
from appliance.fips.manifest import Manifest
from appliance.hsm import keys
from appliance.hsm.pool import SessionPool
from appliance.hsm.signer import token_private_key
from appliance.store.db import Database
from appliance.store.models import Installation

MANIFEST_KEY = "manifest"


class _App(Protocol):
    """What sealing needs of the runtime's ``Appliance`` (a floor above this room)."""

    @property
    def db(self) -> Database: ...

    def signing_pool(self) -> SessionPool: ...

    def audit_log(self) -> AuditLog: ...


def write_sealed(app: _App, manifest: Manifest, key_label: str,
                 officers: list[str]) -> dict[str, object]:
    """Sign ``manifest`` with the token key ``key_label`` and store it (replacing an older
    seal), audited in the same transaction in the officers' names; returns the stored
    document. The caller checks the officers' quorum first."""
    pool = app.signing_pool()
    signer = CheckpointSigner(token_private_key(pool, keys.find_key(pool, key_label)))
    canonical = manifest.canonical()
    algorithm, signature = signer.sign(canonical)
    doc: dict[str, object] = {
        "manifest": canonical.decode(), "sha256": manifest.sha256,
        "signature": base64.b64encode(signature).decode(), "algorithm": algorithm,
        "key_label": key_label, "spki_sha256": signer.spki_sha256,
        "officers": list(officers), "sealed_at": datetime.now(UTC).isoformat(),
    }
    text = json.dumps(doc, sort_keys=True)
    with app.db.transaction() as s:
        row = s.get(Installation, MANIFEST_KEY)
        if row is None:
            s.add(Installation(key=MANIFEST_KEY, value=text, recorded_at=datetime.now(UTC)))
        else:
            row.value, row.recorded_at = text, datetime.now(UTC)
        actor = Actor(f"officers:{','.join(officers) or '-'}"[:256], "crypto-officer")
        app.audit_log().append(s, "fips.sealed", actor, object_ids={"manifest": doc["sha256"]},
                               details={"key_label": key_label, "algorithm": algorithm,
                                        "files": len(manifest.files),
                                        "officers": list(officers)})
    return doc
