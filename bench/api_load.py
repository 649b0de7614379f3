"""The API under load, with and without 200 slowloris connections, in the same run.

64 honest clients (threads, one keep-alive TLS connection each) loop over the API: by
default ``GET /1.0/roots`` and ``GET /1.0/provisioners`` (a database read and JSON
each), and every ``--sign-every``-th request a ``POST /1.0/sign`` with a fresh CSR and
one-time token (the whole issuance pipeline). Each phase runs ``--seconds``:

* ``appliance``           the API as served (:mod:`appliance.web.api_server`);
* ``appliance + slow``    the same, while 200 slow connections (half a head trickling,
                          or ``Content-Length: 5000`` and a byte now and then) are held
                          open, reopened as soon as the server cuts them;
* ``gunicorn (+ slow)``   the previous server, gunicorn's gthread worker with the same
                          workers x threads, TLS files and Flask app, for comparison
                          (``--no-gunicorn`` skips it).

It prints requests/s, p50/p99/max latency, errors, and what the slow clients saw.
Numbers, not assertions. Every client is 127.0.0.1, so the per-address connection cap is
lifted for the run (it would refuse honest and slow clients alike beyond 256).

    .venv/bin/python bench/api_load.py                  # ~2 minutes
    .venv/bin/python bench/api_load.py --clients 64 --slow 200 --seconds 20
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import run_cli  # noqa: E402
from tests.service_helpers import Server, serving  # noqa: E402
from tests.slow_clients import SlowClients  # noqa: E402


def csr_pem(name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class Phase:
    label: str
    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    slow: str = "-"


def honest_load(base: str, roots: Path, server: Server, clients: int, seconds: float,
                sign_every: int, label: str) -> Phase:
    phase = Phase(label)
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    counter = [0]

    def client(i: int) -> None:
        session = requests.Session()
        n = 0
        while time.monotonic() < stop:
            n += 1
            t = time.monotonic()
            try:
                if sign_every and n % sign_every == 0:
                    with lock:
                        counter[0] += 1
                        name = f"load{counter[0]}-{os.getpid()}.example.com"
                    r = session.post(base + "/1.0/sign", json={
                        "csr": csr_pem(name), "ott": server.token(name)},
                        verify=str(roots), timeout=30)
                    kind = "sign"
                else:
                    path = "/1.0/roots" if n % 2 else "/1.0/provisioners"
                    r = session.get(base + path, verify=str(roots), timeout=30)
                    kind = "read"
                outcome = f"{kind} {r.status_code}"
            except requests.RequestException as exc:
                outcome = f"dropped ({type(exc).__name__})"
                session = requests.Session()
            took = time.monotonic() - t
            with lock:
                phase.latencies.append(took)
                phase.outcomes[outcome] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    phase.seconds = time.monotonic() - t0
    return phase


def run_phase(base: str, roots: Path, server: Server, port: int, args: argparse.Namespace,
              label: str, slow: int) -> Phase:
    if label in ("appliance", "gunicorn"):  # warm every worker up (self-tests, imports)
        honest_load(base, roots, server, args.clients, min(3.0, args.seconds), args.sign_every,
                    "warm-up")
    if not slow:
        return honest_load(base, roots, server, args.clients, args.seconds, args.sign_every,
                           label)
    with SlowClients("127.0.0.1", port, roots, count=slow) as attack:
        phase = honest_load(base, roots, server, args.clients, args.seconds, args.sign_every,
                            label)
        phase.slow = (f"{attack.open_now}/{slow} open at the end, {attack.opened} opened, "
                      f"{attack.cut} cut by the server, {attack.failed} failed to connect")
    return phase


def gunicorn_api(server: Server, port: int, workers: int, threads: int) -> subprocess.Popen[bytes]:
    """The API as it was served before the event-loop front: gunicorn gthread, same app."""
    tls = server.data_dir / "tls"
    env = dict(os.environ, APPLIANCE_CONFIG=str(server.data_dir / "appliance.yaml"))
    env.pop("SOFTHSM2_CONF", None)
    cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers",
           str(workers), "--threads", str(threads), "--worker-class", "gthread", "--timeout",
           "30", "--keep-alive", "5", "--log-level", "warning", "--certfile",
           str(tls / "api.crt"), "--keyfile", str(tls / "api.key"), "--ca-certs",
           str(tls / "roots.pem"), "--cert-reqs", "1", "appliance.web.wsgi:api_app()"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"https://127.0.0.1:{port}/1.0/health", verify=str(tls / "roots.pem"),
                            timeout=2).status_code == 200:
                return proc
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("gunicorn did not come up")


def print_table(phases: list[Phase], args: argparse.Namespace) -> None:
    print(f"\nAPI load: {args.clients} honest keep-alive clients, {args.seconds:g} s per phase, "
          f"1 in {args.sign_every} requests a sign; {args.workers} worker(s) x "
          f"{args.threads} thread(s); {os.cpu_count()} CPU(s)")
    print(f"{'phase':<22} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  outcomes")
    for p in phases:
        lat = sorted(p.latencies)
        if len(lat) >= 2:
            q = statistics.quantiles(lat, n=100)
            p50, p99 = q[49] * 1000, q[98] * 1000
        else:
            p50 = p99 = float("nan")
        ok = sum(v for k, v in p.outcomes.items() if k.endswith(("200", "201")))
        print(f"{p.label:<22} {ok / p.seconds:7.1f} {p50:8.1f} {p99:8.1f} "
              f"{(lat[-1] * 1000 if lat else float('nan')):8.1f}  "
              + ", ".join(f"{k}: {v}" for k, v in sorted(p.outcomes.items())))
        if p.slow != "-":
            print(f"{'':<22} slow clients: {p.slow}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--slow", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--sign-every", type=int, default=10, help="0: reads only")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--no-gunicorn", action="store_true")
    args = ap.parse_args()
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="api-load-") as tmp:
        data = Path(tmp) / "data"
        run_cli("quickstart", "--dir", str(data), check=True)
        # Every client here is 127.0.0.1: the per-address cap (256) would refuse honest
        # and slow clients alike once they are more than it; real attackers have their own
        # address. The cap is lifted so that what is measured is the cost of slow clients.
        with serving(data, rate_limit_per_minute=0, workers=args.workers,
                     threads=args.threads, max_connections_per_address=100_000) as server:
            for label, slow in (("appliance", 0), ("appliance + slow", args.slow)):
                phases.append(run_phase(server.api, server.roots, server, server.api_port,
                                        args, label, slow))
                print_table(phases[-1:], args)
        if not args.no_gunicorn:
            # The same node and port (token audiences name it), served stopped; its TLS
            # files stay valid, gunicorn serves the same Flask app with them.
            proc = gunicorn_api(server, server.api_port, args.workers, args.threads)
            try:
                for label, slow in (("gunicorn", 0), ("gunicorn + slow", args.slow)):
                    phases.append(run_phase(server.api, server.roots, server,
                                            server.api_port, args, label, slow))
                    print_table(phases[-1:], args)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    print_table(phases, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
