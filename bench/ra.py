#!/usr/bin/env python3
"""What a registration-authority hop costs: ``POST /1.0/sign`` direct at the CA, through
one RA, and through two chained RAs, in the same run on the same machine.

It builds a throw-away topology of real nodes (each its own data directory, database,
audit log and SoftHSM token, served by ``appliance serve`` on 127.0.0.1), exactly as
``tests/integration/test_ra_chain.py`` does, through ``tests/ra_helpers.py``::

    direct   client -> CA
    one RA   client -> edge-3 -> CA
    two RAs  client -> edge-2 -> edge-1 -> CA

Each path gets ``--requests`` N requests from ``--clients`` C threads, each with its own
keep-alive HTTPS session; every CSR (EC P-256) and one-time token (the entry node's own
``admin`` JWK provisioner) is made before the clock starts, and each client first sends
``--warmup`` requests that are not counted. The paths take turns, the order reversed
every other round (``--rounds``), so background load hits all alike.

It prints certificates/s and the p50/p99 latency per path, and the cost of a hop: the
added p50 latency and the added wall time per certificate, against the path one hop
shorter. All nodes share the machine's cores, so a hop's CPU is paid out of the CA's
throughput: that is the cost being measured. Numbers are reported, never asserted.

    .venv/bin/python bench/ra.py [--requests 200] [--clients 1 8] [--rounds 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TOKEN_LIFETIME = 3600  # seconds: tokens are minted before the clock starts
REQUEST_TIMEOUT = 120.0
PATHS = ("direct", "one RA", "two RAs")


@dataclass
class Result:
    path: str
    clients: int
    requests: int
    seconds: float = 0.0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    sample: dict[str, Any] | None = None  # one 201 body, checked after the run
    check: str = "-"

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float | None:
        if not self.latencies:
            return None
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs)) - 1))]


def log(verbose: bool, *msg: Any) -> None:
    if verbose:
        print(*msg, file=sys.stderr, flush=True)


def build(base: Path, verbose: bool) -> dict[str, Any]:
    """CA, edge-3 (direct) and edge-1 <- edge-2 (chained), all serving."""
    from tests.ra_helpers import make_ca, ra_import, ra_init, register, root_pem

    t0 = time.monotonic()
    ca = make_ca(base)
    nodes = [ca]
    ca.start()
    (base / "ca-root.pem").write_text(root_pem(ca))
    log(verbose, f"  CA up ({time.monotonic() - t0:.1f} s)")
    try:
        with ThreadPoolExecutor(2) as pool:
            f1 = pool.submit(ra_init, base, "edge-1", ca, ca)
            f3 = pool.submit(ra_init, base, "edge-3", ca, ca)
            (edge1, csr1), (edge3, csr3) = f1.result(), f3.result()
        ra_import(edge1, register(ca, "edge-1", csr1))
        ra_import(edge3, register(ca, "edge-3", csr3))
        nodes += [edge1, edge3]
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda n: n.start(), [edge1, edge3]))
        edge2, csr2 = ra_init(base, "edge-2", edge1, ca)
        ra_import(edge2, register(edge1, "edge-2", csr2))
        nodes.append(edge2)
        edge2.start()
    except BaseException:
        for n in reversed(nodes):
            n.stop()
        raise
    log(verbose, f"  topology up ({time.monotonic() - t0:.1f} s)")
    return {"direct": ca, "one RA": edge3, "two RAs": edge2, "nodes": nodes,
            "setup_seconds": time.monotonic() - t0}


def make_bodies(node: Any, n: int, tag: str) -> list[bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from appliance.provisioners import tokens

    key = node.offline().key("admin")
    kid = tokens.public_jwk(key.public_key())["kid"]
    audience = node.offline().audience
    out = []
    for i in range(n):
        name = f"{tag}-{i}.bench.test"
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
               .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
        ott = tokens.mint(key, provisioner="admin", audience=audience, sans=[name],
                          lifetime=TOKEN_LIFETIME, kid=kid)
        out.append(json.dumps({"csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
                               "ott": ott}).encode())
    return out


def drive(url: str, root: str, warm: list[list[bytes]], bodies: list[bytes],
          clients: int, path: str) -> Result:
    """C threads, each a keep-alive session: its warm-up requests, then the shared batch."""
    import requests

    res = Result(path, clients, len(bodies))
    it = iter(bodies)
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)
    headers = {"Content-Type": "application/json"}

    def client(k: int) -> None:
        with requests.Session() as s:
            s.trust_env = False
            s.verify = root
            for body in warm[k]:
                s.post(url, data=body, headers=headers, timeout=REQUEST_TIMEOUT)
            barrier.wait()
            while True:
                with lock:
                    body = next(it, None)
                if body is None:
                    return
                t = time.perf_counter()
                try:
                    r = s.post(url, data=body, headers=headers, timeout=REQUEST_TIMEOUT)
                    status = str(r.status_code)
                except requests.RequestException as exc:
                    status = type(exc).__name__
                dt = time.perf_counter() - t
                with lock:
                    if status == "201":
                        res.ok += 1
                        res.latencies.append(dt)
                        if res.sample is None:
                            res.sample = r.json()
                    else:
                        res.errors[status] = res.errors.get(status, 0) + 1

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    res.seconds = time.perf_counter() - t0
    return res


EXPECTED_PATH = {"direct": None, "one RA": ["edge-3"], "two RAs": ["edge-2", "edge-1"]}


def check_sample(ca: Any, res: Result) -> str:
    """One issued certificate per measurement, checked in full: signed by the issuing CA
    its chain names, stored at the CA with the path it came by ("ok", or what is wrong)."""
    from cryptography import x509

    if res.sample is None:
        return "no sample"
    try:
        leaf = x509.load_pem_x509_certificate(res.sample["crt"].encode())
        issuer = x509.load_pem_x509_certificate(res.sample["certChain"][1].encode())
        leaf.verify_directly_issued_by(issuer)
        row = ca.offline().certificate_rows().get(f"{leaf.serial_number:x}")
        if row is None or row["status"] != "issued":
            return "not issued at the CA"
        stored = json.loads(row["ra_path"]) if row["ra_path"] else None
        if stored != EXPECTED_PATH[res.path]:
            return f"path at the CA {stored}"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def run(args: argparse.Namespace) -> dict[str, Any]:
    base_ctx = (tempfile.TemporaryDirectory(prefix="bench-ra-") if args.keep is None
                else None)
    base = Path(base_ctx.name) if base_ctx is not None else args.keep
    base.mkdir(parents=True, exist_ok=True)
    log(args.verbose, f"building the topology in {base}")
    topo = build(base, args.verbose)
    root = str(base / "ca-root.pem")
    results: list[Result] = []
    try:
        for rnd in range(args.rounds):
            for clients in args.clients:
                order = PATHS if rnd % 2 == 0 else tuple(reversed(PATHS))
                for path in order:
                    node = topo[path]
                    tag = f"r{rnd}c{clients}{path.replace(' ', '')}-{os.urandom(2).hex()}"
                    made = make_bodies(node, args.requests + clients * args.warmup, tag)
                    warm = [made[k * args.warmup:(k + 1) * args.warmup] for k in range(clients)]
                    res = drive(node.api + "/1.0/sign", root, warm,
                                made[clients * args.warmup:], clients, path)
                    res.check = check_sample(topo["direct"], res)
                    results.append(res)
                    log(args.verbose, f"  round {rnd + 1}, {clients} client(s), {path}: "
                                      f"{res.rate:.1f}/s, errors {res.errors or 0}")
    finally:
        for n in reversed(topo["nodes"]):
            n.stop()
        if base_ctx is not None:
            base_ctx.cleanup()
    return {"requests": args.requests, "rounds": args.rounds, "cpus": os.cpu_count(),
            "setup_seconds": round(topo["setup_seconds"], 1),
            "results": [summary(r) for r in results],
            "hops": hop_costs(results, args.clients)}


def summary(r: Result) -> dict[str, Any]:
    p50, p99 = r.pct(50), r.pct(99)
    return {"path": r.path, "clients": r.clients, "ok": r.ok, "errors": r.errors,
            "seconds": round(r.seconds, 3), "certs_per_second": round(r.rate, 1),
            "p50_ms": None if p50 is None else round(p50 * 1000, 1),
            "p99_ms": None if p99 is None else round(p99 * 1000, 1), "check": r.check}


def hop_costs(results: list[Result], client_counts: list[int]) -> list[dict[str, Any]]:
    """Per client count: what each added hop adds to the median latency and to the wall
    time per certificate (1/rate), medians over the rounds."""
    out = []
    for c in client_counts:
        by: dict[str, list[Result]] = {p: [r for r in results if r.clients == c and r.path == p]
                                       for p in PATHS}
        def med(p: str, f: Any, by: dict[str, list[Result]] = by) -> float | None:
            xs = [v for v in (f(r) for r in by[p]) if v is not None]
            return statistics.median(xs) if xs else None

        for lo, hi in (("direct", "one RA"), ("one RA", "two RAs")):
            p_lo, p_hi = med(lo, lambda r: r.pct(50)), med(hi, lambda r: r.pct(50))
            w_lo = med(lo, lambda r: 1 / r.rate if r.rate else None)
            w_hi = med(hi, lambda r: 1 / r.rate if r.rate else None)
            out.append({"clients": c, "from": lo, "to": hi,
                        "added_p50_ms": None if p_lo is None or p_hi is None
                        else round((p_hi - p_lo) * 1000, 1),
                        "added_wall_ms_per_cert": None if w_lo is None or w_hi is None
                        else round((w_hi - w_lo) * 1000, 2)})
    return out


def print_table(rep: dict[str, Any]) -> None:
    print(f"RA benchmark: POST /1.0/sign, {rep['requests']} requests per measurement, "
          f"{rep['rounds']} round(s), {rep['cpus']} CPU(s); topology made in "
          f"{rep['setup_seconds']} s")
    print("paths: direct = client -> CA; one RA = -> edge-3 -> CA; "
          "two RAs = -> edge-2 -> edge-1 -> CA")
    print()
    head = f"{'path':<8} {'clients':>7} {'ok':>5} {'errors':>7} {'certs/s':>8} " \
           f"{'p50 ms':>8} {'p99 ms':>8}  check"
    print(head)
    print("-" * len(head))
    for r in rep["results"]:
        errs = sum(r["errors"].values())
        print(f"{r['path']:<8} {r['clients']:>7} {r['ok']:>5} {errs:>7} "
              f"{r['certs_per_second']:>8.1f} {_f(r['p50_ms']):>8} {_f(r['p99_ms']):>8}  "
              f"{r['check']}")
    print()
    print("per hop (medians over rounds):")
    for h in rep["hops"]:
        print(f"  {h['clients']} client(s), {h['from']} -> {h['to']}: "
              f"{_f(h['added_p50_ms'], '+.1f')} ms p50, "
              f"{_f(h['added_wall_ms_per_cert'], '+.1f')} ms wall time per certificate")
    for r in rep["results"]:
        if r["errors"]:
            print(f"errors ({r['path']}, {r['clients']} client(s)): {r['errors']}")


def _f(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200, help="counted requests per path")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8],
                    help="concurrent keep-alive clients (one measurement each)")
    ap.add_argument("--warmup", type=int, default=2, help="uncounted requests per client first")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--keep", type=Path, default=None,
                    help="build the topology in this (empty) folder and keep it")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ap.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    args = ap.parse_args(argv)
    if args.requests < 1 or args.rounds < 1 or min(args.clients) < 1 or args.warmup < 0:
        ap.error("--requests, --rounds and --clients must be positive")
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        ap.error(f"{args.keep} is not empty")
    rep = run(args)
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print_table(rep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
