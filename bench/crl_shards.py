"""Sharded CRLs: every shard of one issuing CA published, with 10,000,000 certificates of
which 1,000,000 are revoked. Time, peak memory, largest shard.

Goal (issue 17): every shard under 10 MB, peak memory under 1 GiB, all shards in under
60 s on 2 cores.

What it does (the approach of ``bench/crl.py``):
1. ``appliance quickstart`` makes a data directory (SoftHSM token, SQLite, CAs) and
   ``revocation.crl_shards`` is set to N.
2. C certificates of the ``issuing`` CA are bulk-inserted into its SQLite database (rows
   as the pipeline writes them, ``crl_shard = serial mod N``, not yet expired), every
   (C/R)-th one revoked: one transaction, ``executemany``, the secondary indexes dropped
   before and made again after.
3. In a fresh child process each, measured separately (wall time, peak RSS of the child):
   - ``shards``: ``appliance.revocation.crl.publish_scopes`` for ``issuing`` - the
     unsharded CRL and shards 0..N-1 from one streamed query, each shard built, its
     sample linted, signed by the token, checked, stored and audited. The thing under test.
   - ``baseline``: the same R entries as ONE unsharded CRL, built and signed by
     ``cryptography`` with a software P-256 key: no token, no lint, no store, no audit
     (what a single CRL of that size costs at the least).
Prints both; never asserts.

    .venv/bin/python bench/crl_shards.py [--certificates 10000000] [--revoked 1000000]
                                         [--shards 64] [--keep DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GOAL_SECONDS, GOAL_MIB, GOAL_SHARD_BYTES = 60, 1024, 10_000_000


def _set_shards(data: Path, shards: int) -> None:
    import yaml

    path = data / "appliance.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["revocation"] = {**(doc.get("revocation") or {}), "crl_shards": shards}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def prepare(data: Path, certificates: int, revoked: int, shards: int) -> None:
    if not (data / "appliance.yaml").exists():
        subprocess.run([sys.executable, "-m", "appliance", "quickstart", "--dir", str(data)],
                       check=True, capture_output=True, env={**os.environ, "SOFTHSM2_CONF": ""})
    _set_shards(data, shards)
    conn = sqlite3.connect(data / "appliance.db", isolation_level=None)
    have = conn.execute("SELECT COUNT(*) FROM certificates WHERE requester = 'bench'").fetchone()[0]
    if have >= certificates:
        conn.close()
        return
    (ca_id,) = conn.execute("SELECT id FROM authorities WHERE name = 'issuing'").fetchone()
    now = datetime.now(UTC)
    later = (now + timedelta(days=30)).isoformat(sep=" ")
    stamp = now.isoformat(sep=" ")
    reasons = ["keyCompromise", "superseded", "cessationOfOperation", "unspecified"]
    base = 1 << 100
    # Which rows are revoked: i * K mod C < R, K a prime that does not divide C, picks
    # exactly R of the C rows, spread like random ones over every residue mod N (with
    # "every tenth row", gcd(10, N) would leave shards empty and double the others).
    spread = 2654435761
    assert certificates % spread

    def rows() -> Any:
        for i in range(have, certificates):
            gone = (i * spread) % certificates < revoked
            serial = base + i
            yield (f"{serial:x}", ca_id, "bench", "bench", "tls-server",
                   "revoked" if gone else "issued", "", "[]", stamp, later, stamp,
                   stamp if gone else None, reasons[i % 4] if gone else None, "{}",
                   serial % shards)

    # Secondary indexes off while inserting (made again once, after): much faster.
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = "
        "'certificates' AND sql IS NOT NULL").fetchall()
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")
    conn.execute("BEGIN")
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    conn.executemany(
        "INSERT INTO certificates (serial_hex, authority_id, provisioner_name, requester, "
        "template, status, subject, sans, not_before, not_after, reserved_at, "
        "revoked_at, revocation_reason, request_context, crl_shard) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows())
    for _, sql in indexes:
        conn.execute(sql)
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


def _shards(data: str, out: Any) -> None:
    from sqlalchemy import func, select

    from appliance import config
    from appliance.audit.log import Actor
    from appliance.revocation import crl
    from appliance.runtime import Appliance
    from appliance.store.models import Authority, Crl

    app = Appliance(config.load(Path(data) / "appliance.yaml"))
    app.signing_pool()  # self-tests and login are not what we measure
    t0 = time.perf_counter()
    published = crl.publish_scopes(app, "issuing", Actor("bench", "operator"))
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    numbers = [p.number for p in published]
    with app.db.sessions() as db:
        ca_id = db.scalar(select(Authority.id).where(Authority.name == "issuing"))
        sizes = {shard: size for shard, size in db.execute(
            select(Crl.shard, func.length(Crl.der)).where(
                Crl.authority_id == ca_id, Crl.number.in_(numbers)))}
    shard_sizes = [v for k, v in sizes.items() if k is not None]
    t1 = time.perf_counter()
    left = crl.due(app, settle_seconds=0)  # what the node's timer costs when nothing is due
    due_seconds = time.perf_counter() - t1
    out.send({"due_seconds": due_seconds, "due_after": sum(map(len, left.values())),
              "seconds": elapsed, "peak_rss_mib": peak, "crls": len(published),
              "entries": sum(p.entries for p in published),
              "largest_shard_bytes": max(shard_sizes, default=0),
              "smallest_shard_bytes": min(shard_sizes, default=0),
              "largest_shard_entries": max((p.entries for p in published
                                            if p.shard is not None), default=0)})


def _baseline(data: str, out: Any) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from appliance import config
    from appliance.ca import authorities as authz
    from appliance.revocation import crl
    from appliance.runtime import Appliance

    app = Appliance(config.load(Path(data) / "appliance.yaml"))
    key = ec.generate_private_key(ec.SECP256R1())
    t0 = time.perf_counter()
    now = datetime.now(UTC).replace(microsecond=0)
    with app.db.sessions() as db:
        ca = authz.get(db, "issuing")
        buckets = crl._entries(db, ca, now, crl.ALL)
        subject = authz.certificate(ca).subject
    entries = [e for b in buckets.values() for e in b.revoked]
    buckets.clear()
    built = x509.CertificateRevocationListBuilder(
        issuer_name=subject, last_update=now, next_update=now + timedelta(days=7),
        revoked_certificates=entries,
    ).add_extension(x509.CRLNumber(1), critical=False).sign(key, hashes.SHA256())
    size = len(built.public_bytes(serialization.Encoding.DER))
    elapsed = time.perf_counter() - t0
    out.send({"seconds": elapsed, "entries": len(built), "crls": 1, "bytes": size,
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def measure(target: Any, data: Path) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(str(data), child))
    proc.start()
    result: dict[str, Any] = parent.recv()
    proc.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--certificates", type=int, default=10_000_000)
    ap.add_argument("--revoked", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=64,
                    help="revocation.crl_shards (64: about 15,600 entries, 0.6 MB a shard)")
    ap.add_argument("--keep", type=Path, default=None, help="Reuse/keep this data directory.")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not 1 <= args.shards <= 4096 or args.revoked > args.certificates:
        ap.error("--shards is 1..4096 and --revoked at most --certificates")
    with tempfile.TemporaryDirectory() as tmp:
        data = args.keep or Path(tmp) / "data"
        t0 = time.perf_counter()
        prepare(data, args.certificates, args.revoked, args.shards)
        setup = time.perf_counter() - t0
        base = measure(_baseline, data)
        sharded = measure(_shards, data)
    result = {"certificates": args.certificates, "revoked": args.revoked,
              "shards": args.shards, "setup_seconds": setup, "baseline": base,
              "sharded": sharded}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"sharded CRL benchmark: {args.certificates:,} certificates, {args.revoked:,} "
          f"revoked, {args.shards} shards (setup {setup:.1f} s)")
    print(f"{'mode':10} {'CRLs':>5} {'entries':>10} {'seconds':>9} {'peak RSS MiB':>13} "
          f"{'largest CRL bytes':>18}")
    print(f"{'baseline':10} {1:>5} {base['entries']:>10,} {base['seconds']:>9.2f} "
          f"{base['peak_rss_mib']:>13.0f} {base['bytes']:>18,}")
    print(f"{'shards':10} {sharded['crls']:>5} {sharded['entries']:>10,} "
          f"{sharded['seconds']:>9.2f} {sharded['peak_rss_mib']:>13.0f} "
          f"{sharded['largest_shard_bytes']:>18,}")
    ok_t = sharded["seconds"] <= GOAL_SECONDS
    ok_m = sharded["peak_rss_mib"] <= GOAL_MIB
    ok_s = sharded["largest_shard_bytes"] < GOAL_SHARD_BYTES
    print(f"all shards: {sharded['seconds']:.1f} s (goal < {GOAL_SECONDS} s: "
          f"{'met' if ok_t else 'NOT met'}), peak {sharded['peak_rss_mib']:.0f} MiB (goal < "
          f"{GOAL_MIB} MiB: {'met' if ok_m else 'NOT met'}), largest shard "
          f"{sharded['largest_shard_bytes']:,} bytes, {sharded['largest_shard_entries']:,} "
          f"entries (goal < 10 MB: {'met' if ok_s else 'NOT met'}); the single unsharded CRL "
          f"would be {base['bytes']:,} bytes")
    print(f"crl.due afterwards (the timer's check): {sharded['due_seconds']:.2f} s, "
          f"{sharded['due_after']} CRLs due (the root's, when it has none yet)")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
