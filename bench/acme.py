#!/usr/bin/env python3
"""Complete ACME orders per second and server CPU per certificate, appliance vs pebble.

Measures, in one run:

* ``appliance`` ``appliance serve`` (``--workers`` x ``--threads``, rate limit
  off) on a data directory made by ``appliance quickstart`` (or kept with ``--keep``),
  its ``acme`` provisioner (EAB not required): ``--clients`` N client threads in this
  process, each with its own ACME account (made before the clock) and keep-alive HTTPS
  session, run ``--orders`` complete orders between them: newOrder, the authorization
  (POST-as-GET), the http-01 challenge, finalize, the certificate (POST-as-GET). The
  validation is real: the appliance resolves ``b<random>.bench.test`` through a small
  DNS server in this process (``tests/acme_dns.py``, A 127.0.0.1 for every name) and
  fetches the key authorization from an http-01 responder in this process
  (``acme.http01_port`` and ``acme.resolvers`` are set in appliance.yaml for the run);
* ``sign``    ``POST /1.0/sign`` on the same appliance with the same number of clients
  (``bench/issuance.py``'s service measurement: pilot, warm-up, window);
* ``pebble``  Debian's ``pebble`` (Let's Encrypt's test CA) with
  ``PEBBLE_VA_ALWAYS_VALID=1`` (no validation), ``PEBBLE_WFE_NONCEREJECT=0`` and
  ``PEBBLE_VA_NOSLEEP=1`` (no random sleep before its always-valid answer), driven by
  the same client loop. Pebble validates and issues in the background, so the loop
  polls the authorization and the order (every 20 ms, Retry-After ignored) when an
  answer is not final yet. The appliance validates in the background too, but a challenge
  POST waits up to ``acme.validation_wait_seconds`` (1 s) for the outcome, so with a
  quick http-01 target it answers the final status and the loop does not poll.

Server CPU is user + system time from /proc of every process in the server's process
group (appliance: ``serve``, both listeners' supervisors and their workers; pebble: its one
process), reaped children included, read before and after the timed orders and divided
by the certificates issued. The script prints numbers and never fails on them: the goal
(issue 16: appliance CPU per certificate at most 2x pebble's, with the appliance's real
validation against pebble's none) is reported, not asserted.

Needs Debian's pebble: ``scripts/bench-peers.sh`` installs it (and the other peers).

    .venv/bin/python bench/acme.py [--clients 4] [--orders 200] [--keep DIR]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.server
import itertools
import json
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
for _p in (str(BENCH_DIR), str(REPO)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import issuance as base  # noqa: E402  (bench/issuance.py: data dir, server, /1.0/sign)

ACME_PROVISIONER = "acme"
PEBBLE = "/usr/bin/pebble"
REQUEST_TIMEOUT = 60.0
POLL_INTERVAL = 0.02  # seconds between polls of a pending authorization / processing order
POLL_LIMIT = 60.0  # seconds an order may stay unfinished before the loop gives up
WARMUP_ORDERS = 2  # per client, before the clock (accounts are made before that)
SIGN_SECONDS = 8.0
SIGN_WARMUP = 1.0
VERIFY_SAMPLE = 8
IDLE_SECONDS = 3.0  # the server's CPU with no requests, read before the timed orders
GOAL_RATIO = 2.0  # issue 16: ACME server CPU per certificate <= 2x pebble's, same run
GOAL = f"ACME server CPU per cert <= {GOAL_RATIO:g}x pebble"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


# -- server CPU: bench/issuance.py's process-group readings --------------------------------

group_cpu = base.group_cpu
cpu_delta = base.cpu_delta


# -- the ACME client -------------------------------------------------------------------------


class AcmeError(Exception):
    def __init__(self, what: str, status: int, body: str) -> None:
        super().__init__(f"{what}: HTTP {status} {body[:300]}")
        self.kind = f"{what} HTTP {status}"
        m = re.search(r"urn:ietf:params:acme:error:(\w+)", body)
        if m:
            self.kind += f" {m.group(1)}"


@dataclass
class Prepared:
    name: str
    csr_der: bytes


def prepare_csrs(n: int) -> list[Prepared]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out = []
    for _ in range(n):
        name = f"b{secrets.token_hex(6)}.bench.test"
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
               .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
        out.append(Prepared(name, csr.public_bytes(serialization.Encoding.DER)))
    return out


class AcmeClient:
    """One account (EC P-256, ES256), one keep-alive session, nonces carried over."""

    def __init__(self, directory_url: str, verify: str, responder: Responder | None) -> None:
        import requests
        from cryptography.hazmat.primitives.asymmetric import ec

        self.session = requests.Session()
        self.session.trust_env = False  # no proxies; REQUESTS_CA_BUNDLE would override verify
        self.session.verify = verify
        self.responder = responder
        self.key = ec.generate_private_key(ec.SECP256R1())
        nums = self.key.public_key().public_numbers()
        self.jwk = {"crv": "P-256", "kty": "EC", "x": b64(nums.x.to_bytes(32, "big")),
                    "y": b64(nums.y.to_bytes(32, "big"))}
        canonical = json.dumps(self.jwk, sort_keys=True, separators=(",", ":")).encode()
        self.thumbprint = b64(hashlib.sha256(canonical).digest())  # RFC 7638
        self.kid: str | None = None
        self.nonce: str | None = None
        self.requests = 0
        self.polls = 0
        self.bad_nonces = 0
        self.steps: Counter[str] = Counter()  # request kind -> seconds waited
        self.step_counts: Counter[str] = Counter()
        r = self.session.get(directory_url, timeout=REQUEST_TIMEOUT)
        if r.status_code != 200:
            raise AcmeError("directory", r.status_code, r.text)
        self.directory: dict[str, Any] = r.json()

    def close(self) -> None:
        self.session.close()

    def _fresh_nonce(self) -> str:
        r = self.session.head(self.directory["newNonce"], timeout=REQUEST_TIMEOUT)
        self.requests += 1
        nonce = r.headers.get("Replay-Nonce")
        if not nonce:
            raise AcmeError("newNonce", r.status_code, "no Replay-Nonce")
        return nonce

    def post(self, what: str, url: str, payload: dict[str, Any] | None) -> Any:
        """A JWS POST (``payload`` None: POST-as-GET); retries a badNonce answer twice."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        body64 = "" if payload is None else b64(json.dumps(payload).encode())
        for attempt in range(3):
            nonce, self.nonce = self.nonce, None
            if nonce is None:
                nonce = self._fresh_nonce()
            protected: dict[str, Any] = {"alg": "ES256", "nonce": nonce, "url": url}
            if self.kid is not None:
                protected["kid"] = self.kid
            else:
                protected["jwk"] = self.jwk
            prot64 = b64(json.dumps(protected).encode())
            der = self.key.sign(f"{prot64}.{body64}".encode(), ec.ECDSA(hashes.SHA256()))
            r_, s_ = decode_dss_signature(der)
            jws = {"protected": prot64, "payload": body64,
                   "signature": b64(r_.to_bytes(32, "big") + s_.to_bytes(32, "big"))}
            t = time.perf_counter()
            resp = self.session.post(url, data=json.dumps(jws),
                                     headers={"Content-Type": "application/jose+json"},
                                     timeout=REQUEST_TIMEOUT)
            self.steps[what] += time.perf_counter() - t
            self.step_counts[what] += 1
            self.requests += 1
            self.nonce = resp.headers.get("Replay-Nonce")
            if resp.status_code < 300:
                return resp
            if resp.status_code == 400 and "badNonce" in resp.text and attempt < 2:
                self.bad_nonces += 1
                continue
            raise AcmeError(what, resp.status_code, resp.text)
        raise AssertionError("unreachable")

    def new_account(self) -> None:
        r = self.post("newAccount", self.directory["newAccount"],
                      {"termsOfServiceAgreed": True})
        self.kid = r.headers["Location"]

    def _poll(self, what: str, url: str, done: str) -> dict[str, Any]:
        deadline = time.monotonic() + POLL_LIMIT
        while True:
            time.sleep(POLL_INTERVAL)
            self.polls += 1
            obj: dict[str, Any] = self.post(what, url, None).json()
            if obj.get("status") == done:
                return obj
            if obj.get("status") not in ("pending", "processing", "ready"):
                raise AcmeError(what, 200, f"status {obj.get('status')}: "
                                f"{json.dumps(obj.get('error'))}")
            if time.monotonic() > deadline:
                raise AcmeError(what, 200, f"still {obj.get('status')} after {POLL_LIMIT:g} s")

    def order(self, item: Prepared) -> str:
        """One complete order; the PEM chain."""
        r = self.post("newOrder", self.directory["newOrder"],
                      {"identifiers": [{"type": "dns", "value": item.name}]})
        order_url = r.headers["Location"]
        order = r.json()
        for authz_url in order["authorizations"]:
            authz = self.post("authz", authz_url, None).json()
            if authz.get("status") == "valid":
                continue
            chall = next(c for c in authz["challenges"] if c["type"] == "http-01")
            if self.responder is not None:
                self.responder.put(chall["token"], f"{chall['token']}.{self.thumbprint}")
            try:
                got = self.post("challenge", chall["url"], {}).json()
                if got.get("status") != "valid":
                    self._poll("authz poll", authz_url, "valid")
            finally:
                if self.responder is not None:
                    self.responder.drop(chall["token"])
        order = self.post("finalize", order["finalize"], {"csr": b64(item.csr_der)}).json()
        if order.get("status") != "valid":
            order = self._poll("order poll", order_url, "valid")
        pem: str = self.post("certificate", order["certificate"], None).text
        return pem


# -- validation helpers (appliance only) -----------------------------------------------------


class Responder:
    """http-01 responder on 127.0.0.1: /.well-known/acme-challenge/<token>."""

    def __init__(self) -> None:
        self.answers: dict[str, str] = {}
        self.lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                prefix = "/.well-known/acme-challenge/"
                token = self.path[len(prefix):] if self.path.startswith(prefix) else ""
                with owner.lock:
                    answer = owner.answers.get(token)
                    if answer is None:
                        owner.misses += 1
                    else:
                        owner.hits += 1
                body = (answer or "not found").encode()
                self.send_response(200 if answer is not None else 404)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def put(self, token: str, key_authorization: str) -> None:
        with self.lock:
            self.answers[token] = key_authorization

    def drop(self, token: str) -> None:
        with self.lock:
            self.answers.pop(token, None)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the appliance ---------------------------------------------------------------------------

_MARKER = "# acme: added by bench/acme.py for this run"


def without_blocks(text: str, names: tuple[str, ...]) -> str:
    """``text`` minus the top-level mappings ``names`` (and this script's marker)."""
    start = re.compile(rf"^({'|'.join(names)}):\s*(#.*)?$")
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        if line == _MARKER:
            continue
        if start.match(line):
            skipping = True
            continue
        if skipping and (not line.strip() or line[:1] in (" ", "\t")):
            continue
        skipping = False
        out.append(line)
    while out and not out[-1].strip():
        out.pop()
    return "\n".join(out) + "\n"


class ApplianceServer(base.Server):
    """bench/issuance.py's server, plus an ``acme:`` block for the local validation."""

    def __init__(self, data_dir: Path, log_path: Path, workers: int, threads: int,
                 http01_port: int, dns_port: int) -> None:
        super().__init__(data_dir, log_path, workers, threads)
        self.http01_port = http01_port
        self.dns_port = dns_port

    def configure(self) -> None:
        self.api_port, self.http_port = base.free_ports(2)
        text = without_blocks(base.without_service_block(self.original_config),
                              ("service", "acme"))
        self.config_path.write_text(
            text + base.service_block(self.api_port, self.http_port, self.workers, self.threads)
            + f"\n{_MARKER}\nacme:\n  http01_port: {self.http01_port}\n"
              f"  resolvers: [\"127.0.0.1:{self.dns_port}\"]\n",
            encoding="utf-8")

    @property
    def directory_url(self) -> str:
        return f"{self.base_url}/acme/{ACME_PROVISIONER}/directory"


def api_processes(server: ApplianceServer) -> set[int]:
    """The API's supervisor (``appliance.web.api_server``) and its workers."""
    procs = server.processes()
    arbiters = {pid for pid, (ppid, cmd) in procs.items()
                if "appliance.web.api_server" in cmd and server.proc is not None
                and ppid == server.proc.pid}
    return arbiters | {pid for pid, (ppid, _) in procs.items() if ppid in arbiters}


# -- pebble -----------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble bench 127.0.0.1")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "pebble-cert.pem", directory / "pebble-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


class Pebble:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.cert, self.key = self_signed(tmp)
        self.log_path = tmp / "pebble.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self, timeout: float) -> None:
        import requests

        self.port, mgmt, http_port, tls_port = base.free_ports(4)
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{mgmt}",
            "certificate": str(self.cert), "privateKey": str(self.key),
            "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": False}}
        cfg = self.tmp / "pebble-config.json"
        cfg.write_text(json.dumps(config, indent=2), encoding="utf-8")
        env = dict(os.environ, PEBBLE_VA_ALWAYS_VALID="1", PEBBLE_WFE_NONCEREJECT="0",
                   PEBBLE_VA_NOSLEEP="1")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([PEBBLE, "-config", str(cfg)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=self.tmp, start_new_session=True)
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        with requests.Session() as s:
            s.trust_env = False
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise base.ServerError(f"pebble exited with code {self.proc.returncode}:\n"
                                           + _tail(self.log_path.read_text(errors="replace"), 20))
                try:
                    r = s.get(self.directory_url, verify=str(self.cert), timeout=2)
                    if r.status_code == 200:
                        return
                    last = f"HTTP {r.status_code}"
                except requests.RequestException as exc:
                    last = f"{type(exc).__name__}: {exc}"[:200]
                time.sleep(0.1)
        raise base.ServerError(f"pebble did not answer {self.directory_url} within {timeout:g} s "
                               f"(last: {last})")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                return proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


# -- the timed loop ---------------------------------------------------------------------------


@dataclass
class Phase:
    server: str
    clients: int
    orders: int
    ok: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_examples: list[str] = field(default_factory=list)
    server_cpu: float = 0.0  # seconds in the timed phase
    api_cpu: float | None = None  # of that: the API's supervisor and workers
    client_cpu: float = 0.0  # this process's CPU seconds in the timed phase
    other_cores: float | None = None  # the rest of the machine, cores busy
    idle_cores: float | None = None  # the server's CPU with no requests, before the orders
    requests: int = 0
    polls: int = 0
    bad_nonces: int = 0
    samples: list[tuple[str, str]] = field(default_factory=list)
    steps: dict[str, tuple[int, float]] = field(default_factory=dict)  # kind -> (n, seconds)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms_per_cert(self) -> float | None:
        return 1000.0 * self.server_cpu / self.ok if self.ok else None


def run_orders(clients: list[AcmeClient], items: list[Prepared], phase: Phase | None,
               pgid: int, api_pids: set[int] | None = None) -> None:
    """The clients run the orders (each once) between them; timed when ``phase`` is given."""
    counter = itertools.count()
    barrier = threading.Barrier(len(clients) + 1)
    failures: list[BaseException] = []
    lock = threading.Lock()

    def work(client: AcmeClient) -> None:
        try:
            barrier.wait()
            while True:
                i = next(counter)
                if i >= len(items):
                    return
                t = time.perf_counter()
                try:
                    pem = client.order(items[i])
                except Exception as exc:
                    kind = exc.kind if isinstance(exc, AcmeError) else type(exc).__name__
                    if phase is None:
                        raise
                    with lock:
                        phase.errors[kind] += 1
                        if len(phase.error_examples) < 5:
                            phase.error_examples.append(str(exc)[:400])
                    continue
                if phase is not None:
                    with lock:
                        phase.latencies.append(time.perf_counter() - t)
                        if len(phase.samples) < VERIFY_SAMPLE:
                            phase.samples.append((items[i].name, pem))
        except BaseException as exc:
            failures.append(exc)
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.abort()

    threads = [threading.Thread(target=work, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    before = (sum(c.requests for c in clients), sum(c.polls for c in clients),
              sum(c.bad_nonces for c in clients))
    steps0 = [(Counter(c.step_counts), Counter(c.steps)) for c in clients]
    cpu0, own0, busy0 = group_cpu(pgid), time.process_time(), base.machine_busy()
    t0 = time.perf_counter()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait()
    for t in threads:
        t.join()
    t1 = time.perf_counter()
    cpu1, own1, busy1 = group_cpu(pgid), time.process_time(), base.machine_busy()
    if failures:
        raise failures[0]
    if phase is None:
        return
    phase.seconds = t1 - t0
    phase.ok = len(phase.latencies)
    phase.server_cpu = cpu_delta(cpu0, cpu1)
    if api_pids:
        phase.api_cpu = cpu_delta(cpu0, cpu1, api_pids)
    for c, (n0, s0) in zip(clients, steps0, strict=True):
        for kind in c.step_counts:
            n, sec = phase.steps.get(kind, (0, 0.0))
            phase.steps[kind] = (n + c.step_counts[kind] - n0[kind], sec + c.steps[kind] - s0[kind])
    phase.client_cpu = own1 - own0
    share = base._busy_share(busy0, busy1)
    if share is not None and phase.seconds > 0:
        phase.other_cores = max(0.0, share * base.CPUS
                                - (phase.server_cpu + phase.client_cpu) / phase.seconds)
    phase.requests = sum(c.requests for c in clients) - before[0]
    phase.polls = sum(c.polls for c in clients) - before[1]
    phase.bad_nonces = sum(c.bad_nonces for c in clients) - before[2]


def acme_phase(name: str, directory_url: str, verify: str, pgid: int, clients: int,
               orders: int, responder: Responder | None, verbose: bool,
               api_pids: Any = None) -> Phase:
    pool = [AcmeClient(directory_url, verify, responder) for _ in range(clients)]
    try:
        for c in pool:
            c.new_account()
        warm = prepare_csrs(WARMUP_ORDERS * clients)
        items = prepare_csrs(orders)
        run_orders(pool, warm, None, pgid)  # warms workers, connections and caches up
        if verbose:
            print(f"  {name}: {clients} account(s) made, {len(warm)} warm-up orders done",
                  file=sys.stderr)
        phase = Phase(name, clients, orders)
        idle0 = group_cpu(pgid)
        time.sleep(IDLE_SECONDS)
        phase.idle_cores = cpu_delta(idle0, group_cpu(pgid)) / IDLE_SECONDS
        run_orders(pool, items, phase, pgid, api_pids() if api_pids else None)
        if verbose:
            print(f"  {name}: {phase.ok} orders in {phase.seconds:.1f} s", file=sys.stderr)
        return phase
    finally:
        for c in pool:
            c.close()


def check_chains(samples: list[tuple[str, str]]) -> list[str]:
    """The downloaded PEM: leaf for the name asked, issued by the next certificate."""
    from cryptography import x509

    problems = []
    for name, pem in samples:
        try:
            certs = x509.load_pem_x509_certificates(pem.encode())
            if len(certs) < 2:
                problems.append(f"{name}: chain has {len(certs)} certificate(s)")
                continue
            san = certs[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            if san.get_values_for_type(x509.DNSName) != [name]:
                problems.append(f"{name}: SAN is {san}")
            certs[0].verify_directly_issued_by(certs[1])
        except Exception as exc:
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
    return problems


# -- the run and the report -------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.acme_dns import DnsServer

    t_start = time.monotonic()
    load_before = os.getloadavg()
    out: dict[str, Any] = {"clients": args.clients, "orders": args.orders,
                           "workers": args.workers, "threads": args.threads,
                           "cpus": os.cpu_count(), "python": platform.python_version()}
    with tempfile.TemporaryDirectory(prefix="acme-bench-") as tmp_name:
        tmp = Path(tmp_name)
        data_dir, made = base.prepare_dir(args.keep, tmp)
        log_path = (data_dir if args.keep is not None else tmp) / "bench-acme-serve.log"
        with contextlib.suppress(FileNotFoundError):
            log_path.unlink()
        responder = Responder()
        dns = DnsServer().start()
        server = ApplianceServer(data_dir, log_path, args.workers, args.threads,
                                 responder.port, dns.port)
        pebble = Pebble(tmp)
        phases: list[Phase] = []
        rc: int | None = None
        findings: list[str] = []
        completed = False
        try:
            server.configure()
            counts_before = base.certificate_counts(server.config_path)
            server.start(args.start_timeout)
            if args.verbose:
                print(f"  appliance up on {server.base_url}", file=sys.stderr)
            assert server.proc is not None
            phases.append(acme_phase("appliance", server.directory_url, server.roots,
                                     server.proc.pid, args.clients, args.orders, responder,
                                     args.verbose, lambda: api_processes(server)))
            from appliance.provisioners.settings import sign_audience

            factory = base.ItemFactory(
                data_dir / "secrets" / f"provisioner-{base.PROVISIONER}.jwe",
                sign_audience("127.0.0.1", f"127.0.0.1:{server.api_port}"))
            sign, _ = base.measure_service(server, factory, args.clients, args.sign_seconds,
                                           SIGN_WARMUP, 0.0, args.verbose)
            rc = server.stop()
            findings = base.log_findings(log_path.read_text(encoding="utf-8", errors="replace"))
            counts_after = base.certificate_counts(server.config_path)

            pebble.start(args.start_timeout)
            assert pebble.proc is not None
            if args.verbose:
                print(f"  pebble up on {pebble.directory_url}", file=sys.stderr)
            phases.append(acme_phase("pebble", pebble.directory_url, str(pebble.cert),
                                     pebble.proc.pid, args.clients, args.orders, None,
                                     args.verbose))
            pebble_rc = pebble.stop()
            if pebble_rc == -signal.SIGTERM:
                pebble_rc = 0  # Go's default for SIGTERM: the stop we asked for
            completed = True
        except base.ServerError as exc:
            raise SystemExit(f"error: {exc}\n--- last lines of the server log ({log_path}) ---\n"
                             f"{server.log_tail(40)}") from None
        finally:
            server.stop()
            server.restore_config()
            pebble.stop()
            dns.stop()
            responder.stop()
            if args.keep is None and log_path.exists() and (findings or not completed):
                # The temporary directory goes away; keep the log where the user can read it.
                saved = Path(tempfile.gettempdir()) / f"acme-bench-serve-{os.getpid()}.log"
                shutil.copyfile(log_path, saved)
                log_path = saved
            if args.keep is not None and made:
                print(f"note: made the data directory {data_dir} (kept; the next run with "
                      "--keep reuses it)", file=sys.stderr)

    def row(p: Phase) -> dict[str, Any]:
        ms = [1000.0 * x for x in p.latencies]
        return {"server": p.server, "clients": p.clients, "orders": p.orders,
                "certificates": p.ok, "seconds": round(p.seconds, 2),
                "orders_per_second": round(p.rate, 2),
                "p50_ms": base._r(base.percentile(ms, 50)),
                "p99_ms": base._r(base.percentile(ms, 99)),
                "server_cpu_seconds": round(p.server_cpu, 2),
                "server_cpu_ms_per_cert": base._r(p.cpu_ms_per_cert),
                "api_cpu_ms_per_cert": base._r(1000.0 * p.api_cpu / p.ok)
                if p.api_cpu is not None and p.ok else None,
                "ms_per_request_kind": {k: round(1000.0 * sec / n, 1)
                                        for k, (n, sec) in sorted(p.steps.items()) if n},
                "server_cores": round(p.server_cpu / p.seconds, 2) if p.seconds else None,
                "client_cores": round(p.client_cpu / p.seconds, 2) if p.seconds else None,
                "other_cores": base._r(p.other_cores, 2),
                "server_idle_cores": base._r(p.idle_cores, 3),
                "requests_per_order": round(p.requests / p.ok, 2) if p.ok else None,
                "polls_per_order": round(p.polls / p.ok, 2) if p.ok else None,
                "bad_nonce_retries": p.bad_nonces,
                "errors": sum(p.errors.values()), "error_kinds": dict(p.errors),
                "error_examples": p.error_examples,
                "chain_check_problems": check_chains(p.samples)}

    app, peb = phases
    sign_ms = (1000.0 * sign.server_cpu * sign.seconds / sign.ok
               if sign.ok and sign.server_cpu is not None else None)
    delta = {k: counts_after.get(k, 0) - counts_before.get(k, 0)
             for k in sorted(set(counts_after) | set(counts_before))}
    ratio = (app.cpu_ms_per_cert / peb.cpu_ms_per_cert
             if app.cpu_ms_per_cert is not None and peb.cpu_ms_per_cert else None)
    met = None if ratio is None else ratio <= GOAL_RATIO
    out.update({
        "data_dir": str(data_dir) if args.keep is not None else None,
        "data_dir_reused": not made,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "total_seconds": round(time.monotonic() - t_start, 1),
        "results": [row(app), row(peb)],
        "sign": {"clients": args.clients, "certs_per_second": round(sign.rate, 1),
                 "certificates": sign.ok, "seconds": round(sign.seconds, 2),
                 "p50_ms": base._r(base.percentile([1000 * x for x in sign.latencies], 50)),
                 "p99_ms": base._r(base.percentile([1000 * x for x in sign.latencies], 99)),
                 "errors": sign.errors, "server_cpu_ms_per_cert": base._r(sign_ms),
                 "other_cores": base._r(sign.other_cpu, 2)},
        "validation": {"http01_fetches": responder.hits, "http01_misses": responder.misses,
                       "dns_queries": len(dns.queries)},
        "database_delta": delta,
        "server_exit_code": rc, "pebble_exit_code": pebble_rc,
        "server_log": str(log_path), "server_log_findings": len(findings),
        "server_log_examples": findings[:10],
        "cpu_ratio_to_pebble": base._r(ratio, 2),
        "goal": GOAL, "goal_ratio": GOAL_RATIO, "goal_met": met,
    })
    return out


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else f"{value:{spec}}"


def print_table(report: dict[str, Any]) -> None:
    print(f"ACME benchmark: complete orders (newOrder, authz, http-01 challenge, finalize, "
          f"certificate) with {report['clients']} client(s), {report['orders']} timed orders "
          "per server")
    print(f"appliance: {report['workers']} API worker(s) x {report['threads']} thread(s), "
          "SoftHSM, database and audit log in the path, REAL http-01 validation (DNS + HTTP "
          "to this process)")
    print("pebble: PEBBLE_VA_ALWAYS_VALID=1 (no validation), PEBBLE_WFE_NONCEREJECT=0, "
          "PEBBLE_VA_NOSLEEP=1; it validates and issues asynchronously, polled every "
          f"{1000 * POLL_INTERVAL:.0f} ms")
    print(f"{report['cpus']} CPU(s); python {report['python']}; load average before "
          f"{report['loadavg_before'][0]:.2f}, after {report['loadavg_after'][0]:.2f}; run "
          f"took {report['total_seconds']:.0f} s")
    print()
    header = (f"{'server':<10} {'orders/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
              f"{'CPU ms/cert':>11} {'server':>6} {'client':>6} {'others':>6} {'req/order':>9}")
    print(header)
    print("-" * len(header))
    for r in report["results"]:
        print(f"{r['server']:<10} {r['orders_per_second']:>9.2f} {_fmt(r['p50_ms'], '.1f'):>8} "
              f"{_fmt(r['p99_ms'], '.1f'):>8} {r['errors']:>6} "
              f"{_fmt(r['server_cpu_ms_per_cert'], '.1f'):>11} "
              f"{_fmt(r['server_cores'], '.2f'):>6} {_fmt(r['client_cores'], '.2f'):>6} "
              f"{_fmt(r['other_cores'], '.2f'):>6} {_fmt(r['requests_per_order'], '.1f'):>9}")
    s = report["sign"]
    print(f"{'/1.0/sign':<10} {s['certs_per_second']:>9.2f} {_fmt(s['p50_ms'], '.1f'):>8} "
          f"{_fmt(s['p99_ms'], '.1f'):>8} {s['errors']:>6} "
          f"{_fmt(s['server_cpu_ms_per_cert'], '.1f'):>11} {'':>6} {'':>6} "
          f"{_fmt(s['other_cores'], '.2f'):>6} {1:>9}")
    print()
    print("orders/s: complete orders (certificate downloaded) per second; /1.0/sign row: "
          "certificates per second\n  on the same appliance, same client count, "
          f"{s['seconds']:.0f} s window after a pilot and warm-up")
    print("p50/p99: latency of one complete order (one /1.0/sign request)")
    print("CPU ms/cert: server process group user+system CPU in the timed phase / "
          "certificates issued")
    print("server, client, others: CPU cores busy (client: this process, incl. the DNS and "
          "http-01 servers;\n  others: the rest of the machine, above ~0.2 the numbers are "
          "disturbed)")
    v = report["validation"]
    print(f"appliance validation: {v['http01_fetches']} http-01 fetches answered, "
          f"{v['http01_misses']} unknown tokens, {v['dns_queries']} DNS queries (all phases)")
    for r in report["results"]:
        extra = []
        if r["api_cpu_ms_per_cert"] is not None:
            print(f"{r['server']}: of the {_fmt(r['server_cpu_ms_per_cert'], '.1f')} ms/cert, "
                  f"{r['api_cpu_ms_per_cert']:.1f} ms in the API's supervisor + workers, "
                  "the rest in serve and the OCSP/CRL listener")
        if r["server_idle_cores"] is not None:
            print(f"{r['server']}: idle before the timed orders ({IDLE_SECONDS:g} s, no requests): "
                  f"{r['server_idle_cores']:.3f} cores")
        kinds = ", ".join(f"{k} {v:.1f}" for k, v in r["ms_per_request_kind"].items())
        print(f"{r['server']}: mean ms per request as the client saw it: {kinds}")
        if r["polls_per_order"]:
            extra.append(f"{r['polls_per_order']:.1f} polls/order")
        if r["bad_nonce_retries"]:
            extra.append(f"{r['bad_nonce_retries']} badNonce retries")
        if extra:
            print(f"{r['server']}: " + ", ".join(extra))
        if r["errors"]:
            kinds = ", ".join(f"{k} x{n}" for k, n in r["error_kinds"].items())
            print(f"{r['server']} errors: {kinds}; e.g. {r['error_examples'][0]}")
        if r["chain_check_problems"]:
            print(f"{r['server']} certificate check FAILED: "
                  + "; ".join(r["chain_check_problems"]))
    d = report["database_delta"]
    print(f"appliance database: +{d.get('issued', 0)} issued, +{d.get('failed', 0)} failed, "
          f"+{d.get('reserved', 0)} reserved (ACME incl. warm-up + /1.0/sign)")
    if report["server_log_findings"]:
        print(f"server log: {report['server_log_findings']} line(s) with errors or warnings, see "
              f"{report['server_log']}; first: {report['server_log_examples'][0][:200]}")
    for what in ("server_exit_code", "pebble_exit_code"):
        if report[what] not in (0, None):
            print(f"{what.replace('_', ' ')}: {report[what]}")
    a, p = (r["server_cpu_ms_per_cert"] for r in report["results"])
    ratio = report["cpu_ratio_to_pebble"]
    print(f"appliance/pebble: ACME server CPU per cert {_fmt(a, '.1f')} ms vs "
          f"{_fmt(p, '.1f')} ms = {_fmt(ratio, '.1f')}x")
    verdict = {None: "", True: " (meets)", False: " (misses)"}[report["goal_met"]]
    print(f"goal: {GOAL}: {_fmt(ratio, '.1f')}x{verdict}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=4,
                    help="concurrent ACME clients, each its own account (default 4)")
    ap.add_argument("--orders", type=int, default=200,
                    help="timed orders per server (default 200)")
    ap.add_argument("--sign-seconds", type=float, default=SIGN_SECONDS,
                    help=f"/1.0/sign measurement window (default {SIGN_SECONDS:g})")
    ap.add_argument("--workers", type=int, default=2, help="API workers (default 2)")
    ap.add_argument("--threads", type=int, default=4,
                    help="API threads per worker (default 4)")
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="use this data directory (made by quickstart if missing or empty) and "
                         "keep it; default: a temporary one")
    ap.add_argument("--start-timeout", type=float, default=60.0,
                    help="seconds to wait for a server to answer (default 60)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ap.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    args = ap.parse_args(argv)
    if args.clients < 1 or args.orders < 1 or args.workers < 1 or args.threads < 1 \
            or args.sign_seconds <= 0:
        ap.error("counts must be >= 1 and --sign-seconds > 0")
    if not os.access(PEBBLE, os.X_OK):
        ap.error(f"{PEBBLE} not found: run scripts/bench-peers.sh (Debian package pebble)")
    try:
        report = run(args)
    except KeyboardInterrupt:
        print("interrupted; the servers were stopped", file=sys.stderr)
        return 130
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
