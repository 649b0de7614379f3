"""A JSON document signed by the audit key: ceremony transcripts, the auditor's report.

The signature block names the key by its SPKI hash, so a verifier holding only the
exported audit public key can tell "signed by another key" from "edited after signing".
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Literal

from appliance.audit.record import canonical
from appliance.audit.signer import CheckpointSigner, verify_signature
from appliance.hsm.signer import spki_der
from appliance.x509.algorithms import PublicKey

Verdict = Literal["ok", "unsigned", "other-key", "invalid"]


def signature_block(signer: CheckpointSigner, doc: dict[str, Any]) -> dict[str, str]:
    """The signature over ``doc``'s canonical JSON, as it is stored beside the document."""
    algorithm, sig = signer.sign(canonical(doc).encode())
    return {"algorithm": algorithm, "key_label": signer.label,
            "spki_sha256": signer.spki_sha256, "value": base64.b64encode(sig).decode()}


def check(block: object, doc: dict[str, Any], public_key: PublicKey) -> Verdict:
    """Whether ``block`` is a signature of ``doc`` by ``public_key``."""
    if not isinstance(block, dict):
        return "unsigned"
    if block.get("spki_sha256") != hashlib.sha256(spki_der(public_key)).hexdigest():
        return "other-key"
    try:
        value = base64.b64decode(str(block.get("value", "")), validate=True)
    except ValueError:
        return "invalid"
    ok = verify_signature(public_key, str(block.get("algorithm")), canonical(doc).encode(),
                          value)
    return "ok" if ok else "invalid"
