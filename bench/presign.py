#!/usr/bin/env python3
"""OCSP pre-signing: responses per second for N certificates vs raw build-and-sign.

On a data directory with ``--certificates`` issued certificates (synthetic rows
in ``certificates``, see below):

* ``raw``      an ``OCSPResponseBuilder`` (one SingleResponse, random serial, the
  delegated signer as responder by key hash, its certificate in ``certs``)
  ``.sign()`` with the signer's token key (``appliance.hsm`` pool + ``TokenPrivateKey``,
  which verifies every token signature in software), DER-encoded. No database,
  no response check, no lint. Spawned processes, ``--seconds`` each, 1 and 2 at once.
* ``presign``  ``appliance.ocsp.presign.presign(stale_only=False)`` (what
  ``appliance ocsp presign --all`` runs) in 1 and 2 processes: candidate query,
  two responses per certificate (SHA-1 and SHA-256 CertIDs), each checked before
  release (the token key's signature verification, and that the response carries
  exactly those verified bytes), the first of each shape linted, stored in batches
  of 500 by a writer thread while the next batch is signed.

``raw`` is measured before and again after ``presign`` (same count each); the ratio
uses the median of both, and both are printed, so background load that changed
during the run is visible.

Why synthetic rows are correct: a CertID is (hash of the issuer's name, hash of
the issuer's public key, serial). The pre-signer reads only the serial, status
and authority of a ``certificates`` row, never its DER, so a row with a unique
random serial, status ``issued`` and the issuing CA as authority gets exactly
the responses a real certificate with that serial would. No leaf certificate has
to be built or signed.

Prints numbers, asserts none.

    .venv/bin/python bench/presign.py [--certificates 100000] [--seconds 5]
    .venv/bin/python bench/presign.py --keep /tmp/ocsp-bench --setup-only   # for ocsp_load.sh
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

INSERT_CHUNK = 20_000
GOAL = 0.70
PROJECT = 10_000_000


def _say(verbose: bool, msg: str) -> None:
    if verbose:
        print(msg, file=sys.stderr, flush=True)


def _cli(*args: str) -> None:
    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)
    subprocess.run([sys.executable, "-m", "appliance", *args], check=True, env=env,
                   capture_output=True, timeout=600, cwd=REPO)


def setup(d: Path, n: int, verbose: bool = False) -> int:
    """Quickstart ``d`` if needed; top up its issued certificates (of ``issuing``) to ``n``.
    Returns how many rows were added."""
    from sqlalchemy import func, insert, select

    from appliance import config
    from appliance.runtime import Appliance
    from appliance.store.models import Authority, Certificate

    if not (d / "appliance.yaml").exists():
        d.mkdir(parents=True, exist_ok=True)
        _say(verbose, f"quickstart in {d}")
        _cli("quickstart", "--dir", str(d))
    app = Appliance(config.load(d / "appliance.yaml"))
    try:
        with app.db.sessions() as db:
            issuing = db.query(Authority).filter(Authority.name == "issuing").one()
            have = db.scalar(select(func.count()).select_from(Certificate).where(
                Certificate.authority_id == issuing.id, Certificate.status == "issued")) or 0
        missing = max(0, n - have)
        now = datetime.now(UTC)
        added = 0
        while added < missing:
            k = min(INSERT_CHUNK, missing - added)
            # 127-bit random serials: unique in practice, positive, at most 20 octets.
            rows = [{"serial_hex": f"{int.from_bytes(secrets.token_bytes(16), 'big') >> 1:x}",
                     "authority_id": issuing.id, "provisioner_name": "bench",
                     "requester": "bench", "template": "tls-server", "status": "issued",
                     "not_before": now, "not_after": now + timedelta(days=90),
                     "reserved_at": now, "issued_at": now} for _ in range(k)]
            with app.db.transaction() as db:
                db.execute(insert(Certificate), rows)
            added += k
            _say(verbose, f"inserted {added}/{missing} certificate rows")
        return added
    finally:
        app.close()


# -- raw build-and-sign ----------------------------------------------------------------------


def _raw_worker(config_path: str, seconds: float, ready: Any, go: Any, out: Any) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp

    from appliance import config
    from appliance.ocsp.signer import BACKDATE, OcspSigner
    from appliance.runtime import Appliance
    from appliance.store.models import Authority

    app = Appliance(config.load(Path(config_path)))
    with app.db.sessions() as db:
        issuing_id = db.query(Authority).filter(Authority.name == "issuing").one().id
    r = OcspSigner(app).responder(issuing_id)  # token key, delegated signer, CertID hashes
    name_hash, key_hash = r.id_hashes["sha1"]
    validity = timedelta(days=4)

    def one() -> bytes:
        now = datetime.now(UTC).replace(microsecond=0) - BACKDATE
        serial = int.from_bytes(os.urandom(16), "big") >> 1
        b = ocsp.OCSPResponseBuilder().add_response_by_hash(
            name_hash, key_hash, serial, hashes.SHA1(), ocsp.OCSPCertStatus.GOOD,
            now, now + validity, None, None,
        ).responder_id(ocsp.OCSPResponderEncoding.HASH, r.cert)
        if r.delegated:
            b = b.certificates([r.cert])
        return b.sign(r.key, r.algorithm).public_bytes(serialization.Encoding.DER)

    for _ in range(50):  # warm-up: sessions, key lookup, caches
        one()
    ready.release()
    go.wait()
    n = 0
    start = time.perf_counter()
    end = start + seconds
    while time.perf_counter() < end:
        one()
        n += 1
    out.put((n, time.perf_counter() - start))
    app.close()


def raw_rate(config_path: Path, procs: int, seconds: float) -> float:
    """Responses per second of ``procs`` processes signing at once (rates added)."""
    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    ps = [ctx.Process(target=_raw_worker, args=(str(config_path), seconds, ready, go, out))
          for _ in range(procs)]
    for p in ps:
        p.start()
    for _ in ps:
        if not ready.acquire(timeout=120):
            raise RuntimeError("raw worker did not start")
    go.set()
    results = [out.get(timeout=seconds + 120) for _ in ps]
    for p in ps:
        p.join()
    return sum(n / t for n, t in results)


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--certificates", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=5.0, help="per raw measurement")
    ap.add_argument("--rounds", type=int, default=1, help="raw measurements per config")
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--keep", type=Path, default=None,
                    help="use (and keep) this data directory; quickstart it if missing")
    ap.add_argument("--setup-only", action="store_true",
                    help="only make the data directory and its certificates (needs --keep)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    if args.setup_only and args.keep is None:
        ap.error("--setup-only needs --keep DIR")
    started = time.perf_counter()
    base = None
    if args.keep is not None:
        d = args.keep.resolve()
    else:
        base = Path(tempfile.mkdtemp(prefix="bench-presign-"))
        d = base / "data"
    try:
        t = time.perf_counter()
        added = setup(d, args.certificates, args.verbose)
        setup_s = time.perf_counter() - t
        if args.setup_only:
            print(f"data directory {d}: {added} certificate rows added in {setup_s:.1f}s "
                  f"(>= {args.certificates} issued)")
            return
        from sqlalchemy import func, select

        from appliance import config
        from appliance.ocsp import presign
        from appliance.runtime import Appliance
        from appliance.store.models import Certificate

        cfg = d / "appliance.yaml"
        raw: dict[int, list[float]] = {p: [] for p in args.processes}
        for _ in range(args.rounds):
            for p in args.processes:
                _say(args.verbose, f"raw {p} process(es), {args.seconds}s")
                raw[p].append(raw_rate(cfg, p, args.seconds))
        app = Appliance(config.load(cfg))
        with app.db.sessions() as db:
            total = db.scalar(select(func.count()).select_from(Certificate)
                              .where(Certificate.status.in_(("issued", "revoked")))) or 0
        pre: dict[int, Any] = {}
        for p in args.processes:
            _say(args.verbose, f"presign --all, {p} process(es), {total} certificates")
            pre[p] = presign.presign(app, stale_only=False, processes=p)
        app.close()
        # raw again after presign: the baseline brackets the measurement, so a change in
        # the machine's background load during the run shows (spread) and is averaged out.
        for _ in range(args.rounds):
            for p in reversed(args.processes):
                _say(args.verbose, f"raw {p} process(es), {args.seconds}s (after)")
                raw[p].append(raw_rate(cfg, p, args.seconds))

        print(f"OCSP pre-signing benchmark: presign --all vs raw build-and-sign through SoftHSM "
              f"({total} certificates)")
        print(f"{os.cpu_count()} CPU(s); python {platform.python_version()}; raw {args.rounds} "
              f"x {args.seconds:g} s per config before and as many after presign (median); "
              f"setup {setup_s:.0f} s; "
              f"run took {time.perf_counter() - started:.0f} s")
        print()
        print(f"{'mode':<8} {'procs':>5} {'certs/s':>9} {'resp/s':>9} {'seconds':>8} "
              f"{'failed':>6} {'vs raw':>7}  raw before/after")
        print("-" * 76)
        for p in args.processes:
            r = statistics.median(raw[p])
            half = len(raw[p]) // 2
            around = (f"{statistics.median(raw[p][:half]):.0f} / "
                      f"{statistics.median(raw[p][half:]):.0f}")
            print(f"{'raw':<8} {p:>5} {'-':>9} {r:>9.0f} {'-':>8} {'-':>6} {1:>7.3f}  {around}")
        for p in args.processes:
            res = pre[p]
            r = statistics.median(raw[p])
            print(f"{'presign':<8} {res.processes:>5} {res.rate:>9.0f} {2 * res.rate:>9.0f} "
                  f"{res.seconds:>8.1f} {res.failed:>6} {2 * res.rate / r:>7.3f}")
        print()
        best = max(args.processes)
        ratio = 2 * pre[best].rate / statistics.median(raw[best])
        verdict = "meets the goal" if ratio >= GOAL else "BELOW the goal"
        print(f"presign/raw: {100 * ratio:.0f}% (goal >= {100 * GOAL:.0f}%) - {verdict}; "
              f"responses/s with {best} process(es), 2 responses per certificate")
        if pre[best].rate > 0:
            proj = PROJECT / pre[best].rate
            print(f"projected presign --all for {PROJECT:,} certificates at "
                  f"{pre[best].rate:.0f} certs/s: {proj / 60:.0f} min ({proj / 3600:.1f} h)")
    finally:
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
