"""``appliance fips report``: everything an auditor checks, in one document the audit key
signs, and the offline check of that signature (``fips report --verify FILE``).

The document is built from what is, not from what the configuration hopes: the mode as
configured and as recorded in the database, the newest self-test run of every node, the
manifest hash as sealed and as computed now, the token and every key object in it (with
the attributes that prove it never left: sensitive, never extractable...) and whether its
algorithm is approved by the active table, every authority's algorithm, the API's TLS
settings, the refusals the audit log recorded (by reason), and the officers. It is signed
like a ceremony transcript: the canonical JSON of the ``report`` member, by the audit key.
"""

from __future__ import annotations

import json
import ssl
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from appliance import __version__
from appliance.audit import signed
from appliance.ca import authorities
from appliance.fips import officers as off
from appliance.fips.manifest import compute
from appliance.fips.seal import INSTALLATION_KEY as MANIFEST_KEY
from appliance.hsm import keys
from appliance.hsm.module import token_text
from appliance.rfc3339 import format_z
from appliance.runtime import Appliance
from appliance.store.models import AuditEvent, Installation, SelfTestRun
from appliance.x509 import algorithms
from appliance.x509.algorithms import PublicKey

FORMAT = "appliance-fips-report/1"
MAX_REPORT_BYTES = 8 * 1024 * 1024
OCSP_SHA1_NOTE = (
    "OCSP requests name a certificate by CertID, whose issuer name and key hashes are "
    "often SHA-1 (RFC 6960 §4.1.1; RFC 5019 §2.1.1 requires responders to accept SHA-1 "
    "CertIDs). The responder uses that hash only to look up a pre-signed response: it is "
    "not a signature and protects nothing, so it is accepted in FIPS mode too. Every OCSP "
    "response is signed with an approved algorithm (SHA-256 or stronger).")
# The API's TLS floor (web/api_server.py:tls_context); the suites come from the table
# when it names them, else from the TLS library's default for that floor.
TLS_MINIMUM = "TLSv1.2"


def build(app: Appliance) -> dict[str, Any]:
    """The unsigned report."""
    cfg = app.settings.config
    table = algorithms.current()
    pool = app.pool
    token = pool.token
    with app.db.sessions() as db:
        recorded = {r.key: r for r in db.scalars(select(Installation))}
        newest = (select(SelfTestRun.node_id, func.max(SelfTestRun.id))
                  .group_by(SelfTestRun.node_id))
        ids = [i for _, i in db.execute(newest)]
        runs = list(db.scalars(select(SelfTestRun).where(SelfTestRun.id.in_(ids))
                               .order_by(SelfTestRun.node_id))) if ids else []
        refusals: Counter[str] = Counter()
        for event_type, details in db.execute(
                select(AuditEvent.event_type, AuditEvent.details)
                .where(AuditEvent.outcome == "denied")):
            refusals[_reason(event_type, details)] += 1
        officers = [o.as_dict() for o in off.list_all(db, include_removed=True)]
        cas = [a.as_dict() for a in authorities.list_all(db)]
    sealed = _sealed(recorded.get(MANIFEST_KEY))
    now = compute()
    key_rows = []
    for k in keys.list_keys(pool):
        row = k.as_dict()
        row["algorithm"] = k.spec.name
        row["approved"] = k.spec.name in table.ca_key_types
        key_rows.append(row)
    return {
        "format": FORMAT,
        "generated_at": format_z(datetime.now(UTC)),
        "appliance_version": __version__,
        "node_id": app.node_id,
        "mode": {"configured": "fips" if cfg.fips.enabled else "default",
                 "recorded": recorded["mode"].value if "mode" in recorded else None,
                 "quorum": cfg.fips.quorum},
        "self_tests": [{"node_id": r.node_id, "trigger": r.trigger, "passed": r.passed,
                        "ran_at": format_z(r.ran_at), "manifest_sha256": r.manifest_sha256,
                        "results": _json_or_text(r.results_json)} for r in runs],
        "manifest": {"computed_sha256": now.sha256, "files": len(now.files),
                     "sealed_sha256": sealed.get("sha256"),
                     "sealed_at": sealed.get("sealed_at"),
                     "sealed_by": sealed.get("officers"),
                     "seal_key_label": sealed.get("key_label"),
                     "matches": sealed.get("sha256") == now.sha256 if sealed else None},
        "token": {"profile": app.hsm_profile.name, "module": str(app.hsm_profile.module),
                  "label": str(token.label), "serial": token_text(token.serial),
                  "manufacturer": str(token.manufacturer_id), "model": str(token.model)},
        "keys": key_rows,
        "authorities": cas,
        "algorithms": _table(table),
        "tls": _tls(table),
        "refusals": dict(sorted(refusals.items())),
        "officers": officers,
        "notes": {"ocsp_certid_sha1": OCSP_SHA1_NOTE},
    }


def sign(app: Appliance, report: dict[str, Any]) -> dict[str, Any]:
    return {"report": report,
            "signature": signed.signature_block(app.checkpoint_signer(), report)}


def dumps(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def verify(path: Path, public_key: PublicKey) -> tuple[dict[str, Any] | None, list[str]]:
    """The report and every problem found (none: its signature holds)."""
    try:
        if path.stat().st_size > MAX_REPORT_BYTES:
            return None, [f"{path} is larger than {MAX_REPORT_BYTES} bytes"]
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        return None, [f"cannot read {path}: {exc}"]
    if not isinstance(doc, dict) or not isinstance(doc.get("report"), dict) or \
            doc["report"].get("format") != FORMAT:
        return None, [f"{path} is not a FIPS report"]
    verdict = signed.check(doc.get("signature"), doc["report"], public_key)
    problem = {"unsigned": "the report is not signed",
               "other-key": "the report was signed by another key than this audit key",
               "invalid": "the signature does not verify with the audit key (edited?)"}
    return doc["report"], [problem[verdict]] if verdict != "ok" else []


def _reason(event_type: str, details: str) -> str:
    try:
        parsed = json.loads(details)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return str(parsed["error"])
    return event_type


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _sealed(row: Installation | None) -> dict[str, Any]:
    if row is None:
        return {}
    try:
        doc = json.loads(row.value)
    except ValueError:
        return {"sha256": "unreadable"}
    return doc if isinstance(doc, dict) else {"sha256": "unreadable"}


def _table(table: algorithms.Table) -> dict[str, Any]:
    return {"ca_key_types": list(table.ca_key_types), "ca_hashes": list(table.ca_hashes),
            "mechanisms": list(table.mechanisms), "csr_hashes": list(table.csr_hashes),
            "csr_curves": list(table.csr_keys.curves),
            "csr_rsa_bits": list(table.csr_keys.rsa_bits or []),
            "account_curves": list(table.account_keys.curves),
            "jws": {p: list(getattr(table.jws, p)) for p in ("ott", "x5c", "acme", "eab", "ra")}}


def _tls(table: algorithms.Table) -> dict[str, Any]:
    """The API's TLS: the floor and the suites a server context offers with it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    suites = getattr(table, "tls_ciphers", None)
    if isinstance(suites, (tuple, list)) and suites:
        ctx.set_ciphers(":".join(str(s) for s in suites))
    return {"minimum_version": TLS_MINIMUM,
            "suites": sorted({str(c["name"]) for c in ctx.get_ciphers()}),
            "groups": list(getattr(table, "tls_groups", ()) or ())}
