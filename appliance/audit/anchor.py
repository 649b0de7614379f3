"""Anchors: every checkpoint written again where the database's attacker cannot roll it back.

A database file can be rewritten wholesale: delete the newest checkpoints and
every record after an older one, fix the head, and the chain and its remaining
checkpoints still verify. So each checkpoint is also written, once its
transaction has committed,

- into a data object in the token (``audit-anchor-<node>``), overwritten at
  every checkpoint and never moved backwards: the token is the monotonic
  witness of how far the log had got;
- to an append-only stream: a line in a file opened ``O_APPEND`` (make it
  ``chattr +a`` or ship it off the host) and to syslog/journald.

An anchor line is the whole checkpoint with its signature, so an auditor's copy
verifies an exported log with no database and no token, and a line appended by
someone without the audit key is itself a finding.

After commit, not before: an anchor must only ever witness committed state, or
a crash between the two would look like a rollback. A crash after commit leaves
the token behind by one checkpoint: less protection for a moment, never a false
alarm. What remains is the trust boundary documented in README: whoever holds
the audit key's PIN can re-sign a rewritten log and the token's object too;
only the anchor stream, if they cannot write it, still shows the rewrite.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import logging.handlers
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from appliance import logs
from appliance.audit.record import canonical
from appliance.errors import AuditError
from appliance.hsm import dataobj
from appliance.hsm.pool import SessionPool

log = logs.get("audit.anchor")
TOKEN_PREFIX = "audit-anchor-"  # noqa: S105  (a label, not a secret)
LINE_TYPE = "appliance-audit-anchor"
MAX_LINE = 8 * 1024
MAX_LINES = 10_000_000
SYSLOG_ADDRESS = "/dev/log"
_PENDING = "appliance_audit_anchors"


@dataclass(frozen=True)
class Checkpoint:
    node_id: str
    seq: int
    head_hash: str
    time: str
    key_label: str
    spki_sha256: str
    algorithm: str
    signature: bytes

    def line(self) -> str:
        """The checkpoint as one canonical JSON line (anchor file, token object, export)."""
        return canonical({
            "v": 1, "type": LINE_TYPE, "node_id": self.node_id, "seq": self.seq,
            "head_hash": self.head_hash, "time": self.time, "key_label": self.key_label,
            "spki_sha256": self.spki_sha256, "algorithm": self.algorithm,
            "signature": base64.b64encode(self.signature).decode(),
        })

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        if len(text) > MAX_LINE:
            raise ValueError(f"longer than {MAX_LINE} characters")
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("type") != LINE_TYPE or doc.get("v") != 1:
            raise ValueError("not an audit anchor")
        strings = ("node_id", "head_hash", "time", "key_label", "spki_sha256", "algorithm",
                   "signature")
        for name in strings:
            if not isinstance(doc.get(name), str):
                raise ValueError(f"{name} is missing or not a string")
        seq = doc.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise ValueError("seq is not a positive integer")
        try:
            sig = base64.b64decode(doc["signature"], validate=True)
        except binascii.Error:
            raise ValueError("signature is not base64") from None
        return cls(doc["node_id"], seq, doc["head_hash"], doc["time"], doc["key_label"],
                   doc["spki_sha256"], doc["algorithm"], sig)


@dataclass(frozen=True)
class Anchor:
    """A checkpoint as a witness outside the database holds it; ``source`` names the witness."""

    checkpoint: Checkpoint
    source: str

    @property
    def node_id(self) -> str:
        return self.checkpoint.node_id

    @property
    def seq(self) -> int:
        return self.checkpoint.seq

    @property
    def head_hash(self) -> str:
        return self.checkpoint.head_hash

    @property
    def time(self) -> str:
        return self.checkpoint.time


def token_label(node_id: str) -> str:
    return TOKEN_PREFIX + node_id


def read_token(pool: SessionPool) -> list[Anchor]:
    """The newest checkpoint of every node the token witnesses."""
    out = []
    for label, values in sorted(dataobj.read_prefixed(pool, TOKEN_PREFIX).items()):
        cp = _newest(label, values)
        if cp is not None:
            if token_label(cp.node_id) != label:
                raise AuditError(f"the token's anchor {label!r} names node {cp.node_id!r}")
            out.append(Anchor(cp, f"token anchor {label}"))
    return out


def _newest(label: str, values: list[bytes]) -> Checkpoint | None:
    """Of the objects under one label (two only after an interrupted replace), the newest."""
    cps = []
    for value in values:
        try:
            cps.append(Checkpoint.parse(value.decode("utf-8")))
        except (UnicodeDecodeError, ValueError) as exc:
            raise AuditError(f"the token's anchor {label!r} is unreadable: {exc}") from None
    return max(cps, key=lambda c: c.seq, default=None)


def read_file(path: Path) -> list[Anchor]:
    """Every checkpoint an anchor file lists (later lines for the same checkpoint repeat it)."""
    return list(_read_lines(path))


def _read_lines(path: Path) -> Iterator[Anchor]:
    try:
        f = path.open(encoding="utf-8")
    except OSError as exc:
        raise AuditError(f"cannot read the anchor file {path}: {exc.strerror}") from None
    with f:
        for number, line in enumerate(f, 1):
            if number > MAX_LINES:
                raise AuditError(f"{path} has more than {MAX_LINES} lines")
            if not line.strip():
                continue
            try:
                cp = Checkpoint.parse(line)
            except ValueError as exc:
                raise AuditError(f"line {number} of the anchor file {path}: {exc}") from None
            yield Anchor(cp, f"anchor file {path.name} (line {number})")


def unique(anchors: Iterable[Anchor]) -> list[Anchor]:
    """One anchor per (node, sequence, line): a file may repeat a checkpoint harmlessly."""
    seen: dict[tuple[str, int, str], Anchor] = {}
    for a in anchors:
        seen.setdefault((a.node_id, a.seq, a.checkpoint.line()), a)
    return list(seen.values())


class AnchorWriter:
    """Writes each committed checkpoint to the configured witnesses."""

    def __init__(self, pool: SessionPool | None, file: Path | None, syslog: bool) -> None:
        self.pool = pool
        self.file = file
        self.syslog = _syslog_logger() if syslog else None

    def check_not_behind(self, node_id: str, head_seq: int) -> None:
        """Refuse to checkpoint a head older than the token's anchor: the database was
        rolled back, and signing its head would bless the rollback."""
        if self.pool is None:
            return
        label = token_label(node_id)
        anchored = _newest(label, dataobj.read(self.pool, label))
        if anchored is None:
            return
        if anchored.seq >= head_seq:
            raise AuditError(
                f"the token's audit anchor is at record {anchored.seq} of {node_id} but the "
                f"log's head is at record {head_seq}: the database was rolled back; no "
                "checkpoint is signed (see appliance audit verify)")

    def after_commit(self, session: Session, cp: Checkpoint) -> None:
        """Write ``cp`` once the session's outermost transaction commits; forget it if the
        transaction (or the savepoint) it was made in rolls back."""
        if _PENDING not in session.info:
            session.info[_PENDING] = []
            event.listen(session, "after_commit", self._flush)
            event.listen(session, "after_soft_rollback", _forget)
            event.listen(session, "after_transaction_end", _end)
        made_in = session.get_nested_transaction() or session.get_transaction()
        session.info[_PENDING].append((made_in, cp))

    def write(self, cp: Checkpoint) -> None:
        """Every witness in turn; one that fails is logged and does not stop the others."""
        line = cp.line()
        if self.pool is not None:
            try:
                self._write_token(cp, line)
            except Exception as exc:  # the commit stands; verify shows the lag
                log.error("audit anchor not written to the token",
                          extra={"fault": type(exc).__name__, "seq": cp.seq})
        if self.file is not None:
            try:
                append_line(self.file, line)
            except OSError as exc:
                log.error("audit anchor not appended to the anchor file",
                          extra={"fault": type(exc).__name__, "path": str(self.file)})
        if self.syslog is not None:
            self.syslog.info("%s %s", LINE_TYPE, line)

    def _write_token(self, cp: Checkpoint, line: str) -> None:
        assert self.pool is not None
        label = token_label(cp.node_id)
        try:
            current = _newest(label, dataobj.read(self.pool, label))
        except AuditError:
            current = None  # unreadable: replaced by a good one (verify reported it)
        if current is not None and current.seq >= cp.seq:
            return  # the witness never moves backwards
        dataobj.replace(self.pool, label, line.encode("utf-8"))

    def _flush(self, session: Session) -> None:
        if session.get_nested_transaction() is not None:
            return  # a savepoint was released (SQLAlchemy calls after_commit for those too)
        pending: list[tuple[Any, Checkpoint]] = session.info.get(_PENDING, [])
        session.info[_PENDING] = []
        for _, cp in pending:
            self.write(cp)


def _forget(session: Session, rolled_back: Any) -> None:
    def inside(trans: Any) -> bool:
        while trans is not None:
            if trans is rolled_back:
                return True
            trans = trans.parent
        return False

    session.info[_PENDING] = [(t, cp) for t, cp in session.info.get(_PENDING, [])
                              if not inside(t)]


def _end(session: Session, transaction: Any) -> None:
    if transaction.parent is None:  # the outermost: whatever was not written is void
        session.info[_PENDING] = []


def append_line(path: Path, line: str) -> None:
    """Append one line with O_APPEND (an append-only file accepts nothing else), durably."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, (line + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _syslog_logger() -> logging.Logger | None:
    """A logger to syslog/journald, or None on a host without /dev/log."""
    logger = logging.getLogger(f"appliance.audit.anchor.syslog:{SYSLOG_ADDRESS}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        if not os.path.exists(SYSLOG_ADDRESS):
            return None
        try:
            handler = logging.handlers.SysLogHandler(
                address=SYSLOG_ADDRESS, facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV)
        except OSError:
            return None
        handler.ident = "appliance-audit: "
        logger.addHandler(handler)
    return logger


def as_dict(a: Anchor) -> dict[str, Any]:
    return {"node_id": a.node_id, "seq": a.seq, "head_hash": a.head_hash, "time": a.time,
            "source": a.source}
