#!/usr/bin/env python3
"""Write-transaction latency on SQLite: SQLite's own busy handler vs the appliance's queue.

Two processes x ``--threads`` threads each run ``--tx`` small write transactions
(``BEGIN IMMEDIATE``, one INSERT, a short pause inside, ``COMMIT`` with
``synchronous=FULL``; a pause outside stands for the rest of a request) on one throw-away
WAL database, in two modes taking turns for ``--rounds`` rounds:

* ``busy``  the same ``Database.write()`` as before the queue: no lock of the process,
  ``BEGIN IMMEDIATE`` under SQLite's busy handler, which sleeps 1, 2, 5, ... up to
  100 ms between its tries;
* ``queue`` :class:`appliance.store.db.Database` ``write()``: the writers of a process
  take turns on a lock of the process, and the one whose turn it is asks for SQLite's
  lock every half millisecond or so.

Prints transactions/s and p50/p99/max latency per mode (median over rounds) and the CPU
per transaction. Numbers only, never fails on them.

    .venv/bin/python bench/sqlite_writers.py [--threads 4] [--tx 150] [--rounds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

INSIDE = 0.0005  # seconds of work inside a transaction
OUTSIDE = 0.004  # ...and between two of one thread


def _worker(mode: str, path: str, threads: int, tx: int, out: Any) -> None:
    from sqlalchemy import text

    from appliance.store import db as store_db

    if mode == "busy":  # the begin as it was: SQLite's busy handler does the waiting
        store_db._begin_immediate = lambda driver, _wait: driver.execute("BEGIN IMMEDIATE")
    db = store_db.Database(f"sqlite:///{path}", busy_timeout=30)
    if mode == "busy":
        db._writers = None
    lat: list[float] = []

    def run() -> None:
        for _ in range(tx):
            t = time.monotonic()
            with db.write() as c:
                c.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": os.urandom(200)})
                time.sleep(INSIDE)
            lat.append(time.monotonic() - t)
            time.sleep(OUTSIDE)

    cpu = time.process_time()
    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put((lat, time.process_time() - cpu))


def _round(mode: str, threads: int, tx: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "w.db")
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        conn.commit()
        conn.close()
        q: Any = mp.get_context("spawn").Queue()
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker, args=(mode, path, threads, tx, q)) for _ in range(2)]
        start = time.monotonic()
        for p in procs:
            p.start()
        results = [q.get() for _ in procs]
        wall = time.monotonic() - start
        for p in procs:
            p.join()
    lat = sorted(x for r in results for x in r[0])
    cpu = sum(r[1] for r in results)
    return {"tx_per_s": len(lat) / wall, "p50_ms": lat[len(lat) // 2] * 1000,
            "p99_ms": lat[int(len(lat) * 0.99)] * 1000, "max_ms": lat[-1] * 1000,
            "cpu_us_per_tx": cpu / len(lat) * 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=4, help="threads per process (2 processes)")
    ap.add_argument("--tx", type=int, default=150, help="transactions per thread per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rows: dict[str, list[dict[str, float]]] = {"busy": [], "queue": []}
    for r in range(args.rounds):
        for mode in (("busy", "queue") if r % 2 == 0 else ("queue", "busy")):
            rows[mode].append(_round(mode, args.threads, args.tx))
    print(f"2 processes x {args.threads} threads x {args.tx} write transactions, "
          f"{args.rounds} rounds (medians); {os.cpu_count()} CPUs")
    print(f"{'mode':<6} {'tx/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'CPU us/tx':>10}")
    for mode, rs in rows.items():
        med = {k: statistics.median(x[k] for x in rs) for k in rs[0]}
        print(f"{mode:<6} {med['tx_per_s']:8.0f} {med['p50_ms']:8.1f} {med['p99_ms']:8.1f} "
              f"{med['max_ms']:8.1f} {med['cpu_us_per_tx']:10.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
