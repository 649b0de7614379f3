"""Checking the audit log: every record, every link, every checkpoint.

Each node's chain must run 1, 2, 3... with every record's hash re-computing
and pointing at its predecessor; the head row must match the last record;
every checkpoint must carry a good signature by the audit key and match the
record it names; and the newest checkpoint must not point past the end (tail
truncation). The report names the first bad record of each chain.

What a hash chain cannot show on its own: records forged and correctly
chained *after* the newest checkpoint. Checkpoints often (and exports kept
elsewhere) shrink that window.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.audit.record import GENESIS, checkpoint_payload, record_hash
from appliance.audit.signer import verify_signature
from appliance.hsm.keys import PublicKey
from appliance.hsm.signer import spki_der
from appliance.store.models import AuditCheckpoint, AuditEvent, AuditHead


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
    nodes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "records": self.records, "checkpoints": self.checkpoints,
            "nodes": self.nodes, "problems": [asdict(p) for p in self.problems],
        }


def verify(session: Session, public_key: PublicKey | None) -> Report:
    """Verify every node's chain. ``public_key`` is the audit key; None skips signatures
    (and says so as a problem, so a verification without the key never passes)."""
    report = Report()
    nodes = set(session.scalars(select(AuditEvent.node_id).distinct()))
    nodes |= set(session.scalars(select(AuditHead.node_id)))
    nodes |= set(session.scalars(select(AuditCheckpoint.node_id).distinct()))
    report.nodes = sorted(nodes)
    expected_spki = (
        hashlib.sha256(spki_der(public_key)).hexdigest() if public_key is not None else None
    )
    for node in report.nodes:
        _verify_node(session, node, public_key, expected_spki, report)
    return report


def _verify_node(session: Session, node: str, public_key: PublicKey | None,
                 expected_spki: str | None, report: Report) -> None:
    def bad(seq: int | None, record_id: int | None, kind: str, message: str) -> None:
        report.problems.append(Problem(node, seq, record_id, kind, message))

    checkpoints = list(session.scalars(
        select(AuditCheckpoint).where(AuditCheckpoint.node_id == node)
        .order_by(AuditCheckpoint.seq)
    ))
    report.checkpoints += len(checkpoints)
    cp_by_seq = {cp.seq: cp for cp in checkpoints}
    hash_at: dict[int, str] = {}

    expected_seq, prev, broken = 1, GENESIS, False
    last_seq, last_hash = 0, GENESIS
    rows = session.execute(
        select(AuditEvent).where(AuditEvent.node_id == node)
        .order_by(AuditEvent.seq, AuditEvent.id)
        .execution_options(yield_per=2000)
    ).scalars()
    for rec in rows:
        report.records += 1
        last_seq, last_hash = rec.seq, rec.hash
        if broken:
            continue
        fields = {c: getattr(rec, c) for c in (
            "node_id", "seq", "time", "actor", "role", "event_type", "outcome",
            "object_ids", "details", "prev_hash")}
        if rec.seq != expected_seq:
            if rec.seq > expected_seq:
                bad(rec.seq, rec.id, "missing",
                    f"record(s) {expected_seq}..{rec.seq - 1} missing before record {rec.seq} "
                    "(deleted)")
            else:
                bad(rec.seq, rec.id, "out_of_order",
                    f"record {rec.seq} appears where record {expected_seq} should be "
                    "(inserted or duplicated)")
            broken = True
        elif record_hash(fields) != rec.hash:
            bad(rec.seq, rec.id, "edited",
                f"record {rec.seq} does not match its hash (edited)")
            broken = True
        elif rec.prev_hash != prev:
            bad(rec.seq, rec.id, "chain",
                f"record {rec.seq} does not link to record {rec.seq - 1} "
                "(inserted, deleted or reordered)")
            broken = True
        if rec.seq in cp_by_seq:
            hash_at[rec.seq] = rec.hash
        prev = rec.hash
        expected_seq = rec.seq + 1

    head = session.get(AuditHead, node)
    head_seq, head_hash = (head.seq, head.hash) if head is not None else (0, GENESIS)
    if not broken and (head_seq != last_seq or head_hash != last_hash):
        says = f"its head says record {head_seq}" if head is not None else "its head is missing"
        bad(head_seq, None, "head",
            f"the log of {node} ends at record {last_seq} but {says} (truncated or rewritten)")

    for cp in checkpoints:
        if public_key is None:
            bad(cp.seq, None, "checkpoint_unverified",
                f"checkpoint at record {cp.seq} not checked: no audit public key")
            continue
        payload = checkpoint_payload(cp.node_id, cp.seq, cp.head_hash, cp.time)
        if cp.spki_sha256 != expected_spki or not verify_signature(
            public_key, cp.algorithm, payload, cp.signature
        ):
            bad(cp.seq, None, "checkpoint_signature",
                f"checkpoint at record {cp.seq} is not signed by the audit key")
            continue
        if cp.seq > last_seq:
            bad(cp.seq, None, "truncated",
                f"a signed checkpoint covers record {cp.seq} but the log of {node} ends at "
                f"record {last_seq} (truncated)")
        elif cp.seq in hash_at and hash_at[cp.seq] != cp.head_hash:
            bad(cp.seq, None, "checkpoint_mismatch",
                f"record {cp.seq} differs from the signed checkpoint (rewritten)")
        elif cp.seq not in hash_at and not broken:
            bad(cp.seq, None, "truncated",
                f"the record of signed checkpoint {cp.seq} is missing")
