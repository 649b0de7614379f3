"""Appending to the audit log, in the caller's transaction.

``append`` takes the caller's session, so the record commits with the change
it describes or not at all. Writers take the node's head row first (``SELECT
... FOR UPDATE`` on PostgreSQL; SQLite transactions start ``BEGIN IMMEDIATE``),
so concurrent threads and processes line up behind one another and the chain
never forks; the unique (node, seq) constraint backs that up.
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Table, bindparam, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from appliance import logs
from appliance.audit.anchor import AnchorWriter, Checkpoint
from appliance.audit.record import (
    GENESIS,
    MAX_DETAILS_BYTES,
    OUTCOMES,
    canonical,
    checkpoint_payload,
    record_hash,
    utc_now,
)
from appliance.audit.signer import CheckpointSigner
from appliance.errors import ApplianceError, AuditError
from appliance.store.models import AuditCheckpoint, AuditEvent, AuditHead

log = logs.get("audit")
MAX_FIELD = 256
_EVENTS = cast(Table, AuditEvent.__table__)
_HEADS = cast(Table, AuditHead.__table__)
# Built once (values bound at execution): building a statement per call costs more than
# running it.
_INSERT_EVENT = insert(_EVENTS)
_LOCK_HEAD = (select(_HEADS.c.seq, _HEADS.c.hash)
              .where(_HEADS.c.node_id == bindparam("b_node")).with_for_update())
_MOVE_HEAD = (update(_HEADS)
              .where(_HEADS.c.node_id == bindparam("b_node"), _HEADS.c.seq == bindparam("b_seq"),
                     _HEADS.c.hash == bindparam("b_hash"))
              .values(seq=bindparam("n_seq"), hash=bindparam("n_hash")))
_CHECKPOINTS = cast(Table, AuditCheckpoint.__table__)
# Whether a checkpoint is due is asked on every append: the node's last checkpoint, and
# (before its first one) the time of its first record.
_LAST_CHECKPOINT = (select(_CHECKPOINTS.c.seq, _CHECKPOINTS.c.time)
                    .where(_CHECKPOINTS.c.node_id == bindparam("b_node"))
                    .order_by(_CHECKPOINTS.c.seq.desc()).limit(1))
_FIRST_EVENT_TIME = select(_EVENTS.c.time).where(_EVENTS.c.node_id == bindparam("b_node"),
                                                 _EVENTS.c.seq == 1)


@dataclass(frozen=True)
class Actor:
    """Who caused an event and in what role (operator, auditor, service, system...)."""

    name: str
    role: str


class AuditLog:
    def __init__(
        self,
        node_id: str,
        signer: CheckpointSigner | None = None,
        checkpoint_every: int = 0,
        checkpoint_interval_seconds: int = 0,
        anchors: AnchorWriter | None = None,
    ) -> None:
        self.node_id = node_id
        self.anchors = anchors
        self.signer = signer
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval_seconds = checkpoint_interval_seconds

    def append(
        self,
        session: Session,
        event_type: str,
        actor: Actor,
        *,
        outcome: str = "success",
        object_ids: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
        auto_checkpoint: bool = True,
    ) -> AuditEvent:
        if outcome not in OUTCOMES:
            raise AuditError(f"outcome must be one of {OUTCOMES}")
        for name, value in (("event_type", event_type), ("actor", actor.name),
                            ("role", actor.role)):
            if not value or len(value) > MAX_FIELD:
                raise AuditError(f"audit {name} must be 1..{MAX_FIELD} characters")
        objects_text = canonical(object_ids or {})
        details_text = canonical(details or {})
        if len(details_text.encode()) + len(objects_text.encode()) > MAX_DETAILS_BYTES:
            raise AuditError(f"audit details larger than {MAX_DETAILS_BYTES} bytes")
        head_seq, head_hash = self._lock_head(session)
        fields: dict[str, Any] = {
            "node_id": self.node_id, "seq": head_seq + 1, "time": utc_now(),
            "actor": actor.name, "role": actor.role, "event_type": event_type,
            "outcome": outcome, "object_ids": objects_text, "details": details_text,
            "prev_hash": head_hash,
        }
        fields["hash"] = record_hash(fields)
        # SQLAlchemy Core on the hot path (no unit of work for two rows): the record, then
        # the head it now is. The head row is locked (above), and the update is conditional
        # on the head we read, so a chain can never fork even if the lock were missing.
        result = cast(CursorResult[Any], session.execute(_INSERT_EVENT, fields))
        moved = session.execute(_MOVE_HEAD, {
            "b_node": self.node_id, "b_seq": head_seq, "b_hash": head_hash,
            "n_seq": fields["seq"], "n_hash": fields["hash"]})
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            raise AuditError("the audit head moved while appending; nothing was recorded")
        self._expire_cached_head(session)
        event = AuditEvent(id=(result.inserted_primary_key or (None,))[0], **fields)
        if auto_checkpoint and self.signer is not None and self._checkpoint_due(session, event.seq):
            self._auto_checkpoint(session)
        return event

    def checkpoint(self, session: Session, actor: Actor) -> AuditCheckpoint:
        """Sign the current head with the audit key now, and record that it was done."""
        if self.signer is None:
            raise AuditError("no audit key configured for checkpoints")
        head_seq, head_hash = self._lock_head(session)
        if head_seq == 0:
            raise AuditError("the audit log is empty; nothing to checkpoint")
        if self.anchors is not None:
            self.anchors.check_not_behind(self.node_id, head_seq)
        when = utc_now()
        algorithm, signature = self.signer.sign(
            checkpoint_payload(self.node_id, head_seq, head_hash, when)
        )
        cp = AuditCheckpoint(
            node_id=self.node_id, seq=head_seq, head_hash=head_hash, time=when,
            key_label=self.signer.label, spki_sha256=self.signer.spki_sha256,
            algorithm=algorithm, signature=signature,
        )
        session.add(cp)
        session.flush()
        self.append(
            session, "audit.checkpoint", actor,
            object_ids={"checkpoint_seq": cp.seq, "key_label": cp.key_label},
            details={"head_hash": cp.head_hash, "algorithm": algorithm},
            auto_checkpoint=False,
        )
        if self.anchors is not None:
            self.anchors.after_commit(session, Checkpoint(
                cp.node_id, cp.seq, cp.head_hash, cp.time, cp.key_label, cp.spki_sha256,
                cp.algorithm, cp.signature))
        return cp

    def checkpoint_due(self, session: Session) -> bool:
        """Whether the configured frequency asks for a checkpoint now (``--if-needed``)."""
        head_seq, _ = self._lock_head(session)
        last = session.scalar(select(func.max(AuditCheckpoint.seq))
                              .where(AuditCheckpoint.node_id == self.node_id)) or 0
        # the newest checkpoint's own record is not news: nothing since, nothing to sign
        return head_seq > (last + 1 if last else 0) and self._checkpoint_due(session, head_seq)

    # -- internals --------------------------------------------------------

    def _lock_head(self, session: Session) -> tuple[int, str]:
        """The node's head (seq, hash), locked for this transaction, read from the database
        (never from the session's cache)."""
        params = {"b_node": self.node_id}
        head = session.execute(_LOCK_HEAD, params).first()
        if head is None:
            dialect = session.get_bind().dialect.name
            values = {"node_id": self.node_id, "seq": 0, "hash": GENESIS}
            if dialect == "postgresql":
                session.execute(
                    postgresql.insert(AuditHead).values(**values).on_conflict_do_nothing()
                )
            else:
                session.execute(sqlite.insert(AuditHead).values(**values).on_conflict_do_nothing())
            head = session.execute(_LOCK_HEAD, params).one()
        return int(head[0]), str(head[1])

    def _expire_cached_head(self, session: Session) -> None:
        """An ``AuditHead`` the session loaded earlier is stale now: reload it on next use."""
        cached = session.identity_map.get(session.identity_key(AuditHead, self.node_id))
        if cached is not None:
            session.expire(cached)

    def _checkpoint_due(self, session: Session, seq: int) -> bool:
        params = {"b_node": self.node_id}
        last = session.execute(_LAST_CHECKPOINT, params).first()
        last_seq = last[0] if last else 0
        if self.checkpoint_every and seq - last_seq >= self.checkpoint_every:
            return True
        if self.checkpoint_interval_seconds:
            # before the first checkpoint, the unsigned stretch starts at the node's first record
            since = last[1] if last is not None else session.scalar(_FIRST_EVENT_TIME, params)
            if since is not None:
                age = _time.time() - datetime.strptime(since, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
                return age >= self.checkpoint_interval_seconds
        return False

    def _auto_checkpoint(self, session: Session) -> None:
        """A due checkpoint is best effort: a token hiccup must not undo the audited change."""
        try:
            with session.begin_nested():
                self.checkpoint(session, Actor("appliance", "system"))
        except (ApplianceError, OSError) as exc:
            log.warning("automatic audit checkpoint failed; will retry on a later event",
                        extra={"fault": type(exc).__name__})


def count_events(session: Session, node_id: str | None = None) -> int:
    stmt = select(func.count()).select_from(AuditEvent)
    if node_id is not None:
        stmt = stmt.where(AuditEvent.node_id == node_id)
    return int(session.scalar(stmt) or 0)
