"""Checking the audit log: every record, every link, every checkpoint, every anchor.

Each node's chain must run 1, 2, 3... with every record's hash re-computing
and pointing at its predecessor; the head row must match the last record;
every checkpoint must carry a good signature by the audit key and match the
record it names; and the newest checkpoint must not point past the end (tail
truncation). The report names the first bad record of each chain.

What a hash chain and its checkpoints cannot show on their own: that the
newest checkpoints and the records after them were not deleted together (a
rollback). That is what the anchors are for (``appliance.audit.anchor``): each
checkpoint is also written where the database's attacker cannot roll it back,
and an anchored checkpoint the log no longer has, or no longer matches, is a
finding here.

The same checks run on the database and, offline, on an exported JSONL file
(``verify_export``): the chain logic sees only plain records and checkpoints.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.audit.anchor import Anchor, Checkpoint
from appliance.audit.record import GENESIS, HASHED_FIELDS, checkpoint_payload, record_hash
from appliance.audit.signer import verify_signature
from appliance.hsm.signer import spki_der
from appliance.store.models import AuditCheckpoint, AuditEvent, AuditHead
from appliance.x509.algorithms import PublicKey

MAX_EXPORT_LINE = 256 * 1024


@dataclass(frozen=True)
class Problem:
    node_id: str
    seq: int | None
    record_id: int | None
    kind: str
    message: str


@dataclass
class Report:
    records: int = 0
    checkpoints: int = 0
    anchors: int = 0
    nodes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "records": self.records, "checkpoints": self.checkpoints,
            "anchors": self.anchors, "nodes": self.nodes,
            "problems": [asdict(p) for p in self.problems],
        }


@dataclass(frozen=True)
class Record:
    """One record as the chain sees it; ``ref`` is its row id (database) or line (export)."""

    fields: dict[str, Any]
    hash: str
    ref: int | None

    @property
    def seq(self) -> int:
        return int(self.fields["seq"])


class Keys:
    """The audit public keys a verification trusts, by the SHA-256 of their SPKI."""

    def __init__(self, keys: Iterable[PublicKey]) -> None:
        self.by_spki = {hashlib.sha256(spki_der(k)).hexdigest(): k for k in keys}

    def __bool__(self) -> bool:
        return bool(self.by_spki)

    def check(self, cp: Checkpoint) -> bool:
        key = self.by_spki.get(cp.spki_sha256)
        payload = checkpoint_payload(cp.node_id, cp.seq, cp.head_hash, cp.time)
        return key is not None and verify_signature(key, cp.algorithm, payload, cp.signature)


_UNKNOWN_HEAD = object()


def verify(session: Session, public_key: PublicKey | Sequence[PublicKey] | None,
           anchors: Sequence[Anchor] = ()) -> Report:
    """Verify every node's chain in the database. ``public_key`` is the audit key (or keys);
    None skips signatures (and says so as a problem, so a verification without the key
    never passes). ``anchors`` are checkpoints kept outside the database."""
    keys = _keys(public_key)
    report = Report(anchors=len(anchors))
    nodes = set(session.scalars(select(AuditEvent.node_id).distinct()))
    nodes |= set(session.scalars(select(AuditHead.node_id)))
    nodes |= set(session.scalars(select(AuditCheckpoint.node_id).distinct()))
    nodes |= {a.node_id for a in anchors}
    report.nodes = sorted(nodes)
    for node in report.nodes:
        cps = [_db_checkpoint(cp) for cp in session.scalars(
            select(AuditCheckpoint).where(AuditCheckpoint.node_id == node)
            .order_by(AuditCheckpoint.seq))]
        rows = session.execute(
            select(AuditEvent).where(AuditEvent.node_id == node)
            .order_by(AuditEvent.seq, AuditEvent.id).execution_options(yield_per=2000)
        ).scalars()
        records = (Record({c: getattr(r, c) for c in HASHED_FIELDS}, r.hash, r.id) for r in rows)
        head = session.get(AuditHead, node)
        _verify_node(node, records, cps, None if head is None else (head.seq, head.hash),
                     keys, [a for a in anchors if a.node_id == node], report)
    return report


def verify_export(lines: Iterable[str], public_keys: Sequence[PublicKey],
                  checkpoints: Sequence[Checkpoint] = (),
                  anchors: Sequence[Anchor] = ()) -> Report:
    """Verify an exported JSONL log offline: no database, no token. The export holds no
    head row, so a missing tail shows only against checkpoints or anchors kept elsewhere
    (those ``audit export-key`` writes, or an auditor's own copy of the anchor stream)."""
    keys = Keys(public_keys)
    report = Report(anchors=len(anchors))
    by_node: dict[str, list[Record]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            node, rec = _export_record(line, number)
        except ValueError as exc:
            report.problems.append(Problem("?", None, number, "unreadable",
                                           f"line {number} of the export: {exc}"))
            return report
        by_node.setdefault(node, []).append(rec)
    nodes = set(by_node) | {cp.node_id for cp in checkpoints} | {a.node_id for a in anchors}
    report.nodes = sorted(nodes)
    for node in report.nodes:
        cps = sorted((cp for cp in checkpoints if cp.node_id == node), key=lambda c: c.seq)
        _verify_node(node, iter(by_node.get(node, [])), cps, _UNKNOWN_HEAD, keys,
                     [a for a in anchors if a.node_id == node], report)
    return report


def read_export(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if len(line) > MAX_EXPORT_LINE:
                raise ValueError(f"a line of {path} is longer than {MAX_EXPORT_LINE} bytes")
            yield line


# -- the chain ---------------------------------------------------------------------------


def _verify_node(node: str, records: Iterator[Record], checkpoints: Sequence[Checkpoint],
                 head: tuple[int, str] | object | None, keys: Keys | None,
                 anchors: Sequence[Anchor], report: Report) -> None:
    def bad(seq: int | None, ref: int | None, kind: str, message: str) -> None:
        report.problems.append(Problem(node, seq, ref, kind, message))

    report.checkpoints += len(checkpoints)
    wanted = {cp.seq for cp in checkpoints} | {a.seq for a in anchors}
    hash_at: dict[int, str] = {}
    recorded_at: dict[int, int] = {}  # checkpoint seq -> the audit.checkpoint record saying so

    expected_seq, prev, broken = 1, GENESIS, False
    last_seq, last_hash = 0, GENESIS
    for rec in records:
        report.records += 1
        last_seq, last_hash = rec.seq, rec.hash
        if broken:
            continue
        if rec.fields["node_id"] != node:
            bad(rec.seq, rec.ref, "node", f"record {rec.seq} names node "
                f"{rec.fields['node_id']!r} but sits in the log of {node}")
            broken = True
        elif rec.seq != expected_seq:
            if rec.seq > expected_seq:
                bad(rec.seq, rec.ref, "missing",
                    f"record(s) {expected_seq}..{rec.seq - 1} missing before record {rec.seq} "
                    "(deleted)")
            else:
                bad(rec.seq, rec.ref, "out_of_order",
                    f"record {rec.seq} appears where record {expected_seq} should be "
                    "(inserted or duplicated)")
            broken = True
        elif record_hash(rec.fields) != rec.hash:
            bad(rec.seq, rec.ref, "edited",
                f"record {rec.seq} does not match its hash (edited)")
            broken = True
        elif rec.fields["prev_hash"] != prev:
            bad(rec.seq, rec.ref, "chain",
                f"record {rec.seq} does not link to record {rec.seq - 1} "
                "(inserted, deleted or reordered)")
            broken = True
        if rec.seq in wanted:
            hash_at[rec.seq] = rec.hash
        if rec.fields["event_type"] == "audit.checkpoint":
            covered = _checkpoint_seq(rec.fields["object_ids"])
            if covered is not None:
                recorded_at[covered] = rec.seq
        prev = rec.hash
        expected_seq = rec.seq + 1

    if head is not _UNKNOWN_HEAD:
        known = head if isinstance(head, tuple) else None
        head_seq, head_hash = known if known is not None else (0, GENESIS)
        if not broken and (head_seq != last_seq or head_hash != last_hash):
            says = f"its head says record {head_seq}" if known is not None else \
                "its head is missing"
            bad(head_seq, None, "head",
                f"the log of {node} ends at record {last_seq} but {says} (truncated or "
                "rewritten)")

    for cp in checkpoints:
        if keys is None:
            bad(cp.seq, None, "checkpoint_unverified",
                f"checkpoint at record {cp.seq} not checked: no audit public key")
            continue
        if not keys.check(cp):
            bad(cp.seq, None, "checkpoint_signature",
                f"checkpoint at record {cp.seq} is not signed by the audit key")
            continue
        _check_covered(cp.seq, cp.head_hash, "signed checkpoint", last_seq, hash_at,
                       recorded_at, broken, node, bad)

    by_seq = {cp.seq: cp for cp in checkpoints}
    newest_cp = max(by_seq, default=0)
    for a in anchors:
        held = by_seq.get(a.seq)
        if keys is not None and not keys.check(a.checkpoint):
            bad(a.seq, None, "anchor_signature",
                f"the {a.source} lists a checkpoint at record {a.seq} that is not signed by "
                "the audit key")
        elif a.seq > newest_cp:
            bad(a.seq, None, "rollback",
                f"the {a.source} holds a checkpoint at record {a.seq} but the log's newest "
                f"checkpoint is at record {newest_cp}: records {newest_cp + 1}..{a.seq} or "
                "more were rolled back")
        elif held is None:
            bad(a.seq, None, "anchor_missing",
                f"the checkpoint at record {a.seq} that the {a.source} lists is missing")
        elif held.line() != a.checkpoint.line():  # a re-signed one differs in its signature
            bad(a.seq, None, "anchor_mismatch",
                f"the checkpoint at record {a.seq} differs from the one the {a.source} lists")
        else:
            _check_covered(a.seq, a.head_hash, a.source, last_seq, hash_at, recorded_at, broken,
                           node, bad)


def _check_covered(seq: int, head_hash: str, what: str, last_seq: int, hash_at: dict[int, str],
                   recorded_at: dict[int, int], broken: bool, node: str, bad: Any) -> None:
    """A checkpoint (or an anchor) at record ``seq`` must find that record, unchanged, and
    right after it the ``audit.checkpoint`` record the same transaction wrote: without it,
    deleting everything after the newest checkpoint (head fixed) would leave no trace."""
    if seq > last_seq:
        bad(seq, None, "truncated",
            f"a {what} covers record {seq} but the log of {node} ends at record "
            f"{last_seq} (truncated)")
    elif seq in hash_at and hash_at[seq] != head_hash:
        bad(seq, None, "checkpoint_mismatch",
            f"record {seq} differs from the {what} (rewritten)")
    elif seq not in hash_at and not broken:
        bad(seq, None, "truncated", f"the record of the {what} at {seq} is missing")
    elif not broken and recorded_at.get(seq) != seq + 1:
        bad(seq + 1, None, "truncated",
            f"record {seq + 1}, the audit.checkpoint record of the {what} at {seq}, is missing "
            "(records after the checkpoint deleted)")


def _checkpoint_seq(object_ids: str) -> int | None:
    try:
        value = json.loads(object_ids).get("checkpoint_seq")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _keys(public_key: PublicKey | Sequence[PublicKey] | None) -> Keys | None:
    if public_key is None:
        return None
    if isinstance(public_key, Sequence):
        return Keys(public_key)
    return Keys([public_key])


def _db_checkpoint(cp: AuditCheckpoint) -> Checkpoint:
    return Checkpoint(cp.node_id, cp.seq, cp.head_hash, cp.time, cp.key_label, cp.spki_sha256,
                      cp.algorithm, cp.signature)


def _export_record(line: str, number: int) -> tuple[str, Record]:
    """An export line as the chain sees it: the exact ``*_json`` texts that were hashed."""
    doc = json.loads(line)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    try:
        fields = {name: doc[name] for name in HASHED_FIELDS
                  if name not in ("object_ids", "details")}
        fields["object_ids"] = doc["object_ids_json"]
        fields["details"] = doc["details_json"]
        digest = doc["hash"]
    except KeyError as exc:
        raise ValueError(f"no {exc.args[0]!r} field") from None
    if not isinstance(fields["seq"], int) or isinstance(fields["seq"], bool):
        raise ValueError("seq is not an integer")
    for name, value in fields.items():
        if name != "seq" and not isinstance(value, str):
            raise ValueError(f"{name} is not a string")
    if not isinstance(digest, str):
        raise ValueError("hash is not a string")
    for name in ("object_ids", "details"):
        if name in doc and doc[name] != json.loads(fields[name]):
            raise ValueError(f"{name} differs from {name}_json (the hashed text)")
    return fields["node_id"], Record(fields, digest, number)
