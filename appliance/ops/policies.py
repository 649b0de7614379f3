"""Setting, showing and removing name policies (authority level and per provisioner)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance import policy
from appliance.audit.log import Actor
from appliance.errors import ApplianceError
from appliance.ops import provisioners as prov_ops
from appliance.runtime import Appliance
from appliance.store.models import NamePolicy

MAX_POLICY_BYTES = 1_000_000


class PolicyNotFound(ApplianceError):
    code = "not_found"
    status = 404


def _row(db: Session, level: str, provisioner: str | None) -> tuple[NamePolicy | None, int | None]:
    pid = prov_ops.get(db, provisioner).id if provisioner is not None else None
    stmt = select(NamePolicy).where(NamePolicy.level == level)
    stmt = stmt.where(NamePolicy.provisioner_id.is_(None) if pid is None
                      else NamePolicy.provisioner_id == pid)
    return db.scalars(stmt).one_or_none(), pid


def set_policy(app: Appliance, level: str, provisioner: str | None, text: str,
               actor: Actor) -> policy.Policy:
    if len(text.encode()) > MAX_POLICY_BYTES:
        raise ApplianceError(f"policy larger than {MAX_POLICY_BYTES} bytes")
    where = "authority" if provisioner is None else f"provisioner {provisioner}"
    # Refuse a bad file before touching anything.
    parsed = policy.parse_policy(text, f"{where} policy")
    with app.db.transaction() as db:
        row, pid = _row(db, level, provisioner)
        before = row.source if row is not None else None
        if row is None:
            row = NamePolicy(level=level, provisioner_id=pid, source=text,
                             updated_at=datetime.now(UTC))
            db.add(row)
        else:
            row.source = text
            row.updated_at = datetime.now(UTC)
        app.audit_log().append(db, "policy.set", actor,
                               object_ids={"level": level, "provisioner": provisioner},
                               details={"before": before, "after": parsed.to_yaml()})
    return parsed


def get_policy(app: Appliance, level: str, provisioner: str | None) -> policy.Policy:
    with app.db.sessions() as db:
        row, _ = _row(db, level, provisioner)
        if row is None:
            where = "the authority" if provisioner is None else f"provisioner {provisioner}"
            raise PolicyNotFound(f"no policy is set for {where}")
        return policy.parse_policy(row.source, "stored policy")


def remove_policy(app: Appliance, level: str, provisioner: str | None, actor: Actor) -> None:
    with app.db.transaction() as db:
        row, _ = _row(db, level, provisioner)
        if row is None:
            raise PolicyNotFound("no such policy")
        db.delete(row)
        app.audit_log().append(db, "policy.removed", actor,
                               object_ids={"level": level, "provisioner": provisioner},
                               details={"before": row.source})
