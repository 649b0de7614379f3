"""The fault campaign: 300 concurrent signs from 30 threads while something breaks.

Scenarios (each on a fresh copy of one quickstart data directory, served for real):

- ``none``: the baseline, nothing breaks;
- ``kill``: one API worker is SIGKILLed after 100 answers;
- ``dblock``: another process holds the SQLite write lock for ``--lock-seconds`` (40) after
  50 answers;
- ``token``: the SoftHSM token's files are moved away for ``--token-seconds`` (30) after 50
  answers, then back.

For each it prints what clients got (201, 503 by error code, dropped connections, anything
else), how long signing took to come back after the fault ended, and checks what the
database says afterwards: every certificate a client received is stored as issued and
audited, no serial repeats, no reservation is left open once the reservation timeout has
passed (a killed request's ends ``failed`` and audited), and ``audit verify`` passes.
Numbers, not assertions: the exit code is 1 only if an invariant broke.

    .venv/bin/python bench/faults.py                   # every scenario (~5 minutes)
    .venv/bin/python bench/faults.py --only kill dblock --requests 300 --threads 30
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.ceremony_helpers import clone_data_dir  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.service_helpers import Server, make_csr, serving  # noqa: E402

RESERVATION_TIMEOUT = 20


def sign(server: Server, name: str, csr: str, ott: str) -> tuple[str, str | None, float]:
    t0 = time.monotonic()
    try:
        r = requests.post(server.api + "/1.0/sign", json={"csr": csr, "ott": ott},
                          verify=str(server.roots), timeout=120)
    except requests.RequestException as exc:
        return f"dropped ({type(exc).__name__})", None, time.monotonic() - t0
    try:
        body = r.json()
    except ValueError:
        body = {}
    if r.status_code == 201:
        return "201", str(body.get("serial")), time.monotonic() - t0
    return f"{r.status_code} {body.get('error', '?')}", None, time.monotonic() - t0


class Fault:
    """Breaks something once ``after`` answers have come back; records when it ended."""

    def __init__(self, kind: str, server: Server, after: int, args: argparse.Namespace):
        self.kind, self.server, self.after, self.args = kind, server, after, args
        self.started: float | None = None
        self.ended: float | None = None
        self._lock = threading.Lock()
        self._answers = 0

    def answered(self) -> None:
        with self._lock:
            self._answers += 1
            go = self._answers == self.after and self.started is None
            if go:
                self.started = time.monotonic()
        if go:
            threading.Thread(target=self._break, daemon=True).start()

    def _break(self) -> None:
        if self.kind == "kill":
            os.kill(self.server.api_workers()[0], signal.SIGKILL)
        elif self.kind == "dblock":
            conn = sqlite3.connect(self.server.data_dir / "appliance.db", timeout=30,
                                   isolation_level=None)
            conn.execute("BEGIN EXCLUSIVE")
            time.sleep(self.args.lock_seconds)
            conn.execute("ROLLBACK")
            conn.close()
        elif self.kind == "token":
            tokens = self.server.data_dir / "softhsm" / "tokens"
            away = tokens.with_name("tokens.away")
            os.rename(tokens, away)
            time.sleep(self.args.token_seconds)
            os.rename(away, tokens)
        self.ended = time.monotonic()


def check(server: Server, serials: list[str]) -> dict[str, Any]:
    """What the database says once the reservation timeout has passed."""
    deadline = time.monotonic() + RESERVATION_TIMEOUT * 3
    nudge = 0
    while time.monotonic() < deadline:
        with server.db() as db:
            left = db.execute("SELECT COUNT(*) FROM certificates WHERE status = 'reserved'"
                              ).fetchone()[0]
        if not left:
            break
        nudge += 1
        name = f"nudge-{nudge}.example.com"
        sign(server, name, make_csr(server.data_dir / "work", f"DNS:{name}"), server.token(name))
        time.sleep(2)
    rows = server.certificate_rows()
    statuses = Counter(r["status"] for r in rows.values())
    issued_audited = {e["object_ids"]["serial"] for e in server.events("certificate.issued")}
    failed_audited = {e["object_ids"]["serial"] for e in server.events()
                      if e["event_type"] in ("certificate.failed",
                                             "certificate.reservation.abandoned")}
    abandoned = len(server.events("certificate.reservation.abandoned"))
    problems = []
    if len(serials) != len(set(serials)):
        problems.append("a serial was handed out twice")
    missing = [s for s in serials if s not in rows or rows[s]["status"] != "issued"]
    if missing:
        problems.append(f"{len(missing)} answered certificate(s) not stored as issued")
    if not set(serials) <= issued_audited:
        problems.append("answered certificate(s) without an issuance audit record")
    if statuses.get("reserved"):
        problems.append(f"{statuses['reserved']} reservation(s) left open")
    unaudited = [s for s, r in rows.items() if r["status"] == "failed" and s not in failed_audited]
    if unaudited:
        problems.append(f"{len(unaudited)} failed reservation(s) without an audit record")
    verify = server.cli("audit", "verify", check=False)
    if verify.returncode != 0:
        problems.append("audit verify failed")
    return {"statuses": dict(statuses), "abandoned_ended": abandoned, "problems": problems}


def scenario(kind: str, base: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    data = clone_data_dir(base, work / kind)
    with serving(data, rate_limit_per_minute=0, reservation_timeout_seconds=RESERVATION_TIMEOUT
                 ) as server:
        names = [f"{kind}-{i}.example.com" for i in range(args.requests)]
        csrs = [make_csr(work / f"{kind}-csr", f"DNS:{n}") for n in names]
        otts = [server.token(n) for n in names]
        after = {"kill": 100, "dblock": 50, "token": 50}.get(kind, 0)
        fault = Fault(kind, server, after, args) if kind != "none" else None
        results: list[tuple[str, str | None, float, float]] = []
        t0 = time.monotonic()

        def one(i: int) -> tuple[str, str | None, float, float]:
            outcome, serial, took = sign(server, names[i], csrs[i], otts[i])
            if fault is not None:
                fault.answered()
            return outcome, serial, took, time.monotonic()

        with ThreadPoolExecutor(args.threads) as pool:
            results = list(pool.map(one, range(args.requests)))
        wall = time.monotonic() - t0
        while fault is not None and fault.ended is None:
            time.sleep(0.2)
        # After the fault: how long until a sign succeeds again (one of the campaign's own
        # answers if any came after the fault ended, else a probe sent from then on).
        recovery = None
        if fault is not None and fault.ended is not None:
            after_end = [done for o, _, _, done in results if o == "201" and done > fault.ended]
            if after_end:
                recovery = min(after_end) - fault.ended
            end = time.monotonic() + (0 if after_end else 120)
            i = 0
            while time.monotonic() < end:
                i += 1
                n = f"{kind}-after-{i}.example.com"
                outcome, _, _ = sign(server, n, make_csr(work / f"{kind}-csr", f"DNS:{n}"),
                                     server.token(n))
                if outcome == "201":
                    recovery = time.monotonic() - fault.ended
                    break
                time.sleep(0.5)
        serials = [s for o, s, _, _ in results if o == "201" and s]
        outcomes = Counter(o for o, _, _, _ in results)
        slow = sorted(t for _, _, t, _ in results)
        out = {"scenario": kind, "wall_s": round(wall, 1), "outcomes": dict(outcomes),
               "p50_s": round(slow[len(slow) // 2], 2), "max_s": round(slow[-1], 2),
               "recovered_after_fault_s": None if recovery is None else round(recovery, 1),
               **check(server, serials)}
    shutil.rmtree(data, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", default=["none", "kill", "dblock", "token"])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--threads", type=int, default=30)
    ap.add_argument("--lock-seconds", type=float, default=40)
    ap.add_argument("--token-seconds", type=float, default=30)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="appliance-faults-"))
    broke = False
    try:
        base = work / "base"
        run_cli("quickstart", "--dir", str(base), check=True)
        print(f"{args.requests} signs from {args.threads} threads per scenario; reservation "
              f"timeout {RESERVATION_TIMEOUT}s; DB lock {args.lock_seconds}s; token away "
              f"{args.token_seconds}s")
        for kind in args.only:
            r = scenario(kind, base, work, args)
            broke = broke or bool(r["problems"])
            print(f"\n== {kind}: {r['wall_s']} s wall, latency p50 {r['p50_s']} s, "
                  f"max {r['max_s']} s")
            for outcome, n in sorted(r["outcomes"].items()):
                print(f"   {n:4d}  {outcome}")
            if r["recovered_after_fault_s"] is not None:
                print(f"   signing back {r['recovered_after_fault_s']} s after the fault ended "
                      "(no restart)")
            print(f"   database after: {r['statuses']}; abandoned reservations ended: "
                  f"{r['abandoned_ended']}")
            print("   invariants: " + ("held" if not r["problems"] else
                                        "BROKEN: " + "; ".join(r["problems"])))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if broke else 0


if __name__ == "__main__":
    raise SystemExit(main())
