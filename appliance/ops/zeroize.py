"""``appliance hsm zeroize``: destroy token keys, retire what they signed for, wipe secrets.

Zeroization is the one act that must not be blocked half-way by a later fault: the intent
is audited first (so the log says who asked, and with which officers, even if the process
dies during the act), then the token objects are destroyed, then the secret files are
overwritten and removed, and finally the authorities whose keys are gone are marked
retired, the EAB secrets in the database wiped, and the outcome audited in one
transaction. ``--label`` destroys one key pair; ``--all`` every key and data object in
the token (the audit key and anchors included: after it the node needs new keys), the
provisioners' sealed keys and passwords, and every EAB key's secret.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from appliance import logs
from appliance.audit.log import Actor
from appliance.ca.keys import record_failure
from appliance.errors import ApplianceError, HsmError, KeyNotFoundError
from appliance.hsm import keys
from appliance.hsm import zeroize as token
from appliance.runtime import Appliance
from appliance.store.models import AcmeEabKey, Authority, HsmKey

log = logs.get("ops.zeroize")

# secrets/ files that are provisioner or EAB secrets (never the token PINs: the token
# itself, now empty, stays usable for new keys).
_SECRET_PATTERNS = ("provisioner-*.jwe", "provisioner-*.password", "provisioner-*.pem",
                    "acme-eab-wrap.key")


@dataclass
class ZeroizeResult:
    destroyed: list[dict[str, str]] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    files_wiped: list[str] = field(default_factory=list)
    eab_keys_wiped: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"destroyed": self.destroyed, "retired_authorities": self.retired,
                "files_wiped": self.files_wiped, "eab_keys_wiped": self.eab_keys_wiped}


def zeroize(app: Appliance, label: str | None, everything: bool, actor: Actor,
            officers: list[str]) -> ZeroizeResult:
    if (label is None) == (not everything):
        raise HsmError("zeroize needs exactly one of --label L or --all")
    scope = {"label": label} if label is not None else {"scope": "all"}
    if label is not None:
        keys.check_label(label)
    try:
        planned = token.inventory(app.pool, label)
        if label is not None and not any(d["class"] == "private_key" for d in planned):
            raise KeyNotFoundError(f"no private key labelled {label!r} in the token")
    except ApplianceError as exc:
        record_failure(app, "hsm.zeroize", actor, exc, scope)
        raise
    with app.db.transaction() as s:
        app.audit_log().append(s, "hsm.zeroize.started", actor, object_ids=scope,
                               details={"objects": planned, "officers": officers})
    result = ZeroizeResult()
    result.destroyed = token.destroy(app.pool, label)
    labels = {d["label"] for d in result.destroyed if "label" in d}
    if everything:
        result.files_wiped = _wipe_secret_files(app.settings.base_dir / "secrets")
    now = datetime.now(UTC)
    with app.db.transaction() as s:
        query = select(Authority).join(HsmKey, Authority.key_id == HsmKey.id)
        if not everything:
            query = query.where(HsmKey.label.in_(labels))
        for row in s.scalars(query):
            if row.status != "retired":
                row.status = "retired"
                result.retired.append(row.name)
        if everything:
            for eab in s.scalars(select(AcmeEabKey)):
                eab.hmac_sealed = b""
                if eab.revoked_at is None:
                    eab.revoked_at = now
                result.eab_keys_wiped += 1
        s.flush()
        app.audit_log().append(s, "hsm.zeroized", actor, object_ids=scope,
                               details={**result.as_dict(), "officers": officers})
    log.warning("token zeroized", extra={"scope": label or "all",
                                         "objects": len(result.destroyed)})
    return result


def _wipe_secret_files(folder: Path) -> list[str]:
    """Overwrite each provisioner/EAB secret file with zeros, then remove it."""
    wiped = []
    for pattern in _SECRET_PATTERNS:
        for path in sorted(folder.glob(pattern)):
            if not path.is_file() or path.is_symlink():
                continue
            size = path.stat().st_size
            with open(path, "r+b") as fh:
                fh.write(b"\0" * size)
                fh.flush()
                os.fsync(fh.fileno())
            path.unlink()
            wiped.append(path.name)
    return wiped
