"""Inventory records: add, import (CSV or YAML), list, show, remove; each change audited."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from appliance import strict_yaml
from appliance.audit.log import Actor
from appliance.errors import ApplianceError
from appliance.inventory.match import IDENTIFIER_TYPES, normalise
from appliance.runtime import Appliance
from appliance.store.models import InventoryIdentifier, InventoryRecord

MAX_IMPORT_BYTES = 5_000_000
MAX_RECORDS = 100_000


class InventoryInputError(ApplianceError):
    code = "bad_request"


class RecordIn(BaseModel):
    """One record as operators write it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@:/-]{0,127}$")
    kind: Literal["host", "service", "person", "device"] = "host"
    owner: str = Field(default="", max_length=256)
    identifiers: dict[Literal["dns", "ip", "email", "uri", "cn"],
                      list[str]] = Field(default_factory=dict)
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=100)

    @field_validator("identifiers")
    @classmethod
    def _bounded(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        total = sum(len(v) for v in value.values())
        if total > 1000 or any(len(x) > 512 for v in value.values() for x in v):
            raise ValueError("at most 1000 identifiers of at most 512 characters each")
        for kind, values in value.items():
            for v in values:
                try:
                    normalise(kind, v)
                except ValueError as exc:
                    raise ValueError(f"{kind} identifier {v!r}: {exc}") from None
        return value


def _store(db: Session, rec: RecordIn) -> InventoryRecord:
    if db.scalars(select(InventoryRecord).where(InventoryRecord.name == rec.name)).first():
        raise InventoryInputError(f"an inventory record named {rec.name!r} already exists")
    row = InventoryRecord(name=rec.name, kind=rec.kind, owner=rec.owner,
                          metadata_json=json.dumps(rec.metadata, sort_keys=True),
                          updated_at=datetime.now(UTC))
    db.add(row)
    db.flush()
    seen: set[tuple[str, str]] = set()
    for kind, values in rec.identifiers.items():
        for v in values:
            key = (kind, normalise(kind, v))
            if key not in seen:
                seen.add(key)
                db.add(InventoryIdentifier(record_id=row.id, type=key[0], value=key[1]))
    try:
        db.flush()
    except IntegrityError:
        raise InventoryInputError(
            f"record {rec.name!r}: an identifier already belongs to another record") from None
    return row


def add(app: Appliance, records: list[RecordIn], actor: Actor, source: str) -> int:
    """Add records all together or none (one transaction, one audit event)."""
    if len(records) > MAX_RECORDS:
        raise InventoryInputError(f"at most {MAX_RECORDS} records per import")
    with app.db.transaction() as db:
        for rec in records:
            _store(db, rec)
        app.audit_log().append(db, "inventory.added", actor,
                               object_ids={"records": [r.name for r in records][:100]},
                               details={"count": len(records), "source": source})
    return len(records)


def remove(app: Appliance, name: str, actor: Actor) -> None:
    with app.db.transaction() as db:
        row = get(db, name)
        db.delete(row)
        app.audit_log().append(db, "inventory.removed", actor, object_ids={"record": name},
                               details={"kind": row.kind, "owner": row.owner})


def get(db: Session, name: str) -> InventoryRecord:
    row = db.scalars(select(InventoryRecord).where(InventoryRecord.name == name)).one_or_none()
    if row is None:
        raise InventoryInputError(f"no inventory record named {name!r}")
    return row


def describe(db: Session, row: InventoryRecord) -> dict[str, Any]:
    ids = db.scalars(select(InventoryIdentifier).where(
        InventoryIdentifier.record_id == row.id).order_by(InventoryIdentifier.id)).all()
    identifiers: dict[str, list[str]] = {}
    for i in ids:
        identifiers.setdefault(i.type, []).append(i.value)
    return {"name": row.name, "kind": row.kind, "owner": row.owner,
            "identifiers": identifiers, "metadata": json.loads(row.metadata_json)}


def list_all(db: Session) -> list[dict[str, Any]]:
    rows = db.scalars(select(InventoryRecord).order_by(InventoryRecord.name)).all()
    return [describe(db, r) for r in rows]


def parse_yaml(text: str, source: str) -> list[RecordIn]:
    class _Doc(BaseModel):
        model_config = ConfigDict(extra="forbid")
        records: list[RecordIn] = Field(max_length=MAX_RECORDS)

    return strict_yaml.parse(text, _Doc, source, "inventory file").records


def parse_csv(text: str, source: str) -> list[RecordIn]:
    """Columns: name, kind, owner, then ``dns``/``ip``/``email``/``uri``/``cn`` (several values
    separated by spaces or ``;``) and ``meta.KEY`` columns for metadata."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "name" not in reader.fieldnames:
        raise InventoryInputError(f"{source}: a CSV header with a 'name' column is required")
    unknown = [f for f in reader.fieldnames if f not in ("name", "kind", "owner",
               *IDENTIFIER_TYPES) and not f.startswith("meta.")]
    if unknown:
        raise InventoryInputError(f"{source}: unknown columns {', '.join(unknown)}")
    records = []
    for n, row in enumerate(reader, start=2):
        identifiers = {k: [v for v in (row.get(k) or "").replace(";", " ").split() if v]
                       for k in IDENTIFIER_TYPES if row.get(k)}
        metadata = {k[5:]: v for k, v in row.items() if k.startswith("meta.") and v}
        try:
            records.append(RecordIn.model_validate({
                "name": row["name"], "kind": row.get("kind") or "host",
                "owner": row.get("owner") or "", "identifiers": identifiers,
                "metadata": metadata}))
        except ValidationError as exc:
            raise InventoryInputError(
                f"{source} line {n}: {strict_yaml.summarise(exc)}") from None
        if len(records) > MAX_RECORDS:
            raise InventoryInputError(f"{source}: more than {MAX_RECORDS} records")
    return records


def dump_yaml(records: list[dict[str, Any]]) -> str:
    return yaml.safe_dump({"records": records}, sort_keys=False)
