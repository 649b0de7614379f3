"""The ceremony transcript: what happened, signed with the audit key.

An auditor checks it later with ``appliance ceremony verify``: the signature
(over the canonical JSON of everything but the signature itself), the hash of
the script kept beside it, and the hash of every output file in the folder.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from appliance.audit import signed
from appliance.audit.signer import CheckpointSigner
from appliance.ceremony.schema import Ceremony
from appliance.ceremony.script import LoadedScript
from appliance.rfc3339 import format_z
from appliance.x509.algorithms import PublicKey

FORMAT = "appliance-ceremony-transcript/1"
MAX_TRANSCRIPT_BYTES = 10_000_000


def build(script: LoadedScript, c: Ceremony, token: dict[str, str],
          steps: list[dict[str, Any]], outputs: dict[str, str], node_id: str, first_seq: int,
          last_seq: int, started: datetime, finished: datetime, status: str,
          error: str | None, failed_step: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "ceremony": c.name,
        "description": c.description,
        "status": status,
        "error": error,
        "failed_step": failed_step,
        "script": {"file": "script.yaml", "source": str(script.path), "sha256": script.sha256},
        "operators": c.operators,
        "witnesses": c.witnesses,
        "token": token,
        "started": format_z(started),
        "finished": format_z(finished),
        "steps": steps,
        "outputs": dict(sorted(outputs.items())),
        "audit": {"node_id": node_id, "first_seq": first_seq, "last_seq": last_seq},
    }


def sign(doc: dict[str, Any], signer: CheckpointSigner) -> dict[str, Any]:
    return {**doc, "signature": signed.signature_block(signer, doc)}


def dumps(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def verify(path: Path, public_key: PublicKey) -> tuple[dict[str, Any] | None, list[str]]:
    """The transcript and every problem found (an empty list means it verifies)."""
    try:
        if path.stat().st_size > MAX_TRANSCRIPT_BYTES:
            return None, [f"{path} is larger than {MAX_TRANSCRIPT_BYTES} bytes"]
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        return None, [f"cannot read {path}: {exc}"]
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return None, [f"{path} is not a ceremony transcript"]
    problems = []
    sig = doc.pop("signature", None)
    verdict = signed.check(sig, doc, public_key)
    if verdict == "unsigned":
        problems.append("the transcript is not signed")
    elif verdict != "ok":
        problems.append("the signature does not verify with the audit key (edited?)")
    folder = path.parent
    files = {"script.yaml": doc.get("script", {}).get("sha256"), **doc.get("outputs", {})}
    for name, digest in files.items():
        target = folder / name
        if "/" in name or name.startswith("."):
            problems.append(f"suspicious output name {name!r}")
            continue
        try:
            actual = hashlib.sha256(target.read_bytes()).hexdigest()
        except OSError:
            problems.append(f"{name} is missing")
            continue
        if actual != digest:
            problems.append(f"{name} does not match its recorded SHA-256 (changed)")
    for extra in sorted(p.name for p in folder.iterdir()
                        if p.name not in files and p.name != path.name):
        problems.append(f"{extra} is in the record folder but not in the transcript")
    if sig is not None:
        doc["signature"] = sig
    return doc, problems


def outcome(doc: dict[str, Any]) -> tuple[str, str]:
    """What the transcript says happened: its status and a sentence for a person.

    Only a signed transcript's word counts; the caller checks the signature first. A
    status this code does not know is reported as such and never taken for completed."""
    status = doc.get("status")
    error = doc.get("error")
    step = doc.get("failed_step")
    if status == "completed" and error is None:
        return "completed", "completed"
    if status in ("failed", "refused"):
        where = ""
        if isinstance(step, dict):
            where = f" at step {step.get('number')} ({step.get('id')}, {step.get('type')})"
        return str(status), f"{status}{where}: {error}"
    return "unknown", f"unknown status {status!r}: {error}"
