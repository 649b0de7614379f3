"""Finding the inventory record a request's names belong to.

Identifiers are stored normalised (DNS and email domains lowercase, IPs in
canonical form) so a lookup is an exact match on (type, value).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from appliance.errors import ApplianceError
from appliance.store.models import InventoryIdentifier, InventoryRecord

IDENTIFIER_TYPES = ("dns", "ip", "email", "uri", "cn")


class InventoryError(ApplianceError):
    code = "inventory_refused"
    status = 403
    acme_type = "unauthorized"


@dataclass(frozen=True)
class Record:
    """What issuance reads of an inventory record: plain values, not an ORM object, so a
    match can be cached and shared by threads (``appliance.store.epochs``)."""

    id: int
    name: str
    kind: str
    owner: str
    metadata_json: str


@dataclass(frozen=True)
class Match:
    record: Record
    unmatched: tuple[tuple[str, str], ...]

    def template_view(self) -> dict[str, Any]:
        return {"name": self.record.name, "kind": self.record.kind, "owner": self.record.owner,
                "metadata": json.loads(self.record.metadata_json)}


def normalise(kind: str, value: str) -> str:
    if kind not in IDENTIFIER_TYPES:
        raise InventoryError(f"unknown identifier type {kind!r}")
    value = value.strip()
    if kind == "dns":
        return value.lower().rstrip(".")
    if kind == "ip":
        return str(ipaddress.ip_address(value))
    if kind == "email" and "@" in value:
        local, _, domain = value.rpartition("@")
        return f"{local}@{domain.lower()}"
    return value


def keys_of(names: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The names as they are stored (normalised): what ``find_keys`` looks up."""
    return tuple((k, normalise(k, v)) for k, v in names)


def find(db: Session, names: list[tuple[str, str]]) -> Match | None:
    """The one record the names point to (None if none does); names of two records refuse."""
    return find_keys(db, keys_of(names))


def find_keys(db: Session, keys: tuple[tuple[str, str], ...]) -> Match | None:
    """``find`` of names already normalised (``keys_of``)."""
    if not keys:
        return None
    rows = db.execute(
        select(InventoryIdentifier.type, InventoryIdentifier.value, InventoryIdentifier.record_id)
        .where(tuple_(InventoryIdentifier.type, InventoryIdentifier.value).in_(list(keys)))
    ).all()

    def record_of(record_id: int) -> Record:
        row = db.get(InventoryRecord, record_id)
        assert row is not None
        return Record(row.id, row.name, row.kind, row.owner, row.metadata_json)

    return _decide(keys, {(r.type, r.value): r.record_id for r in rows}, record_of)


@dataclass(frozen=True)
class Snapshot:
    """Every identifier of an inventory small enough to hold (``snapshot``): the same
    answers as ``find_keys``, with no query per request, for any names."""

    identifiers: Mapping[tuple[str, str], int]  # (type, normalised value) -> record id
    records: Mapping[int, Record]

    def find(self, keys: tuple[tuple[str, str], ...]) -> Match | None:
        if not keys:
            return None
        return _decide(keys, {k: self.identifiers[k] for k in keys if k in self.identifiers},
                       self.records.__getitem__)


def snapshot(db: Session, limit: int) -> Snapshot | None:
    """The whole inventory's identifiers with their records, in one statement (one
    consistent read), or None if it has more than ``limit`` identifiers."""
    rows = db.execute(
        select(InventoryIdentifier.type, InventoryIdentifier.value, InventoryRecord.id,
               InventoryRecord.name, InventoryRecord.kind, InventoryRecord.owner,
               InventoryRecord.metadata_json)
        .join(InventoryRecord, InventoryRecord.id == InventoryIdentifier.record_id)
        .limit(limit + 1)).all()
    if len(rows) > limit:
        return None
    return Snapshot({(r[0], r[1]): r[2] for r in rows},
                    {r[2]: Record(r[2], r[3], r[4], r[5], r[6]) for r in rows})


def _decide(keys: tuple[tuple[str, str], ...], found: Mapping[tuple[str, str], int],
            record_of: Callable[[int], Record]) -> Match | None:
    """The match of ``keys`` given the record id of each one found."""
    records = set(found.values())
    if not records:
        return None
    if len(records) > 1:
        raise InventoryError("the requested names belong to more than one inventory record")
    matched = set(found)
    record = record_of(records.pop())
    return Match(record, tuple(k for k in keys if k not in matched
                               and not (k[0] == "cn" and _cn_repeats_a_match(k[1], matched))))


def _cn_repeats_a_match(cn: str, matched: set[tuple[str, str]]) -> bool:
    """A subject CN that repeats one of the record's matched SANs (``CN=host`` beside
    ``DNS:host``, as most CSRs have it) belongs to that record without a ``cn`` identifier."""
    for kind in ("dns", "ip", "email", "uri"):
        try:
            if (kind, normalise(kind, cn)) in matched:
                return True
        except ValueError:
            continue
    return False
