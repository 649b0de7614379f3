"""The tamper-evident audit log, on SQLite and PostgreSQL, with checkpoints signed by token keys.

Nothing is mocked: records go to a real database through the ``db`` fixture (one
fresh database per test and backend), checkpoints are signed by keys in a real
SoftHSM token. Tampering is done the way an attacker with database admin rights
would do it: first remove the append-only triggers, then rewrite rows with SQL.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from appliance.audit.anchor import (
    AnchorWriter,
    Checkpoint,
    read_file,
    read_token,
    token_label,
    unique,
)
from appliance.audit.export import export_jsonl, parse_since
from appliance.audit.log import Actor, AuditLog, count_events
from appliance.audit.record import (
    GENESIS,
    MAX_DETAILS_BYTES,
    canonical,
    checkpoint_payload,
    record_hash,
)
from appliance.audit.signer import CheckpointSigner
from appliance.audit.verify import Report, verify
from appliance.errors import AuditError, DatabaseError
from appliance.hsm import dataobj
from appliance.hsm.keys import KeyInfo, destroy_keypair, generate_keypair
from appliance.hsm.pool import SessionPool
from appliance.hsm.signer import TokenPrivateKey, token_private_key
from appliance.store.db import Database
from appliance.store.models import AuditCheckpoint, AuditEvent, AuditHead, HsmKey
from tests.conftest import unique_label

NODE = "node-a"
ALICE = Actor("alice", "operator")
SYSTEM = Actor("appliance", "system")
HASHED = ("node_id", "seq", "time", "actor", "role", "event_type", "outcome",
          "object_ids", "details", "prev_hash")


# -- keys (one per module: token key generation is the slow part) -------------------


@pytest.fixture(scope="module")
def ec_key(pool: SessionPool) -> Iterator[tuple[KeyInfo, TokenPrivateKey]]:
    info = generate_keypair(pool, unique_label("audit-ec"), "ec-p256")
    yield info, token_private_key(pool, info)
    destroy_keypair(pool, info)


@pytest.fixture(scope="module")
def rsa_key(pool: SessionPool) -> Iterator[tuple[KeyInfo, TokenPrivateKey]]:
    info = generate_keypair(pool, unique_label("audit-rsa"), "rsa-2048")
    yield info, token_private_key(pool, info)
    destroy_keypair(pool, info)


@pytest.fixture
def signer(ec_key: tuple[KeyInfo, TokenPrivateKey]) -> CheckpointSigner:
    return CheckpointSigner(ec_key[1])


@pytest.fixture
def public_key(ec_key: tuple[KeyInfo, TokenPrivateKey]) -> ec.EllipticCurvePublicKey:
    pub = ec_key[0].public_key
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    return pub


# -- helpers ---------------------------------------------------------------------------


def append_events(db: Database, log: AuditLog, n: int, *, start: int = 0,
                  per_transaction: bool = False) -> None:
    def one(s, i):  # type: ignore[no-untyped-def]
        log.append(s, "test.event", ALICE, object_ids={"i": i},
                   details={"n": i, "note": f"événement {i}"})

    if per_transaction:
        for i in range(start, start + n):
            with db.transaction() as s:
                one(s, i)
    else:
        with db.transaction() as s:
            for i in range(start, start + n):
                one(s, i)


def records(db: Database, node: str = NODE) -> list[AuditEvent]:
    with db.transaction() as s:
        return list(s.scalars(
            select(AuditEvent).where(AuditEvent.node_id == node).order_by(AuditEvent.seq)
        ))


def head_of(db: Database, node: str = NODE) -> tuple[int, str] | None:
    with db.transaction() as s:
        head = s.get(AuditHead, node)
        return None if head is None else (head.seq, head.hash)


def checkpoints(db: Database) -> list[AuditCheckpoint]:
    with db.transaction() as s:
        return list(s.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq)))


def check(db: Database, key: object) -> Report:
    with db.transaction() as s:
        return verify(s, key)  # type: ignore[arg-type]


def fields_of(rec: AuditEvent) -> dict[str, object]:
    return {name: getattr(rec, name) for name in HASHED}


def remove_guards(db: Database) -> None:
    """What an attacker with admin rights on the database does first."""
    with db.transaction() as s:
        if db.dialect == "sqlite":
            for stmt in ("DROP TRIGGER audit_events_no_update",
                         "DROP TRIGGER audit_events_no_delete",
                         "DROP TRIGGER audit_checkpoints_no_update",
                         "DROP TRIGGER audit_checkpoints_no_delete"):
                s.execute(text(stmt))
        else:
            s.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
            s.execute(text("ALTER TABLE audit_checkpoints DISABLE TRIGGER USER"))


def sql(db: Database, stmt: str, **params: object) -> int:
    """Run one raw statement in its own transaction; returns the number of rows it touched."""
    with db.transaction() as s:
        return s.execute(text(stmt), params).rowcount  # type: ignore[attr-defined, no-any-return]


def set_head(db: Database, seq: int, hash_: str, node: str = NODE) -> None:
    assert sql(db, "UPDATE audit_heads SET seq = :seq, hash = :hash WHERE node_id = :n",
               seq=seq, hash=hash_, n=node) == 1


def rechain(db: Database, from_seq: int, node: str = NODE) -> None:
    """Re-hash and re-link every record from ``from_seq`` on, and move the head to match,
    as a careful attacker would after rewriting a record: the chain alone then looks fine."""
    with db.transaction() as s:
        recs = list(s.scalars(
            select(AuditEvent).where(AuditEvent.node_id == node).order_by(AuditEvent.seq)
        ))
        prev = GENESIS
        for rec in recs:
            if rec.seq >= from_seq:
                rec.prev_hash = prev
                rec.hash = record_hash(fields_of(rec))
            prev = rec.hash
        s.flush()
        head = s.get(AuditHead, node)
        assert head is not None
        head.seq, head.hash = recs[-1].seq, recs[-1].hash


def problems(report: Report) -> list[tuple[str, int | None]]:
    return [(p.kind, p.seq) for p in report.problems]


# -- 1. a good chain, and its export ---------------------------------------------------------


def test_chain_verifies_and_export_recomputes_outside(db: Database) -> None:
    log = AuditLog(NODE)
    n = 12
    append_events(db, log, n, per_transaction=True)

    recs = records(db)
    assert [r.seq for r in recs] == list(range(1, n + 1))
    assert recs[0].prev_hash == "0" * 64
    for before, after in itertools.pairwise(recs):
        assert after.prev_hash == before.hash
        assert after.hash != before.hash
    for rec in recs:
        assert rec.hash == record_hash(fields_of(rec))
    assert head_of(db) == (n, recs[-1].hash)

    report = check(db, None)
    assert report.ok, report.problems
    assert report.records == n and report.nodes == [NODE] and report.checkpoints == 0

    # the export carries everything an auditor needs to re-check the chain without our code
    with db.transaction() as s:
        lines = list(export_jsonl(s))
    assert len(lines) == n
    prev = "0" * 64
    for i, line in enumerate(lines, start=1):
        item = json.loads(line)
        assert item["seq"] == i
        assert item["prev_hash"] == prev
        assert item["details"]["n"] == i - 1 and item["object_ids"] == {"i": i - 1}
        # from the verbatim JSON text...
        body = {**item, "object_ids": item["object_ids_json"], "details": item["details_json"]}
        assert record_hash(body) == item["hash"]
        # ...and independently, by canonical JSON + SHA-256 re-derived from the parsed values
        body = {k: item[k] for k in HASHED}
        body["object_ids"] = canonical(item["object_ids"])
        body["details"] = canonical(item["details"])
        digest = hashlib.sha256(
            json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            .encode()
        ).hexdigest()
        assert digest == item["hash"]
        prev = item["hash"]

    # --since keeps only the records at or after the instant
    cut = recs[7].time  # the 8th record's own time: records 8..n
    since = parse_since(cut.replace("Z", "+00:00"))
    assert since == cut
    with db.transaction() as s:
        later = [json.loads(x) for x in export_jsonl(s, since=since)]
    assert [x["seq"] for x in later] == [r.seq for r in recs if r.time >= cut]
    assert later and later[0]["seq"] >= 2 and later[-1]["seq"] == n
    assert all(x["time"] >= cut for x in later)

    # a strictly later instant (naive = UTC) drops everything; an earlier one keeps all
    future = datetime.now(UTC).replace(tzinfo=None).isoformat()
    with db.transaction() as s:
        assert list(export_jsonl(s, since=parse_since(future))) == []
        assert len(list(export_jsonl(s, since=parse_since("2000-01-01T00:00:00Z")))) == n
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_since("yesterday")


def test_export_filters_by_node(db: Database) -> None:
    append_events(db, AuditLog("node-a"), 3)
    append_events(db, AuditLog("node-b"), 2)
    with db.transaction() as s:
        b = [json.loads(x) for x in export_jsonl(s, node_id="node-b")]
        both = list(export_jsonl(s))
    assert [(x["node_id"], x["seq"]) for x in b] == [("node-b", 1), ("node-b", 2)]
    assert len(both) == 5
    report = check(db, None)
    assert report.ok and report.nodes == ["node-a", "node-b"] and report.records == 5


# -- append-only guards ----------------------------------------------------------------------


def test_database_refuses_update_and_delete(db: Database, signer: CheckpointSigner) -> None:
    log = AuditLog(NODE, signer)
    append_events(db, log, 3)
    with db.transaction() as s:
        log.checkpoint(s, SYSTEM)
    before = records(db)
    cp_before = checkpoints(db)
    assert len(before) == 4 and len(cp_before) == 1

    for stmt in ("UPDATE audit_events SET details = '{}' WHERE seq = 2",
                 "DELETE FROM audit_events WHERE seq = 2",
                 "UPDATE audit_checkpoints SET seq = 99",
                 "DELETE FROM audit_checkpoints"):
        with pytest.raises((DBAPIError, DatabaseError), match="append-only"):
            sql(db, stmt)

    after = records(db)
    assert [(r.id, r.seq, r.details, r.hash) for r in after] == [
        (r.id, r.seq, r.details, r.hash) for r in before
    ]
    assert [(c.seq, c.signature) for c in checkpoints(db)] == [
        (c.seq, c.signature) for c in cp_before
    ]


# -- 2. tampering ------------------------------------------------------------------------------


def test_edited_record_is_named(db: Database) -> None:
    append_events(db, AuditLog(NODE), 10)
    remove_guards(db)
    k = 5
    target = records(db)[k - 1]
    assert sql(db, "UPDATE audit_events SET details = :d WHERE node_id = :n AND seq = :s",
               d=canonical({"n": 4, "note": "nothing to see"}), n=NODE, s=k) == 1

    report = check(db, None)
    assert not report.ok
    assert problems(report) == [("edited", k)]
    assert report.problems[0].record_id == target.id and report.problems[0].node_id == NODE


def test_deleted_record_is_named(db: Database) -> None:
    append_events(db, AuditLog(NODE), 10)
    remove_guards(db)
    k = 4
    follower = records(db)[k]
    assert follower.seq == k + 1
    assert sql(db, "DELETE FROM audit_events WHERE node_id = :n AND seq = :s", n=NODE, s=k) == 1

    report = check(db, None)
    assert problems(report) == [("missing", k + 1)]
    assert report.problems[0].record_id == follower.id
    assert f"{k}..{k}" in report.problems[0].message


@pytest.mark.parametrize("rehash_shifted", [False, True], ids=["plain", "rehashed"])
def test_inserted_record_is_caught(db: Database, rehash_shifted: bool) -> None:
    append_events(db, AuditLog(NODE), 10)
    remove_guards(db)
    k = 6
    before = records(db)
    # make room at k without tripping the unique (node, seq) constraint: via negative seqs
    assert sql(db, "UPDATE audit_events SET seq = -(seq + 1) WHERE node_id = :n AND seq >= :k",
               n=NODE, k=k) == 10 - k + 1
    assert sql(db, "UPDATE audit_events SET seq = -seq WHERE node_id = :n AND seq < 0",
               n=NODE) == 10 - k + 1
    forged = {
        "node_id": NODE, "seq": k, "time": before[k - 2].time, "actor": "mallory",
        "role": "operator", "event_type": "test.event", "outcome": "success",
        "object_ids": canonical({"i": 999}), "details": canonical({"alibi": True}),
        "prev_hash": before[k - 2].hash,
    }
    forged["hash"] = record_hash(forged)
    with db.transaction() as s:
        s.add(AuditEvent(**forged))
    if rehash_shifted:
        # a more careful attacker: every shifted record gets a correct hash for its new seq
        with db.transaction() as s:
            for rec in s.scalars(select(AuditEvent).where(AuditEvent.seq > k)):
                rec.hash = record_hash(fields_of(rec))
    recs = records(db)
    set_head(db, 11, recs[-1].hash)  # the head follows the shifted end, like the rows

    recs = records(db)
    if rehash_shifted:
        assert all(r.hash == record_hash(fields_of(r)) for r in recs)
    assert [r.seq for r in recs] == list(range(1, 12))
    assert recs[k - 1].actor == "mallory" and recs[k - 1].prev_hash == recs[k - 2].hash

    report = check(db, None)
    assert not report.ok
    first = report.problems[0]
    assert first.kind == ("chain" if rehash_shifted else "edited")
    assert first.seq is not None and first.seq >= k
    assert first.seq == k + 1 and first.record_id == before[k - 1].id  # the first shifted one


def test_reordered_records_are_caught(db: Database) -> None:
    append_events(db, AuditLog(NODE), 8)
    remove_guards(db)
    k = 3
    before = records(db)
    assert sql(db, "UPDATE audit_events SET seq = -1 WHERE node_id = :n AND seq = :s",
               n=NODE, s=k) == 1
    assert sql(db, "UPDATE audit_events SET seq = :a WHERE node_id = :n AND seq = :b",
               n=NODE, a=k, b=k + 1) == 1
    assert sql(db, "UPDATE audit_events SET seq = :a WHERE node_id = :n AND seq = -1",
               n=NODE, a=k + 1) == 1
    after = records(db)
    assert after[k - 1].id == before[k].id and after[k].id == before[k - 1].id

    report = check(db, None)
    assert not report.ok
    first = report.problems[0]
    assert first.kind in ("edited", "chain", "out_of_order")
    assert first.seq in (k, k + 1)


def test_reordered_content_is_caught(db: Database) -> None:
    """Swap the whole content (hashes too) of two adjacent records, keeping seqs in place."""
    append_events(db, AuditLog(NODE), 8)
    remove_guards(db)
    k = 5
    a, b = records(db)[k - 1], records(db)[k]
    for target, source in ((a, b), (b, a)):
        assert sql(db, "UPDATE audit_events SET object_ids = :o, details = :d, time = :t, "
                       "prev_hash = :p, hash = :h WHERE id = :id",
                   o=source.object_ids, d=source.details, t=source.time,
                   p=source.prev_hash, h=source.hash, id=target.id) == 1
    report = check(db, None)
    assert not report.ok
    assert report.problems[0].kind in ("edited", "chain")
    assert report.problems[0].seq in (k, k + 1)


def test_missing_head_row_is_reported(db: Database) -> None:
    """audit_heads is not append-only (it moves on every append), so anyone who can write to
    the database can delete a node's head row; verify must not call that log intact."""
    append_events(db, AuditLog(NODE), 4)
    assert check(db, None).ok
    assert sql(db, "DELETE FROM audit_heads WHERE node_id = :n", n=NODE) == 1
    report = check(db, None)
    assert [p.kind for p in report.problems] == ["head"]
    assert report.problems[0].node_id == NODE


def test_head_behind_the_log_is_reported(db: Database) -> None:
    append_events(db, AuditLog(NODE), 4)
    set_head(db, 3, records(db)[2].hash)
    assert problems(check(db, None)) == [("head", 3)]


def test_careful_truncation_is_caught_by_checkpoint(
    db: Database, signer: CheckpointSigner, public_key: ec.EllipticCurvePublicKey
) -> None:
    log = AuditLog(NODE, signer)
    append_events(db, log, 10)
    with db.transaction() as s:
        cp = log.checkpoint(s, SYSTEM)
    assert cp.seq == 10
    append_events(db, log, 2, start=10)  # records 12, 13 (11 is the checkpoint's own record)
    assert check(db, public_key).ok

    remove_guards(db)
    keep = 7
    assert sql(db, "DELETE FROM audit_events WHERE node_id = :n AND seq > :k",
               n=NODE, k=keep) == 13 - keep
    set_head(db, keep, records(db)[-1].hash)
    assert head_of(db) == (keep, records(db)[-1].hash)

    report = check(db, public_key)
    assert problems(report) == [("truncated", 10)]
    assert report.records == keep


def test_forged_checkpoint_signature_is_caught(
    db: Database, signer: CheckpointSigner, public_key: ec.EllipticCurvePublicKey
) -> None:
    log = AuditLog(NODE, signer)
    append_events(db, log, 5)
    with db.transaction() as s:
        log.checkpoint(s, SYSTEM)
    assert check(db, public_key).ok

    # verified with another key: not the audit key's signature
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    assert problems(check(db, other)) == [("checkpoint_signature", 5)]

    # one flipped bit in the stored signature
    remove_guards(db)
    good = checkpoints(db)[0].signature
    bad = good[:-1] + bytes([good[-1] ^ 1])
    assert sql(db, "UPDATE audit_checkpoints SET signature = :sig WHERE seq = 5", sig=bad) == 1
    assert problems(check(db, public_key)) == [("checkpoint_signature", 5)]

    # a checkpoint forged by someone without the token key, claiming to be by it
    append_events(db, log, 2, start=5)  # records 7, 8
    last = records(db)[-1]
    mallory = ec.generate_private_key(ec.SECP256R1())
    when = last.time
    sig = mallory.sign(checkpoint_payload(NODE, last.seq, last.hash, when),
                       ec.ECDSA(hashes.SHA256()))
    with db.transaction() as s:
        s.add(AuditCheckpoint(node_id=NODE, seq=last.seq, head_hash=last.hash, time=when,
                              key_label=signer.label, spki_sha256=signer.spki_sha256,
                              algorithm="ecdsa-sha256", signature=sig))
    assert problems(check(db, public_key)) == [
        ("checkpoint_signature", 5), ("checkpoint_signature", last.seq)
    ]


def test_rewritten_history_is_caught_by_checkpoint(
    db: Database, signer: CheckpointSigner, public_key: ec.EllipticCurvePublicKey
) -> None:
    log = AuditLog(NODE, signer)
    append_events(db, log, 10)
    with db.transaction() as s:
        log.checkpoint(s, SYSTEM)
    append_events(db, log, 3, start=10)  # records 12..14
    assert check(db, public_key).ok

    remove_guards(db)
    k = 4
    assert sql(db, "UPDATE audit_events SET actor = 'bob' WHERE node_id = :n AND seq = :s",
               n=NODE, s=k) == 1
    # without the re-chain the edit shows as such
    assert problems(check(db, public_key))[0] == ("edited", k)
    rechain(db, k)

    # the chain alone is now consistent: records, links and head all agree...
    recs = records(db)
    assert recs[k - 1].actor == "bob"
    assert all(r.hash == record_hash(fields_of(r)) for r in recs)
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(recs))
    assert head_of(db) == (14, recs[-1].hash)
    # ...but not with what the audit key signed
    report = check(db, public_key)
    assert problems(report) == [("checkpoint_mismatch", 10)]


def test_rsa_audit_key_checkpoints(
    db: Database, rsa_key: tuple[KeyInfo, TokenPrivateKey],
    public_key: ec.EllipticCurvePublicKey,
) -> None:
    info, key = rsa_key
    rsa_signer = CheckpointSigner(key)
    log = AuditLog(NODE, rsa_signer)
    append_events(db, log, 4)
    with db.transaction() as s:
        cp = log.checkpoint(s, SYSTEM)
    assert cp.algorithm == "rsa-pkcs1-sha256" and cp.seq == 4 and len(cp.signature) == 256
    assert cp.key_label == info.label and cp.spki_sha256 == info.spki_sha256
    recs = records(db)
    assert recs[-1].event_type == "audit.checkpoint" and recs[-1].seq == 5
    assert json.loads(recs[-1].details)["algorithm"] == "rsa-pkcs1-sha256"

    assert isinstance(info.public_key, rsa.RSAPublicKey)
    report = check(db, info.public_key)
    assert report.ok, report.problems
    assert report.checkpoints == 1
    # the EC audit key (or any other) does not vouch for it
    assert problems(check(db, public_key)) == [("checkpoint_signature", 4)]


# -- 3. concurrency --------------------------------------------------------------------------


def test_threads_never_fork_the_chain(db: Database) -> None:
    log = AuditLog(NODE)
    threads, each = 8, 25
    start = threading.Barrier(threads)

    def writer(t: int) -> None:
        start.wait(timeout=30)
        for i in range(each):
            with db.transaction() as s:
                log.append(s, "test.thread", Actor(f"t{t}", "service"), object_ids={"i": i})

    with ThreadPoolExecutor(threads) as ex:
        for fut in [ex.submit(writer, t) for t in range(threads)]:
            fut.result(timeout=120)

    recs = records(db)
    assert [r.seq for r in recs] == list(range(1, threads * each + 1))
    assert sorted({r.actor for r in recs}) == sorted(f"t{t}" for t in range(threads))
    report = check(db, None)
    assert report.ok, report.problems
    assert report.records == threads * each
    assert head_of(db) == (threads * each, recs[-1].hash)


def _process_writer(url: str, node_id: str, name: str, count: int,
                    barrier: threading.Barrier) -> None:
    """Runs in a spawned process: its own engine, its own AuditLog on the same node."""
    database = Database(url)
    try:
        log = AuditLog(node_id)
        barrier.wait(timeout=60)
        for i in range(count):
            with database.transaction() as s:
                log.append(s, "test.process", Actor(name, "service"), object_ids={"i": i})
    finally:
        database.dispose()


def test_processes_never_fork_the_chain(db: Database) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    each = 50
    procs = [
        ctx.Process(target=_process_writer, args=(db.url, NODE, f"p{i}", each, barrier))
        for i in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]

    recs = records(db)
    assert [r.seq for r in recs] == list(range(1, 2 * each + 1))
    assert sorted(r.actor for r in recs) == ["p0"] * each + ["p1"] * each
    report = check(db, None)
    assert report.ok, report.problems
    assert report.records == 2 * each


# -- 4. automatic checkpoints ----------------------------------------------------------------


def test_automatic_checkpoints(
    db: Database, signer: CheckpointSigner, public_key: ec.EllipticCurvePublicKey
) -> None:
    log = AuditLog(NODE, signer, checkpoint_every=10)
    append_events(db, log, 25, per_transaction=True)

    cps = checkpoints(db)
    assert len(cps) >= 2
    recs = records(db)
    by_seq = {r.seq: r for r in recs}
    for cp in cps:
        assert cp.head_hash == by_seq[cp.seq].hash
        assert cp.algorithm == "ecdsa-sha256" and cp.spki_sha256 == signer.spki_sha256
        # each checkpoint is itself recorded, right after the record it covers
        follow = by_seq[cp.seq + 1]
        assert follow.event_type == "audit.checkpoint" and follow.role == "system"
        assert json.loads(follow.details)["head_hash"] == cp.head_hash
    assert [c.seq for c in cps] == [10, 20]
    assert len([r for r in recs if r.event_type == "test.event"]) == 25
    assert len(recs) == 25 + len(cps)

    report = check(db, public_key)
    assert report.ok, report.problems
    assert report.checkpoints == len(cps)

    # without the key, verification must say it did not check the signatures
    unchecked = check(db, None)
    assert not unchecked.ok
    assert problems(unchecked) == [("checkpoint_unverified", c.seq) for c in cps]


def test_interval_checkpoints_start_without_a_first_manual_one(
    db: Database, signer: CheckpointSigner, public_key: ec.EllipticCurvePublicKey
) -> None:
    """Time-based checkpoints alone (checkpoint_every=0) must sign a quiet log too."""
    log = AuditLog(NODE, signer, checkpoint_every=0, checkpoint_interval_seconds=1)
    append_events(db, log, 1)
    assert checkpoints(db) == []  # the first record is not yet an interval old
    time.sleep(1.05)
    append_events(db, log, 1, start=1)
    assert [c.seq for c in checkpoints(db)] == [2]
    append_events(db, log, 1, start=2)  # right after a checkpoint: none due
    assert [c.seq for c in checkpoints(db)] == [2]
    time.sleep(1.05)
    append_events(db, log, 1, start=3)
    assert [c.seq for c in checkpoints(db)] == [2, 5]
    assert [r.event_type for r in records(db)] == [
        "test.event", "test.event", "audit.checkpoint", "test.event", "test.event",
        "audit.checkpoint",
    ]
    assert check(db, public_key).ok


# -- 4b. anchors: every committed checkpoint outside the database ----------------------------


def test_checkpoint_at_every_commit_is_anchored_after_commit_only(
    db: Database, signer: CheckpointSigner, public_key: ec.EllipticCurvePublicKey,
    pool: SessionPool, tmp_path: Path,
) -> None:
    node = unique_label("anchored")  # the token is shared: a node (token object) of its own
    anchor_file = tmp_path / "anchors.jsonl"
    log = AuditLog(node, signer, checkpoint_every=1,
                   anchors=AnchorWriter(pool, anchor_file, syslog=False))
    try:
        for i in range(4):
            with db.transaction() as s:
                log.append(s, "test.event", ALICE, details={"i": i})
        # a checkpoint whose transaction rolls back is anchored nowhere
        with pytest.raises(RuntimeError), db.transaction() as s:
            log.append(s, "test.event", ALICE, details={"i": 4})
            raise RuntimeError("the change fails after its checkpoint was signed")

        with db.transaction() as s:
            cps = list(s.scalars(select(AuditCheckpoint).where(AuditCheckpoint.node_id == node)
                                 .order_by(AuditCheckpoint.seq)))
        assert [c.seq for c in cps] == [1, 3, 5, 7]  # every record but the checkpoints' own
        lines = [Checkpoint.parse(line) for line in anchor_file.read_text().splitlines()]
        assert [(c.seq, c.head_hash, c.signature) for c in lines] == [
            (c.seq, c.head_hash, c.signature) for c in cps]
        (token,) = [a for a in read_token(pool) if a.node_id == node]
        assert token.checkpoint == lines[-1]
        assert oct(anchor_file.stat().st_mode & 0o777) == "0o640"

        anchors = unique([*read_token(pool), *read_file(anchor_file)])
        with db.transaction() as s:
            report = verify(s, public_key, [a for a in anchors if a.node_id == node])
        assert report.ok, report.problems
        assert report.anchors == 4

        # the token never moves backwards: an older checkpoint does not replace a newer one
        AnchorWriter(pool, None, syslog=False).write(lines[0])
        (token,) = [a for a in read_token(pool) if a.node_id == node]
        assert token.seq == 7
    finally:
        dataobj.delete(pool, token_label(node))


def test_anchor_goes_to_syslog_when_there_is_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signer: CheckpointSigner,
) -> None:
    """A real datagram socket stands in for /dev/log; without one, no failure."""
    from appliance.audit import anchor as anchor_mod

    cp = Checkpoint("node-s", 3, "a" * 64, "2026-01-01T00:00:00.000000Z", signer.label,
                    signer.spki_sha256, "ecdsa-sha256", b"sig")
    monkeypatch.setattr(anchor_mod, "SYSLOG_ADDRESS", str(tmp_path / "absent"))
    AnchorWriter(None, None, syslog=True).write(cp)  # no /dev/log: nothing, no error

    address = tmp_path / "log"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(address))
    sock.settimeout(5)
    try:
        monkeypatch.setattr(anchor_mod, "SYSLOG_ADDRESS", str(address))
        AnchorWriter(None, None, syslog=True).write(cp)
        message = sock.recv(65536).decode()
    finally:
        sock.close()
    assert "appliance-audit: appliance-audit-anchor " in message
    assert Checkpoint.parse(message.split("appliance-audit-anchor ", 1)[1].strip("\x00")) == cp


def test_checkpoint_without_key_or_on_empty_log_is_refused(
    db: Database, signer: CheckpointSigner
) -> None:
    with pytest.raises(AuditError, match="no audit key"), db.transaction() as s:
        AuditLog(NODE).checkpoint(s, SYSTEM)
    with pytest.raises(AuditError, match="empty"), db.transaction() as s:
        AuditLog(NODE, signer).checkpoint(s, SYSTEM)
    assert checkpoints(db) == []


# -- 5. failure atomicity --------------------------------------------------------------------


def _key_row(label: str) -> HsmKey:
    return HsmKey(label=label, ck_id="01", key_type="ec-p256", spki_sha256="0" * 64,
                  spki_der=b"\x30\x00", token_label="t", token_serial="s",
                  created_at=datetime.now(UTC))


def test_failed_transaction_keeps_neither_change_nor_record(db: Database) -> None:
    log = AuditLog(NODE)
    # control: a good transaction keeps both
    with db.transaction() as s:
        s.add(_key_row("kept"))
        log.append(s, "key.generate", ALICE, object_ids={"label": "kept"})
    head = head_of(db)
    assert head is not None and head[0] == 1

    class Boom(Exception):
        pass

    with pytest.raises(Boom), db.transaction() as s:
        s.add(_key_row("lost"))
        event = log.append(s, "key.generate", ALICE, object_ids={"label": "lost"})
        assert event.seq == 2
        raise Boom

    with db.transaction() as s:
        assert [k.label for k in s.scalars(select(HsmKey))] == ["kept"]
        assert count_events(s) == 1 and count_events(s, NODE) == 1
    assert head_of(db) == head
    # and the chain goes on from where the committed part ended
    append_events(db, log, 1)
    assert [r.seq for r in records(db)] == [1, 2]
    assert check(db, None).ok


# -- 6. input bounds -------------------------------------------------------------------------


def test_oversized_details_and_bad_fields_are_refused(db: Database) -> None:
    log = AuditLog(NODE)
    huge = {"blob": "x" * (MAX_DETAILS_BYTES + 1)}
    with pytest.raises(AuditError, match="larger than"), db.transaction() as s:
        log.append(s, "test.event", ALICE, details=huge)
    # the limit counts bytes, not characters
    wide = {"blob": "é" * (MAX_DETAILS_BYTES // 2 + 1)}
    with pytest.raises(AuditError, match="larger than"), db.transaction() as s:
        log.append(s, "test.event", ALICE, details=wide)
    with pytest.raises(AuditError, match="outcome"), db.transaction() as s:
        log.append(s, "test.event", ALICE, outcome="maybe")
    for event_type, actor in (("", ALICE), ("x" * 257, ALICE), ("t", Actor("", "operator")),
                              ("t", Actor("a", "r" * 257))):
        with pytest.raises(AuditError, match="characters"), db.transaction() as s:
            log.append(s, event_type, actor)

    with db.transaction() as s:
        assert count_events(s) == 0
        assert s.scalar(select(func.count()).select_from(AuditHead)) == 0

    # just under the limit is fine, and every outcome is accepted
    with db.transaction() as s:
        log.append(s, "test.event", ALICE, details={"blob": "x" * (MAX_DETAILS_BYTES - 100)})
        for outcome in ("success", "failure", "denied"):
            log.append(s, "test.event", ALICE, outcome=outcome)
    recs = records(db)
    assert [r.outcome for r in recs] == ["success", "success", "failure", "denied"]
    assert check(db, None).ok
