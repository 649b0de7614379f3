"""CRL with N revoked entries through the appliance's real publish path: time and peak memory.

Goal (issue 5): 1,000,000 entries in <= 20 s and <= 1 GiB.

What it does:
1. ``appliance quickstart`` makes a data directory (SoftHSM token, SQLite, CAs).
2. N revoked certificates of the ``issuing`` CA are bulk-inserted into its database
   (rows as the pipeline writes them, not yet expired).
3. In a fresh child process each, measured separately (wall time, peak RSS of the child):
   - ``publish``: ``appliance.revocation.crl.publish`` - DB query, entries, builder, sample
     lint, token signature, signature check, store, audit. The thing under test.
   - ``baseline``: the same entries from the same query, built and signed by
     ``cryptography`` with a software P-256 key: no token, no lint, no store, no audit.
Prints both and the ratio. Never asserts on time.

    .venv/bin/python bench/crl.py [--entries 1000000] [--keep DIR] [--json]
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


def prepare(data: Path, entries: int) -> None:
    if not (data / "appliance.yaml").exists():
        subprocess.run([sys.executable, "-m", "appliance", "quickstart", "--dir", str(data)],
                       check=True, capture_output=True, env={**os.environ, "SOFTHSM2_CONF": ""})
    conn = sqlite3.connect(data / "appliance.db")
    have = conn.execute("SELECT COUNT(*) FROM certificates WHERE requester = 'bench'").fetchone()[0]
    if have < entries:
        (ca_id,) = conn.execute("SELECT id FROM authorities WHERE name = 'issuing'").fetchone()
        now = datetime.now(UTC)
        later = (now + timedelta(days=30)).isoformat(sep=" ")
        stamp = now.isoformat(sep=" ")
        reasons = ["keyCompromise", "superseded", "cessationOfOperation", "unspecified"]
        rows = (
            (f"{(1 << 100) + i:x}", ca_id, "bench", "bench", "tls-server", "revoked", "", "[]",
             stamp, later, stamp, stamp, reasons[i % 4], "{}")
            for i in range(have, entries)
        )
        with conn:
            conn.executemany(
                "INSERT INTO certificates (serial_hex, authority_id, provisioner_name, requester, "
                "template, status, subject, sans, not_before, not_after, reserved_at, "
                "revoked_at, revocation_reason, request_context) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.close()


def _publish(data: str, out: Any) -> None:
    from appliance import config
    from appliance.audit.log import Actor
    from appliance.revocation import crl
    from appliance.runtime import Appliance

    app = Appliance(config.load(Path(data) / "appliance.yaml"))
    app.signing_pool()  # self-tests and login are not what we measure
    t0 = time.perf_counter()
    published = crl.publish(app, "issuing", Actor("bench", "operator"))
    elapsed = time.perf_counter() - t0
    out.send({"seconds": elapsed, "entries": published.entries,
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _baseline(data: str, out: Any) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from sqlalchemy import select

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
        entries = crl._entries(db, ca, now)[None].revoked
        subject = authz.certificate(ca).subject
        _ = select
    built = x509.CertificateRevocationListBuilder(
        issuer_name=subject, last_update=now, next_update=now + timedelta(days=7),
        revoked_certificates=entries,
    ).add_extension(x509.CRLNumber(1), critical=False).sign(key, hashes.SHA256())
    elapsed = time.perf_counter() - t0
    out.send({"seconds": elapsed, "entries": len(built),
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
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, default=None, help="Reuse/keep this data directory.")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.keep or Path(tmp) / "data"
        t0 = time.perf_counter()
        prepare(data, args.entries)
        setup = time.perf_counter() - t0
        base = measure(_baseline, data)
        pub = measure(_publish, data)
    result = {"entries": args.entries, "setup_seconds": setup, "baseline": base, "publish": pub,
              "ratio_time": pub["seconds"] / base["seconds"] if base["seconds"] else None}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"CRL benchmark: {args.entries:,} revoked entries (setup {setup:.1f} s)")
    print(f"{'mode':10} {'entries':>10} {'seconds':>9} {'peak RSS MiB':>13}")
    for name in ("baseline", "publish"):
        r = result[name]
        print(f"{name:10} {r['entries']:>10,} {r['seconds']:>9.2f} {r['peak_rss_mib']:>13.0f}")
    ok_t = pub["seconds"] <= 20
    ok_m = pub["peak_rss_mib"] <= 1024
    print(f"publish: {pub['seconds']:.1f} s (goal <= 20 s: {'met' if ok_t else 'NOT met'}), "
          f"peak {pub['peak_rss_mib']:.0f} MiB (goal <= 1024 MiB: {'met' if ok_m else 'NOT met'}); "
          f"{result['ratio_time']:.2f}x the software-key baseline")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
