"""The pre-signer: every issued or revoked certificate has a fresh signed response ready.

* ``presign_one``: right after issuance (the pipeline calls it) and after a
  revocation (the revoke path calls it): sign, then store in one transaction.
* ``presign``: the batch (``appliance ocsp presign``, run by a timer): oldest
  first (no response at all, then by nextUpdate), only certificates that are
  issued or revoked and not expired for longer than ``ocsp.expired_grace``. One
  failure never aborts the batch; while the token is unavailable the batch backs
  off (doubling delays) and gives up on the rest after a bounded wait. Large
  batches are split by certificate id between processes (``ocsp.presign_processes``,
  both cores by default), each with its own token sessions and database engine.

Refresh rule (BR 4.9.10): with validity V and R = the refresh point after thisUpdate,
R = V/2 by default, and for V ≥ 16 h also R ≤ V - 8 h and R ≤ 4 days. ``--stale``
picks responses past R, missing ones, ones without a SHA-256 CertID variant, and
ones whose status no longer matches the certificate's.

A signed response is stored only if the certificate's status is still the one it
was signed for (re-read inside the writing transaction), so a slow "good" can
never overwrite the "revoked" a concurrent revocation just stored.
"""

from __future__ import annotations

import multiprocessing
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from appliance import config, durations, logs
from appliance.audit.log import Actor
from appliance.errors import HsmUnavailableError
from appliance.ocsp import cache
from appliance.ocsp.signer import (
    CertStatus,
    OcspSigner,
    OcspSigningError,
    SignedResponse,
    ocsp_status,
    validity_of,
)
from appliance.runtime import Appliance
from appliance.store.models import Certificate, OcspResponse

log = logs.get("ocsp.presign")

BATCH = 500
PARALLEL_MIN = 2000  # below this, one process: spawning another costs ~1 s
PROGRESS_INTERVAL = 0.5  # seconds between progress reports from the parallel workers

Progress = Callable[[int, int], None]
"""Told (candidates handled so far, candidates) after each chunk."""
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
BACKOFF_BUDGET = 120.0  # seconds a batch waits for the token before giving up on the rest

_signers: weakref.WeakKeyDictionary[Appliance, OcspSigner] = weakref.WeakKeyDictionary()


def signer_for(app: Appliance) -> OcspSigner:
    """This process's signer for ``app`` (its token keys are looked up once)."""
    found = _signers.get(app)
    if found is None:
        found = _signers[app] = OcspSigner(app)
    return found


def refresh_offset(validity: timedelta) -> timedelta:
    """How long after thisUpdate a response is re-signed (see the module docstring)."""
    offset = validity / 2
    if validity >= timedelta(hours=16):
        offset = min(offset, validity - timedelta(hours=8), timedelta(days=4))
    return offset


# -- one certificate --------------------------------------------------------------------------


def _status_of(row: Certificate) -> CertStatus | None:
    if row.status not in ("issued", "revoked"):
        return None
    return CertStatus(row.id, row.authority_id, row.serial_hex, row.status, row.revoked_at,
                      row.revocation_reason)


def presign_one(app: Appliance, certificate_id: int) -> SignedResponse | None:
    """Sign and store the responses for one certificate; None if it has no answer to give
    (reserved or failed). Raises on a token or database failure (the batch will retry)."""
    signer = signer_for(app)
    for _ in range(3):
        with app.db.sessions() as db:
            row = db.get(Certificate, certificate_id)
            cs = _status_of(row) if row is not None else None
        if cs is None:
            return None
        signed = signer.sign(cs)
        with app.db.transaction() as db:
            if store_signed(db, [signed], {cs.certificate_id: cs}) == 1:
                return signed
        log.info("certificate status changed while signing its OCSP response; signing again",
                 extra={"serial": cs.serial_hex})
    raise OcspSigningError(f"certificate {certificate_id}: status kept changing while signing")


def store_signed(db: Session, signed: Sequence[SignedResponse],
                 expected: dict[int, CertStatus]) -> int:
    """Upsert the responses whose certificate still has the status they were signed for."""
    if not signed:
        return 0
    ids = [s.certificate_id for s in signed]
    q = select(Certificate.id, Certificate.status).where(Certificate.id.in_(ids))
    if db.get_bind().dialect.name != "sqlite":  # SQLite: BEGIN IMMEDIATE already locks
        q = q.with_for_update()
    now_status = {cid: status for cid, status in db.execute(q)}
    rows = []
    for s in signed:
        if now_status.get(s.certificate_id) != expected[s.certificate_id].status:
            continue
        rows.append(row_values(s))
    if rows:
        db.execute(upsert_statement(db.get_bind().dialect.name), rows)
    return len(rows)


_ROW_FIELDS = ("certificate_id", "authority_id", "serial_hex", "status", "der", "der_sha256",
               "this_update", "next_update", "produced_at")
_UPSERTS: dict[str, Any] = {}


def row_values(signed: SignedResponse) -> dict[str, Any]:
    """The ``ocsp_responses`` row of a signed response (bound to ``upsert_statement``)."""
    return {f: getattr(signed, f) for f in _ROW_FIELDS}


def upsert_statement(dialect: str) -> Any:
    """INSERT ... ON CONFLICT (certificate_id) DO UPDATE of an ``ocsp_responses`` row, built
    once per dialect: building it costs more than running it. The caller must know the
    certificate still has the status the response was signed for (``store_signed`` checks;
    the issuance pipeline writes in the transaction that sets it)."""
    stmt = _UPSERTS.get(dialect)
    if stmt is None:
        from sqlalchemy.dialects import postgresql, sqlite

        ins: Any = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(OcspResponse)
        stmt = _UPSERTS[dialect] = ins.on_conflict_do_update(
            index_elements=[OcspResponse.certificate_id],
            set_={c: getattr(ins.excluded, c) for c in _ROW_FIELDS[1:]})
    return stmt


# -- the batch --------------------------------------------------------------------------------


@dataclass
class BatchResult:
    candidates: int = 0
    signed: int = 0  # certificates whose responses were signed and stored
    failed: int = 0  # signing or storing failed (logged)
    skipped: int = 0  # status changed meanwhile (signed again next time), or not answerable
    not_attempted: int = 0  # left when the token stayed unavailable
    seconds: float = 0.0
    processes: int = 1

    def add(self, other: BatchResult) -> None:
        for k in ("signed", "failed", "skipped", "not_attempted"):
            setattr(self, k, getattr(self, k) + getattr(other, k))

    @property
    def rate(self) -> float:
        return self.signed / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "per_second": round(self.rate, 1)}


def candidates(app: Appliance, *, stale_only: bool, now: datetime | None = None) -> list[int]:
    """Certificate ids to (re-)sign, oldest response first (missing ones before all)."""
    now = now or datetime.now(UTC)
    cfg = app.settings.config.ocsp
    validity = validity_of(app)
    offset = refresh_offset(validity)
    grace = timedelta(seconds=durations.parse(cfg.expired_grace))
    q = (select(Certificate.id)
         .outerjoin(OcspResponse, OcspResponse.certificate_id == Certificate.id)
         .where(Certificate.status.in_(("issued", "revoked")),
                Certificate.not_after > now - grace))
    if stale_only:
        q = q.where(or_(
            OcspResponse.certificate_id.is_(None),
            OcspResponse.next_update <= now + (validity - offset),
            OcspResponse.this_update <= now - offset,
            OcspResponse.der_sha256.is_(None),
            and_(Certificate.status == "issued", OcspResponse.status != "good"),
            and_(Certificate.status == "revoked", OcspResponse.status != "revoked"),
        ))
    q = q.order_by(OcspResponse.next_update.is_(None).desc(), OcspResponse.next_update.asc(),
                   Certificate.id)
    with app.db.sessions() as db:
        return list(db.scalars(q).all())


def _chunks(ids: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for i in range(0, len(ids), size):
        yield ids[i:i + size]


def _read_chunk(app: Appliance, chunk: Sequence[int]
                ) -> tuple[dict[int, CertStatus], dict[int, str]]:
    """The chunk's certificate statuses (columns only: no ORM objects, no DER) and the
    status of the responses they have now."""
    with app.db.sessions() as db:
        rows = db.execute(select(
            Certificate.id, Certificate.authority_id, Certificate.serial_hex,
            Certificate.status, Certificate.revoked_at, Certificate.revocation_reason,
        ).where(Certificate.id.in_(chunk))).all()
        have = {cid: status for cid, status in db.execute(
            select(OcspResponse.certificate_id, OcspResponse.status)
            .where(OcspResponse.certificate_id.in_(chunk)))}
    statuses = {r[0]: CertStatus(*r) for r in rows if r[3] in ("issued", "revoked")}
    return statuses, have


class _Writer:
    """Stores signed chunks in a thread of its own, one chunk at a time, while the caller
    signs the next: SQLite's write lock (shared with the other pre-signing process) and
    its busy-wait then never stall the token. At most one chunk waits (bounded memory);
    the status re-check of :func:`store_signed` runs inside each write transaction, so
    what is stored is exactly what a synchronous write would store."""

    def __init__(self, app: Appliance) -> None:
        self.app = app
        self.result = BatchResult()  # its own counters (threads); merged by the caller
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="presign-writer")
        self.inflight: Future[None] | None = None

    def _store(self, signed: list[SignedResponse], statuses: dict[int, CertStatus]) -> None:
        try:
            with self.app.db.transaction() as db:
                stored = store_signed(db, signed, statuses)
            self.result.signed += stored
            self.result.skipped += len(signed) - stored
        except Exception:
            log.exception("storing OCSP responses failed", extra={"count": len(signed)})
            self.result.failed += len(signed)

    def submit(self, signed: list[SignedResponse], statuses: dict[int, CertStatus]) -> None:
        self.wait()
        self.inflight = self.pool.submit(self._store, signed, statuses)

    def wait(self) -> None:
        if self.inflight is not None:
            self.inflight.result()  # _store never raises
            self.inflight = None

    def close(self) -> None:
        self.wait()
        self.pool.shutdown()


def process_ids(app: Appliance, ids: Sequence[int], *, batch: int = BATCH,
                backoff: tuple[float, float, float] = (BACKOFF_FIRST, BACKOFF_MAX,
                                                       BACKOFF_BUDGET),
                progress: Callable[[int], None] | None = None) -> BatchResult:
    """Sign and store responses for ``ids`` in this process, ``batch`` per transaction;
    ``progress`` is told how many candidates each chunk handled."""
    first, most, budget = backoff
    result = BatchResult(candidates=len(ids))
    signer = signer_for(app)
    waited = 0.0
    mismatched = 0
    writer = _Writer(app)
    gave_up = False
    try:
        for chunk in _chunks(ids, batch):
            statuses, have = _read_chunk(app, chunk)
            signed: list[SignedResponse] = []
            for cid in chunk:
                cs = statuses.get(cid)
                if cs is None:
                    result.skipped += 1
                    continue
                if cid in have and have[cid] != ocsp_status(cs.status):
                    mismatched += 1
                delay = first
                while True:
                    try:
                        signed.append(signer.sign(cs))
                        break
                    except HsmUnavailableError as exc:
                        if waited + delay > budget:
                            log.error("token still unavailable; the rest of this batch waits "
                                      "for the next run", extra={
                                          "waited_seconds": round(waited, 1),
                                          "fault": str(exc)[:200]})
                            gave_up = True
                            break
                        log.warning("token unavailable; backing off",
                                    extra={"delay_seconds": delay, "serial": cs.serial_hex})
                        time.sleep(delay)
                        waited += delay
                        delay = min(delay * 2, most)
                    except Exception:
                        log.exception("signing an OCSP response failed",
                                      extra={"serial": cs.serial_hex})
                        result.failed += 1
                        break
                if gave_up:
                    break
            if signed:
                writer.submit(signed, statuses)
            if gave_up:
                break
            if progress is not None:
                progress(len(chunk))
    finally:
        writer.close()
    result.add(writer.result)
    if gave_up:
        result.not_attempted = len(ids) - result.signed - result.failed - result.skipped
    if mismatched:
        # Responses that said something else than the status store were just replaced:
        # make every responder re-read (cheap: one epoch bump per slot).
        cache.everything_changed(app)
    return result


_handled: Any = None  # in a worker: the shared count of candidates handled (for progress)


def _init_worker(counter: Any) -> None:
    global _handled
    _handled = counter


def _count(n: int) -> None:
    with _handled.get_lock():
        _handled.value += n


def _worker(config_path: str, ids: list[int], batch: int,
            backoff: tuple[float, float, float]) -> dict[str, Any]:
    settings = config.load(Path(config_path))
    logs.configure(settings.config.logging.level)
    app = Appliance(settings)
    try:
        return asdict(process_ids(app, ids, batch=batch, backoff=backoff,
                                  progress=_count if _handled is not None else None))
    finally:
        app.close()


def presign(app: Appliance, *, stale_only: bool, batch: int = BATCH,
            processes: int | None = None, actor: Actor | None = None,
            backoff: tuple[float, float, float] = (BACKOFF_FIRST, BACKOFF_MAX, BACKOFF_BUDGET),
            progress: Progress | None = None) -> BatchResult:
    """The batch: pick, sign (in parallel when large), store, audit. ``progress`` is told
    (handled, candidates) once the candidates are known, then as chunks are done."""
    started = time.perf_counter()
    ids = candidates(app, stale_only=stale_only)
    total = len(ids)
    if progress is not None:
        progress(0, total)
    wanted = processes or app.settings.config.ocsp.presign_processes
    nproc = min(wanted, max(1, len(ids) // (PARALLEL_MIN // 2)))
    if nproc > 1 and app.settings.path is not None and len(ids) >= PARALLEL_MIN:
        parts = [[i for i in ids if i % nproc == k] for k in range(nproc)]
        ctx = multiprocessing.get_context("spawn")
        counter = ctx.Value("q", 0)
        with ctx.Pool(nproc, initializer=_init_worker, initargs=(counter,)) as pool:
            pending = pool.starmap_async(_worker, [(str(app.settings.path), part, batch,
                                                    backoff) for part in parts])
            while not pending.ready():
                pending.wait(PROGRESS_INTERVAL)
                if progress is not None:
                    progress(min(int(counter.value), total), total)
            outs = pending.get()
        result = BatchResult(candidates=len(ids), processes=nproc)
        for out in outs:
            result.add(BatchResult(**out))
    else:
        handled = 0

        def step(n: int) -> None:
            nonlocal handled
            handled += n
            if progress is not None:
                progress(handled, total)

        result = process_ids(app, ids, batch=batch, backoff=backoff, progress=step)
    result.candidates = len(ids)
    result.seconds = round(time.perf_counter() - started, 3)
    with app.db.transaction() as db:
        app.audit_log().append(
            db, "ocsp.presign", actor or Actor("system:ocsp-presign", "system"),
            outcome="success" if not (result.failed or result.not_attempted) else "failure",
            details={"mode": "stale" if stale_only else "all", **result.as_dict()})
    log.info("OCSP pre-signing batch done", extra=result.as_dict())
    return result
