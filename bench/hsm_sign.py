#!/usr/bin/env python3
"""Signatures per second through the session pool against raw python-pkcs11.

Measures, on one throw-away SoftHSM token and one key, in the same run:

* ``raw``  python-pkcs11 alone: one session per process (or thread), the
  private key object looked up once, then ``priv.sign(...)`` in a loop;
* ``pool`` the same token operation through ``SessionPool.run`` and the
  per-session key cache (``private_key_object``): what the pool costs;
* ``full`` ``TokenECPrivateKey.sign`` / ``TokenRSAPrivateKey.sign``: pool plus
  hashing, DER encoding and the software verification of every signature,
  i.e. what a certificate signature really costs.

Each in 1 and 2 worker processes (spawned; each builds its own module,
sessions and pool; the rates are summed), optionally in 2 threads of one
process (``--threads``). Each mode runs for ``--seconds`` per round; within a
round the three modes take turns in ``--slice`` second slices, so background
load hits them alike. Over ``--rounds`` rounds the median rate, and the median
of the per-round ratios to raw, are reported.

It prints numbers and never fails on them: the goal (the pool costs at most
10% of raw) is reported, not asserted.

    .venv/bin/python bench/hsm_sign.py [--key-type ec-p256] [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

MODES = ("raw", "pool", "full")
KEY_LABEL = "bench-key"
TOKEN_LABEL = "bench"
GOAL_PERCENT = 10.0
WARMUP_OPS = 20
# A message about the size of a certificate's to-be-signed part.
MESSAGE = bytes(range(256)) * 2


# -- setup in the parent ---------------------------------------------------------


def make_token(directory: Path, key_type: str) -> dict[str, Any]:
    """A fresh SoftHSM store, token and key pair; returns the profile (as data) to reach it."""
    from appliance.hsm import softhsm
    from appliance.hsm.keys import generate_keypair
    from appliance.hsm.pool import SessionPool
    from appliance.hsm.profile import HsmProfile

    conf = softhsm.write_config(directory / "softhsm")
    so_pin, user_pin = softhsm.new_pin(), softhsm.new_pin()
    softhsm.init_token(conf, TOKEN_LABEL, so_pin, user_pin)
    pin_file = directory / "user.pin"
    fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(user_pin + "\n")
    del so_pin, user_pin
    data: dict[str, Any] = {
        "name": "bench-softhsm",
        "module": str(softhsm.find_module()),
        "token": {"label": TOKEN_LABEL},
        "pin": {"file": str(pin_file)},
        "pool_size": 4,
        "module_env": {"SOFTHSM2_CONF": str(conf)},
    }
    pool = SessionPool(HsmProfile.model_validate(data))
    try:
        generate_keypair(pool, KEY_LABEL, key_type)
    finally:
        pool.close()
    return data


# -- the worker process ------------------------------------------------------------


@dataclass
class Worker:
    """Everything one process signs with: raw sessions, a pool, the key class."""

    profile_data: dict[str, Any]
    max_threads: int
    raw_ops: list[Callable[[], Any]] = field(default_factory=list)
    pool_ops: list[Callable[[], Any]] = field(default_factory=list)
    full_ops: list[Callable[[], Any]] = field(default_factory=list)
    noop_ops: list[Callable[[], Any]] = field(default_factory=list)
    _closers: list[Callable[[], Any]] = field(default_factory=list)

    def setup(self) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
        from pkcs11 import Attribute, Mechanism, ObjectClass

        from appliance.hsm.keys import find_key, private_key_object
        from appliance.hsm.pool import SessionPool
        from appliance.hsm.profile import HsmProfile, read_pin
        from appliance.hsm.signer import TokenRSAPrivateKey, token_private_key

        profile = HsmProfile.model_validate(self.profile_data)
        pool = SessionPool(profile)

        # raw: plain python-pkcs11 sessions. The token object comes from the pool only
        # because a process initialises a PKCS#11 module once, and raw and pool share it;
        # the pool has opened no session yet.
        token = pool.token
        pin = read_pin(profile.pin)
        raw_sessions = [token.open(rw=True, user_pin=pin)]  # logs this process in
        del pin
        raw_sessions += [token.open(rw=True) for _ in range(self.max_threads - 1)]
        # Close the pool first, then the raw sessions; the first raw one logs out.
        self._closers += [pool.close, *(s.close for s in reversed(raw_sessions))]

        # pool: opens its own sessions (the token says "already logged in"; the pool copes).
        info = find_key(pool, KEY_LABEL)
        public = info.public_key
        is_rsa = isinstance(public, rsa.RSAPublicKey)
        if is_rsa:
            mech, payload = Mechanism.SHA256_RSA_PKCS, MESSAGE
        else:
            mech, payload = Mechanism.ECDSA, hashlib.sha256(MESSAGE).digest()

        for session in raw_sessions:
            priv = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=KEY_LABEL)
            if bytes(priv[Attribute.ID]) != info.id:
                raise RuntimeError("raw lookup found a different key")
            # Prove once that raw signatures are real signatures by this key.
            sig = priv.sign(payload, mechanism=mech)
            if isinstance(public, rsa.RSAPublicKey):
                public.verify(sig, MESSAGE, padding.PKCS1v15(), hashes.SHA256())
            else:
                half = len(sig) // 2
                der = encode_dss_signature(int.from_bytes(sig[:half], "big"),
                                           int.from_bytes(sig[half:], "big"))
                public.verify(der, MESSAGE, ec.ECDSA(hashes.SHA256()))
            self.raw_ops.append(_bind_raw(priv, payload, mech))

        def pooled(ps: Any) -> Any:
            return private_key_object(ps, info).sign(payload, mechanism=mech)

        # Open as many pool sessions as there will be threads, key looked up in each.
        _nested_borrow(pool, self.max_threads, lambda ps: private_key_object(ps, info))
        self.pool_ops = [lambda: pool.run(pooled)] * self.max_threads

        # The pool's bookkeeping alone: borrow, cached key lookup, return; no token call.
        def bookkeeping(ps: Any) -> Any:
            return private_key_object(ps, info)

        self.noop_ops = [lambda: pool.run(bookkeeping)]

        key = token_private_key(pool, info)
        if isinstance(key, TokenRSAPrivateKey):
            rsa_key, pkcs1, sha256 = key, padding.PKCS1v15(), hashes.SHA256()
            self.full_ops = [lambda: rsa_key.sign(MESSAGE, pkcs1, sha256)] * self.max_threads
        else:
            ec_key, ecdsa = key, ec.ECDSA(hashes.SHA256())
            self.full_ops = [lambda: ec_key.sign(MESSAGE, ecdsa)] * self.max_threads

    def ops(self, mode: str) -> list[Callable[[], Any]]:
        return {"raw": self.raw_ops, "pool": self.pool_ops, "full": self.full_ops,
                "noop": self.noop_ops}[mode]

    def close(self) -> None:
        for close in self._closers:
            try:
                close()
            except Exception as exc:
                print(f"warning: closing failed: {exc!r}", file=sys.stderr)


def _bind_raw(priv: Any, payload: bytes, mech: Any) -> Callable[[], Any]:
    return lambda: priv.sign(payload, mechanism=mech)


def _nested_borrow(pool: Any, depth: int, fn: Callable[[Any], Any]) -> None:
    """Hold ``depth`` sessions at once so the pool opens them (and caches the key) now."""
    if depth <= 0:
        return

    def inner(ps: Any) -> None:
        fn(ps)
        _nested_borrow(pool, depth - 1, fn)

    pool.run(inner)


def _timed_loop(op: Callable[[], Any], seconds: float) -> tuple[int, float]:
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        op()
        n += 1
        now = time.perf_counter()
        if now >= deadline:
            return n, now - start


def _interleaved(ops: dict[str, Callable[[], Any]], seconds: float,
                 slice_seconds: float) -> dict[str, float]:
    """Each mode for ``seconds`` in total, taking turns in short slices; rates per mode.

    Taking turns means a change in background load hits every mode alike, so the
    ratios stay meaningful on a busy machine.
    """
    counts = dict.fromkeys(ops, 0)
    spent = dict.fromkeys(ops, 0.0)
    while True:
        pending = [m for m in ops if spent[m] < seconds]
        if not pending:
            return {m: counts[m] / spent[m] for m in ops}
        for m in pending:
            n, elapsed = _timed_loop(ops[m], min(slice_seconds, seconds - spent[m]))
            counts[m] += n
            spent[m] += elapsed


def _measure(worker: Worker, modes: list[str], threads: int, seconds: float,
             slice_seconds: float, wait_go: Callable[[], None]) -> dict[str, float]:
    """Run ``modes`` interleaved in ``threads`` threads; signatures per second per mode."""
    per_thread = [{m: worker.ops(m)[i] for m in modes} for i in range(threads)]
    for ops in per_thread:
        for op in ops.values():
            for _ in range(WARMUP_OPS):
                op()
    if threads == 1:
        wait_go()
        return _interleaved(per_thread[0], seconds, slice_seconds)
    results: list[dict[str, float]] = [{} for _ in range(threads)]
    errors: list[BaseException] = []
    start = threading.Barrier(threads + 1)

    def run(i: int) -> None:
        try:
            start.wait()
            results[i] = _interleaved(per_thread[i], seconds, slice_seconds)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    wait_go()
    start.wait()
    for t in pool:
        t.join()
    if errors:
        raise errors[0]
    return {m: sum(r[m] for r in results) for m in modes}


def worker_main(conn: Connection, profile_data: dict[str, Any], max_threads: int) -> None:
    """A spawned process: set up, then run measurements on command until told to stop."""
    worker = Worker(profile_data, max_threads)
    try:
        worker.setup()
        conn.send(("ready",))
        while True:
            msg = conn.recv()
            if msg[0] == "stop":
                break
            _, modes, threads, seconds, slice_seconds = msg

            def wait_go() -> None:
                conn.send(("armed",))
                if conn.recv() != ("go",):
                    raise RuntimeError("protocol error")

            conn.send(("done", _measure(worker, modes, threads, seconds, slice_seconds,
                                        wait_go)))
    except BaseException as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        worker.close()
        conn.close()


# -- the parent: schedule, collect, report -------------------------------------------


class WorkerDied(Exception):
    """A worker process ended during a measurement (a crash in the module, most likely)."""


class Workers:
    """Spawned worker processes, kept alive across measurements (spawn time is not measured)."""

    def __init__(self, profile_data: dict[str, Any], count: int, max_threads: int) -> None:
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, profile_data, max_threads),
                               daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
            # One at a time: SoftHSM's file store fails (CKR_GENERAL_ERROR) when two
            # processes log in at the same instant. Signing concurrently is fine.
            self._expect(len(self.conns) - 1, "ready")

    def _expect(self, i: int, what: str) -> tuple[Any, ...]:
        try:
            msg: tuple[Any, ...] = self.conns[i].recv()
        except (EOFError, ConnectionError):
            self.procs[i].join(timeout=5)
            code = self.procs[i].exitcode
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            raise WorkerDied(f"worker process died ({how})") from None
        if msg[0] == "error":
            raise WorkerDied(f"worker failed: {msg[1]}")
        if msg[0] != what:
            raise RuntimeError(f"worker said {msg[0]!r}, expected {what!r}")
        return msg

    def measure(self, modes: list[str], processes: int, threads: int, seconds: float,
                slice_seconds: float) -> dict[str, float]:
        """Signatures per second per mode, of ``processes`` workers together (summed)."""
        ids = range(processes)
        for i in ids:
            self.conns[i].send(("run", modes, threads, seconds, slice_seconds))
        for i in ids:
            self._expect(i, "armed")
        for i in ids:
            self.conns[i].send(("go",))
        total = dict.fromkeys(modes, 0.0)
        for i in ids:
            for mode, rate in self._expect(i, "done")[1].items():
                total[mode] += rate
        return total

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


@dataclass
class Result:
    mode: str
    processes: int
    threads: int
    rates: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # to raw, same round, same processes
    failures: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    @property
    def spread_percent(self) -> float | None:
        if len(self.rates) < 2:
            return None
        return 100.0 * (max(self.rates) - min(self.rates)) / statistics.median(self.rates)


Config = tuple[int, int]  # processes, threads per process


def plan(processes: list[int], threads: bool) -> list[Config]:
    """The configurations measured in each round (every mode interleaved within each)."""
    out = [(p, 1) for p in processes]
    if threads:
        out.append((1, 2))
    return out


class Scheduler:
    """Runs configurations on worker groups; a group whose worker dies is replaced."""

    def __init__(self, profile_data: dict[str, Any], processes: int) -> None:
        self.profile_data = profile_data
        self.processes = processes
        self.groups: dict[int, Workers] = {}

    def group(self, threads: int) -> Workers:
        # Thread runs get their own process: a module that is unsafe under threads may crash
        # it, and that must not take the process measurements with it.
        if threads not in self.groups:
            count = self.processes if threads == 1 else 1
            self.groups[threads] = Workers(self.profile_data, count, threads)
        return self.groups[threads]

    def measure(self, modes: list[str], cfg: Config, seconds: float,
                slice_seconds: float) -> dict[str, float]:
        processes, threads = cfg
        try:
            return self.group(threads).measure(modes, processes, threads, seconds,
                                               slice_seconds)
        except WorkerDied:
            group = self.groups.pop(threads, None)
            if group is not None:
                group.close()
            raise

    def close(self) -> None:
        for group in self.groups.values():
            group.close()
        self.groups.clear()


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hsm-bench-") as tmp:
        t0 = time.monotonic()
        profile_data = make_token(Path(tmp), args.key_type)
        configs = plan(args.processes, args.threads)
        results = {(m, p, t): Result(m, p, t) for p, t in configs for m in MODES}
        bookkeeping: list[float] = []
        sched = Scheduler(profile_data, max(args.processes))
        try:
            sched.group(1)
            setup_seconds = time.monotonic() - t0
            for rnd in range(args.rounds):
                order = configs if rnd % 2 == 0 else list(reversed(configs))
                modes = list(MODES) if rnd % 2 == 0 else list(reversed(MODES))
                for cfg in order:
                    try:
                        rates = sched.measure(modes, cfg, args.seconds, args.slice)
                    except WorkerDied as exc:
                        for m in MODES:
                            results[(m, *cfg)].failures.append(str(exc))
                        print(f"warning: round {rnd + 1}, {cfg[0]} process(es) x {cfg[1]} "
                              f"thread(s): {exc}", file=sys.stderr)
                        continue
                    for m in MODES:
                        res = results[(m, *cfg)]
                        res.rates.append(rates[m])
                        res.ratios.append(rates[m] / rates["raw"])
                    if args.verbose:
                        print(f"  round {rnd + 1}: {cfg[0]}p x {cfg[1]}t "
                              + "  ".join(f"{m} {rates[m]:.1f}/s" for m in MODES),
                              file=sys.stderr)
                try:
                    noop = sched.measure(["noop"], (1, 1), min(args.seconds, 0.3), args.slice)
                    bookkeeping.append(noop["noop"])
                except WorkerDied as exc:
                    print(f"warning: bookkeeping measurement failed: {exc}", file=sys.stderr)
        finally:
            sched.close()
        total_seconds = time.monotonic() - t0

    rows = []
    overhead: dict[str, float] = {}
    for (mode, p, t), res in results.items():
        ratio, spread = res.ratio, res.spread_percent
        rows.append({
            "mode": mode, "processes": p, "threads": t,
            "signatures_per_second": None if res.median is None else round(res.median, 1),
            "rounds": [round(r, 1) for r in res.rates],
            "failures": res.failures,
            "spread_percent": None if spread is None else round(spread, 1),
            "ratio_to_raw": None if ratio is None else round(ratio, 4),
            "ratio_to_raw_rounds": [round(r, 4) for r in res.ratios],
        })
        if mode == "pool" and ratio is not None:
            overhead[f"{p}p{t}t"] = round(100.0 * (1.0 - ratio), 2)
    raw_1 = results[("raw", min(args.processes), 1)].median
    per_call_us = 1e6 / statistics.median(bookkeeping) if bookkeeping else None
    return {
        "key_type": args.key_type,
        "module": profile_data["module"],
        "seconds": args.seconds,
        "slice_seconds": args.slice,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "setup_seconds": round(setup_seconds, 1),
        "total_seconds": round(total_seconds, 1),
        "results": rows,
        "pool_overhead_percent": overhead,
        "pool_overhead_worst_percent": max(overhead.values()) if overhead else None,
        "pool_bookkeeping_us_per_call": None if per_call_us is None else round(per_call_us, 2),
        "pool_bookkeeping_percent_of_raw_signature": (
            round(100.0 * per_call_us * raw_1 / 1e6, 2) if per_call_us and raw_1 else None
        ),
        "goal_percent": GOAL_PERCENT,
    }


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def print_table(report: dict[str, Any]) -> None:
    print(f"HSM signing benchmark: {report['key_type']} on SoftHSM ({report['module']})")
    print(f"{report['rounds']} round(s) x {report['seconds']:g} s per mode (modes interleaved "
          f"in {report['slice_seconds']:g} s slices), medians shown; {report['cpus']} CPU(s); "
          f"python {report['python']}; run took {report['total_seconds']:.0f} s")
    print()
    header = (f"{'mode':<5} {'procs':>5} {'threads':>7} {'sig/s':>10} {'vs raw':>7} "
              f"{'spread':>7}")
    print(header)
    print("-" * len(header))
    for row in report["results"]:
        line = (f"{row['mode']:<5} {row['processes']:>5} {row['threads']:>7} "
                f"{_fmt(row['signatures_per_second'], '.1f'):>10} "
                f"{_fmt(row['ratio_to_raw'], '.3f'):>7} "
                f"{_fmt(row['spread_percent'], '.1f', '%'):>7}")
        if row["failures"]:
            line += f"  FAILED {len(row['failures'])}x: {row['failures'][0]}"
        print(line)
    print()
    per_call = report["pool_bookkeeping_us_per_call"]
    if per_call is not None:
        share = report["pool_bookkeeping_percent_of_raw_signature"]
        print(f"pool bookkeeping alone (borrow + cached key lookup + return, no token call): "
              f"{per_call:.2f} us per call = {_fmt(share, '.1f', '%')} of a raw signature")
    worst = report["pool_overhead_worst_percent"]
    if worst is None:
        print(f"pool overhead: not measured (goal <= {GOAL_PERCENT:g}%)")
        return
    parts = ", ".join(
        f"{k.split('p')[0]} proc x {k.split('p')[1].rstrip('t')} thr: {v:.1f}%"
        for k, v in report["pool_overhead_percent"].items()
    )
    verdict = "meets the goal" if worst <= GOAL_PERCENT else "ABOVE the goal"
    print(f"pool overhead: {worst:.1f}% (goal <= {GOAL_PERCENT:g}%) - {verdict}; "
          f"worst of [{parts}]")


def main(argv: list[str] | None = None) -> int:
    from appliance.x509.algorithms import ALL_KEY_TYPES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--key-type", default="ec-p256", choices=ALL_KEY_TYPES)
    ap.add_argument("--seconds", type=float, default=3.0, help="per measurement (default 3)")
    ap.add_argument("--rounds", type=int, default=3, help="median of this many (default 3)")
    ap.add_argument("--slice", type=float, default=0.1,
                    help="modes take turns in slices of this many seconds (default 0.1)")
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2],
                    help="process counts to measure (default: 1 2)")
    ap.add_argument("--threads", action="store_true",
                    help="also raw, pool and full in 2 threads of one process (their own "
                         "worker process; adds 3 measurements per round)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ap.add_argument("-v", "--verbose", action="store_true", help="each measurement on stderr")
    args = ap.parse_args(argv)
    if args.seconds <= 0 or args.slice <= 0 or args.rounds < 1 or min(args.processes) < 1:
        ap.error("--seconds and --slice must be > 0, --rounds and --processes >= 1")
    args.processes = sorted(set(args.processes))
    report = run(args)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
