"""``bench/issuance.py --vs-cfssl``: ``POST /1.0/sign`` against ``cfssl serve``, same run.

Issue 16 measures issuance against a peer doing the same job on the same machine at the
same time, not against raw build-and-sign. The peer is Debian's ``cfssl serve``
(``golang-cfssl``) with a software P-256 CA made by ``cfssl genkey -initca`` and a signing
profile that puts the same nine extensions in a leaf as our default ``tls-server``
template (BC, KU, EKU, SAN, SKI, AKI, certificate policy, CRL DP, AIA with OCSP and CA
issuers), no database, no lint, no authentication.

Both are driven by ``wrk`` (one thread, N keep-alive connections) with bodies made before
the clock: for us one CSR and one one-time token per request (a token is spent once), for
cfssl a pool of CSRs cycled (it keeps no state, so a repeat costs it the same). Ours is
HTTPS (the API listens on TLS only), cfssl plain HTTP (what ``cfssl serve`` does without
``-tls-cert``); the TLS share of our CPU is in our numbers.

Rounds alternate (ours, cfssl, ours on PostgreSQL, ours, cfssl, ...), so background load
hits all alike. Per measurement: a warm-up ``wrk`` run, the server settles, then CPU of
the server's whole process group (user + system from /proc, reaped children included) and
its count of certificates issued (our database; cfssl's log line per signature) are read
before the timed ``wrk`` run and again once the server has settled after it, so a request
cut off at the end is counted by the server and its CPU is in the total. CPU per
certificate is the one over the other; certificates/s and p50/p99 are wrk's, of the timed
run. The goals are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import issuance as base  # bench/issuance.py: data dir, appliance server, request factory

CFSSL = shutil.which("cfssl") or "/usr/bin/cfssl"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
CFSSL_CSRS = 512  # distinct CSRs cycled for cfssl
SETTLE_QUIET = 0.3  # seconds a server's certificate count must stay put to count as settled
SETTLE_LIMIT = 15.0
GOAL_CPU_RATIO = 10.0
GOAL_RATE = 300.0
GOAL_P99_MS = 100.0
GOAL_CLIENTS = 16

# One wrk thread: a POST per request from a pre-made body file, one body per line. "cycle"
# reuses the bodies (cfssl); otherwise running out is counted (every later request repeats
# the last body and fails: the row is then marked as cut short).
WRK_LUA = r"""
bodies = {}
i = 0
cycle = false
exhausted = 0
first_error = ""
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  cycle = args[2] == "cycle"
end

function request()
  i = i + 1
  if i > #bodies then
    if cycle then i = 1 else exhausted = exhausted + 1; i = #bodies end
  end
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[i])
end

function response(status, headers, body)
  if status >= 300 and first_error == "" then
    first_error = status .. " " .. string.sub(body or "", 1, 200)
  end
end

function done(summary, latency, requests)
  local ex, err = 0, ""
  for _, t in ipairs(threads) do
    ex = ex + (t:get("exhausted") or 0)
    local e = t:get("first_error") or ""
    if err == "" then err = e end
  end
  local e = summary.errors
  err = string.gsub(string.gsub(err, '[%c"\\]', " "), "[^ -~]", "?")
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "status_errors": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"exhausted": %d, "first_error": "%s"}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, ex, err))
end
"""


# -- the servers ------------------------------------------------------------------------------


class Target:
    """One server under test: how to reach it, make its bodies and read its counters."""

    name = ""
    url = ""
    pgid = 0
    cycle = False

    def bodies(self, n: int) -> list[bytes]:
        raise NotImplementedError

    def issued(self) -> int:
        raise NotImplementedError


class Ours(Target):
    """``appliance serve`` on a quickstart data directory (SQLite, or PostgreSQL)."""

    def __init__(self, name: str, tmp: Path, workers: int, threads: int,
                 database_url: str | None, start_timeout: float) -> None:
        self.name = name
        self.database_url = database_url
        folder = tmp / name.replace(" ", "-")
        folder.mkdir()
        data_dir, _ = base.prepare_dir(None, folder, database_url)
        self.log_path = folder / "serve.log"
        self.server = base.Server(data_dir, self.log_path, workers, threads, database_url)
        self.server.configure()
        self.authority = base.issuing_authority(self.server.config_path, database_url)
        self.counts_before = base.certificate_counts(self.server.config_path, database_url)
        self.server.start(start_timeout)
        assert self.server.proc is not None
        self.pgid = self.server.proc.pid
        self.url = f"{self.server.base_url}/1.0/sign"
        from appliance.provisioners.settings import sign_audience

        self.factory = base.ItemFactory(
            data_dir / "secrets" / f"provisioner-{base.PROVISIONER}.jwe",
            sign_audience("127.0.0.1", f"127.0.0.1:{self.server.api_port}"))
        self.answered = 0  # 201s the clients got, all phases

    def bodies(self, n: int) -> list[bytes]:
        return [item.body for item in self.factory.make(n)]

    def issued(self) -> int:
        return base.certificate_counts(self.server.config_path, self.database_url).get(
            "issued", 0)

    def stop(self) -> int | None:
        rc = self.server.stop()
        self.server.restore_config()
        return rc


class Cfssl(Target):
    """``cfssl serve`` with a software P-256 CA and a profile with our template's extensions."""

    name = "cfssl"
    cycle = True

    def __init__(self, tmp: Path, like: base.Authority, crl_base: str,
                 start_timeout: float) -> None:
        self.dir = tmp / "cfssl"
        self.dir.mkdir()
        csr = {"CN": "cfssl bench issuing CA", "key": {"algo": "ecdsa", "size": 256},
               "names": [{"O": "bench"}]}
        made = subprocess.run([CFSSL, "genkey", "-initca", "-"], input=json.dumps(csr),
                              capture_output=True, text=True, check=False)
        if made.returncode != 0:
            raise base.ServerError(f"cfssl genkey -initca failed: {made.stderr[-500:]}")
        out = json.loads(made.stdout)
        (self.dir / "ca.pem").write_text(out["cert"])
        key = self.dir / "ca-key.pem"
        key.write_text(out["key"])
        key.chmod(0o600)
        self.ca_pem = out["cert"]
        # As in our tls-server leaf (openssl x509 -text of a /1.0/sign certificate): BC
        # CA:FALSE critical, KU digitalSignature critical, EKU serverAuth + clientAuth,
        # SAN from the CSR, SKI, AKI, policy 2.23.140.1.2.1, CRL DP, AIA (OCSP, CA issuers),
        # 24 h. cfssl adds SKI and AKI itself and backdates notBefore by 5 minutes.
        profile = {
            "expiry": "24h",
            "usages": ["digital signature", "server auth", "client auth"],
            "ca_constraint": {"is_ca": False},
            "crl_url": f"{crl_base}/crl/{like.name}.crl",
            "ocsp_url": f"{crl_base}/ocsp",
            "issuer_urls": [f"{crl_base}/ca/{like.name}.crt"],
            "policies": [{"ID": "2.23.140.1.2.1"}],
        }
        (self.dir / "config.json").write_text(json.dumps({"signing": {"default": profile}}))
        self.port = base.free_ports(1)[0]
        self.log_path = self.dir / "serve.log"
        with self.log_path.open("ab") as log:
            self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [CFSSL, "serve", "-address", "127.0.0.1", "-port", str(self.port),
                 "-ca", "ca.pem", "-ca-key", "ca-key.pem", "-config", "config.json"],
                cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        self.pgid = self.proc.pid
        self.url = f"http://127.0.0.1:{self.port}/api/v1/cfssl/sign"
        self._log_offset = 0
        self._signed = 0
        try:
            self._wait(start_timeout)
        except base.ServerError:
            self.stop()
            raise
        self.pool = self._make_pool(CFSSL_CSRS)

    def _wait(self, timeout: float) -> None:
        import requests

        deadline = time.monotonic() + timeout
        last = "no answer yet"
        with requests.Session() as s:
            s.trust_env = False
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise base.ServerError(f"cfssl serve exited with code {self.proc.returncode}:"
                                           f"\n{base._tail(self.log_path.read_text(), 20)}")
                try:
                    r = s.post(f"http://127.0.0.1:{self.port}/api/v1/cfssl/info", json={},
                               timeout=2)
                    if r.status_code == 200:
                        return
                    last = f"HTTP {r.status_code}"
                except requests.RequestException as exc:
                    last = type(exc).__name__
                time.sleep(0.1)
        raise base.ServerError(f"cfssl serve did not answer within {timeout:g} s ({last})")

    @staticmethod
    def _make_pool(n: int) -> list[bytes]:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        tag = secrets.token_hex(3)
        out = []
        for i in range(n):
            name = f"cf{i}-{tag}.example.com"
            csr = (x509.CertificateSigningRequestBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]),
                                  critical=False)
                   .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
            pem = csr.public_bytes(serialization.Encoding.PEM).decode()
            out.append(json.dumps({"certificate_request": pem}).encode())
        return out

    def bodies(self, n: int) -> list[bytes]:
        return self.pool

    def issued(self) -> int:
        """Signatures so far: cfssl logs one line per certificate it signs."""
        with self.log_path.open("rb") as f:
            f.seek(self._log_offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self._signed += chunk[:end].count(b"signed certificate with serial number")
        self._log_offset += end
        return self._signed

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                rc = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
        else:
            rc = proc.returncode
        return 0 if rc == -signal.SIGTERM else rc


# -- PostgreSQL: a throw-away database ----------------------------------------------------------


def create_pg_database() -> str:
    import psycopg

    name = f"appliance_bench_{secrets.token_hex(6)}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_pg_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- one measurement ---------------------------------------------------------------------------


@dataclass
class Row:
    server: str
    clients: int
    round: int
    certs_per_second: float = 0.0
    ok: int = 0
    errors: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    seconds: float = 0.0
    issued: int = 0  # counted by the server between the two readings
    server_cpu_s: float = 0.0
    cpu_ms_per_cert: float | None = None
    server_cores: float | None = None
    client_cores: float | None = None
    other_cores: float | None = None
    cut_short: bool = False
    bodies: int = 0
    first_error: str = ""
    warmup_errors: int = 0


def run_wrk(tmp: Path, target: Target, bodies: list[bytes], clients: int,
            seconds: float) -> dict[str, Any]:
    lua = tmp / "wrk-bench.lua"
    if not lua.exists():
        lua.write_text(WRK_LUA)
    path = tmp / "wrk-bodies.txt"
    path.write_bytes(b"\n".join(bodies) + b"\n")
    cmd = [WRK, "-t1", f"-c{clients}", f"-d{max(1, math.ceil(seconds))}s", "--timeout", "60s",
           "-s", str(lua), target.url, "--", str(path), "cycle" if target.cycle else "once"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("WRKJSON "):
            out: dict[str, Any] = json.loads(line[len("WRKJSON "):])
            return out
    raise RuntimeError(f"wrk gave no result (exit code {proc.returncode}): "
                       f"{(proc.stdout + proc.stderr)[-600:]}")


def settle(target: Target) -> int:
    """Wait until the server's certificate count stays put; that count."""
    deadline = time.monotonic() + SETTLE_LIMIT
    last = target.issued()
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = target.issued()
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since >= SETTLE_QUIET:
            break
    return last


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(tmp: Path, target: Target, clients: int, rnd: int, seconds: float, warmup: float,
            rate_hint: float) -> Row:
    row = Row(target.name, clients, rnd)
    seconds = float(max(1, math.ceil(seconds)))  # wrk counts whole seconds
    warm_s = float(max(1, math.ceil(warmup))) if warmup > 0 else 0.0
    # Bodies before the clock: enough for the pilot's rate with a margin.
    n_window = math.ceil(rate_hint * seconds * base.BATCH_MARGIN) + 8 * clients + 20
    n_warm = math.ceil(rate_hint * warm_s * base.BATCH_MARGIN) + 8 * clients
    warm_bodies = target.bodies(n_warm) if warm_s else []
    bodies = target.bodies(n_window)
    row.bodies = len(bodies)
    if warm_s:
        w = run_wrk(tmp, target, warm_bodies, clients, warm_s)
        row.warmup_errors = int(w["status_errors"]) + sum(
            int(w[k]) for k in ("connect", "read", "write", "timeout"))
        if isinstance(target, Ours):
            target.answered += int(w["requests"]) - int(w["status_errors"])
    count0 = settle(target)
    cpu0, busy0, cli0, t0 = (base.group_cpu(target.pgid), base.machine_busy(), children_cpu(),
                             time.perf_counter())
    w = run_wrk(tmp, target, bodies, clients, seconds)
    t_wrk = time.perf_counter()
    cli1 = children_cpu()
    count1 = settle(target)
    cpu1, busy1, t1 = base.group_cpu(target.pgid), base.machine_busy(), time.perf_counter()
    row.seconds = int(w["duration_us"]) / 1e6
    bad = int(w["status_errors"]) + sum(int(w[k]) for k in ("connect", "read", "write",
                                                              "timeout"))
    row.ok = int(w["requests"]) - int(w["status_errors"])
    row.errors = bad
    if isinstance(target, Ours):
        target.answered += row.ok
    row.certs_per_second = row.ok / row.seconds if row.seconds > 0 else 0.0
    row.p50_ms, row.p99_ms = int(w["p50_us"]) / 1000.0, int(w["p99_us"]) / 1000.0
    row.max_ms = int(w["max_us"]) / 1000.0
    row.cut_short = int(w["exhausted"]) > 0
    row.first_error = str(w["first_error"])
    row.issued = count1 - count0
    row.server_cpu_s = base.cpu_delta(cpu0, cpu1)
    row.cpu_ms_per_cert = 1000.0 * row.server_cpu_s / row.issued if row.issued else None
    span = t1 - t0
    row.server_cores = row.server_cpu_s / span if span > 0 else None
    row.client_cores = (cli1 - cli0) / (t_wrk - t0) if t_wrk > t0 else None
    share = base._busy_share(busy0, busy1)
    if share is not None and row.server_cores is not None:
        client_s = cli1 - cli0
        row.other_cores = max(0.0, share * base.CPUS - (row.server_cpu_s + client_s) / span)
    return row


def pilot(target: Ours, clients: int) -> float:
    """Warm the workers up (token self-tests, lint validators) and estimate the rate."""
    load = base.drive(target.url, target.server.roots, target.factory.make(30 + 8 * clients),
                      clients, None)
    target.answered += sum(x.status == 201 for x in load.sent)
    return base.pilot_rate(load)


def leaf_extensions(target: Target) -> tuple[list[str], str]:
    """One certificate from the server, outside the timed runs: its extensions (name and
    criticality) and a problem, if any."""
    import requests
    from cryptography import x509

    body = target.bodies(1)[0]
    verify: Any = target.server.roots if isinstance(target, Ours) else False
    with requests.Session() as s:
        s.trust_env = False
        r = s.post(target.url, data=body, headers={"Content-Type": "application/json"},
                   verify=verify, timeout=60)
    try:
        data = r.json()
        pem = data["crt"] if isinstance(target, Ours) else data["result"]["certificate"]
        cert = x509.load_pem_x509_certificate(pem.encode())
        if isinstance(target, Ours):
            target.answered += 1
            cert.verify_directly_issued_by(x509.load_der_x509_certificate(
                target.authority.certificate_der))
        else:
            assert isinstance(target, Cfssl)
            cert.verify_directly_issued_by(x509.load_pem_x509_certificate(
                target.ca_pem.encode()))
    except Exception as exc:
        return [], f"HTTP {r.status_code}: {type(exc).__name__}: {exc}; {r.text[:200]}"
    names = [f"{e.oid._name}{'!' if e.critical else ''}" for e in cert.extensions]
    return names, ""


# -- the run -------------------------------------------------------------------------------------


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _spread(values: list[float]) -> float | None:
    if len(values) < 2 or not statistics.median(values):
        return None
    return (max(values) - min(values)) / statistics.median(values)


def run(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.monotonic()
    load_before = os.getloadavg()
    rows: list[Row] = []
    targets: list[Target] = []
    notes: list[str] = []
    exit_codes: dict[str, int | None] = {}
    extensions: dict[str, list[str]] = {}
    consistency: dict[str, dict[str, int]] = {}
    pg_url: str | None = None
    with tempfile.TemporaryDirectory(prefix="vs-cfssl-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            ours = Ours("ours", tmp, args.workers, args.threads, None, args.start_timeout)
            targets.append(ours)
            cfssl = Cfssl(tmp, ours.authority, f"http://127.0.0.1:{ours.server.http_port}",
                          args.start_timeout)
            targets.append(cfssl)
            if not args.no_postgres:
                try:
                    pg_url = create_pg_database()
                except Exception as exc:
                    notes.append(f"PostgreSQL row skipped: {type(exc).__name__}: {exc}"[:300])
                if pg_url is not None:
                    targets.append(Ours("ours-pg", tmp, args.workers, args.threads, pg_url,
                                        args.start_timeout))
            setup_seconds = time.monotonic() - t_start
            hints: dict[str, float] = {}
            for t in targets:
                if isinstance(t, Ours):
                    hints[t.name] = pilot(t, args.clients[0])
                    if args.verbose:
                        print(f"  {t.name}: pilot {hints[t.name]:.1f}/s", file=sys.stderr)
            for n in args.clients:
                for rnd in range(args.rounds):
                    for t in targets:
                        r = measure(tmp, t, n, rnd, args.seconds, args.warmup,
                                    hints.get(t.name, 0.0))
                        if r.cut_short:  # faster than the pilot said: again, with more bodies
                            hints[t.name] = max(2 * hints.get(t.name, 0.0),
                                                2 * r.bodies / max(r.seconds, 1e-3))
                            notes.append(f"{t.name} at {n} clients, round {rnd + 1}: ran out "
                                         f"of its {r.bodies} bodies; measured again with more")
                            r = measure(tmp, t, n, rnd, args.seconds, args.warmup,
                                        hints[t.name])
                        rows.append(r)
                        hints[t.name] = max(hints.get(t.name, 0.0), r.certs_per_second)
                        if args.verbose:
                            print(f"  {t.name} {n} clients round {rnd + 1}: "
                                  f"{r.certs_per_second:.1f}/s, "
                                  f"{base._fmt(r.cpu_ms_per_cert, '.2f')} ms CPU/cert, "
                                  f"{r.errors} errors", file=sys.stderr)
            for t in targets:
                names, problem = leaf_extensions(t)
                extensions[t.name] = names
                if problem:
                    notes.append(f"{t.name}: the sample certificate check FAILED: {problem}")
            for t in targets:
                if isinstance(t, Ours):
                    after = base.certificate_counts(t.server.config_path, t.database_url)
                    delta = {k: after.get(k, 0) - t.counts_before.get(k, 0)
                             for k in ("issued", "failed", "reserved", "used_tokens")}
                    delta["answered_201"] = t.answered
                    consistency[t.name] = delta
        except base.ServerError as exc:
            for t in targets:
                if isinstance(t, Ours):
                    print(f"--- {t.name} server log ---\n{t.server.log_tail(30)}",
                          file=sys.stderr)
            raise SystemExit(f"error: {exc}") from None
        finally:
            for t in targets:
                if isinstance(t, Ours | Cfssl):
                    exit_codes[t.name] = t.stop()
            if pg_url is not None:
                try:
                    drop_pg_database(pg_url)
                except Exception as exc:
                    print(f"warning: could not drop {pg_url}: {exc}", file=sys.stderr)
            for t in targets:
                if isinstance(t, Ours):
                    found = base.log_findings(t.log_path.read_text(errors="replace"))
                    if found:
                        saved = Path(tempfile.gettempdir()) / (
                            f"vs-cfssl-{t.name}-serve-{os.getpid()}.log")
                        shutil.copyfile(t.log_path, saved)
                        notes.append(f"{t.name}: server log has {len(found)} line(s) with "
                                     f"errors or warnings, see {saved}; first: "
                                     f"{found[0][:200]}")
    return summarize(args, rows, targets, notes, exit_codes, extensions, consistency,
                     load_before, setup_seconds, time.monotonic() - t_start)


def summarize(args: argparse.Namespace, rows: list[Row], targets: list[Target],
              notes: list[str], exit_codes: dict[str, int | None],
              extensions: dict[str, list[str]], consistency: dict[str, dict[str, int]],
              load_before: tuple[float, float, float], setup_seconds: float,
              total_seconds: float) -> dict[str, Any]:
    names = [t.name for t in targets]
    summary: list[dict[str, Any]] = []
    ratios: dict[int, dict[str, Any]] = {}
    for n in args.clients:
        for name in names:
            rs = [r for r in rows if r.server == name and r.clients == n]
            rates = [r.certs_per_second for r in rs]
            summary.append({
                "server": name, "clients": n, "rounds": len(rs),
                "certs_per_second": _r(_median(list(rates))),
                "p50_ms": _r(_median([r.p50_ms for r in rs]), 2),
                "p99_ms": _r(_median([r.p99_ms for r in rs]), 2),
                "cpu_ms_per_cert": _r(_median([r.cpu_ms_per_cert for r in rs]), 3),
                "server_cores": _r(_median([r.server_cores for r in rs]), 2),
                "client_cores": _r(_median([r.client_cores for r in rs]), 2),
                "other_cores": _r(_median([r.other_cores for r in rs]), 2),
                "errors": sum(r.errors for r in rs),
                "cut_short": any(r.cut_short for r in rs),
                "rate_spread": _r(_spread(rates), 3),
            })
        # Ratios per round (the servers of a round ran back to back), then the median.
        for name in names:
            if name == "cfssl":
                continue
            cpu, rate = [], []
            for rnd in range(args.rounds):
                a = next((r for r in rows if r.server == name and r.clients == n
                          and r.round == rnd), None)
                b = next((r for r in rows if r.server == "cfssl" and r.clients == n
                          and r.round == rnd), None)
                if a is None or b is None:
                    continue
                if a.cpu_ms_per_cert and b.cpu_ms_per_cert:
                    cpu.append(a.cpu_ms_per_cert / b.cpu_ms_per_cert)
                if b.certs_per_second:
                    rate.append(a.certs_per_second / b.certs_per_second)
            ratios.setdefault(n, {})[name] = {"cpu_ratio": _r(_median(list(cpu)), 2),
                                             "rate_ratio": _r(_median(list(rate)), 4)}

    def pick(name: str, n: int) -> dict[str, Any] | None:
        return next((s for s in summary if s["server"] == name and s["clients"] == n), None)

    goals: list[dict[str, Any]] = []
    for name in [x for x in names if x != "cfssl"]:
        cpu_ratios = [ratios[n][name]["cpu_ratio"] for n in args.clients
                      if ratios.get(n, {}).get(name, {}).get("cpu_ratio") is not None]
        worst = max(cpu_ratios) if cpu_ratios else None
        goals.append({"server": name, "goal": f"CPU per cert <= {GOAL_CPU_RATIO:g}x cfssl",
                      "value": worst, "unit": "x",
                      "met": None if worst is None else worst <= GOAL_CPU_RATIO})
        at16 = pick(name, GOAL_CLIENTS)
        rate = at16["certs_per_second"] if at16 else None
        p99 = at16["p99_ms"] if at16 else None
        goals.append({"server": name, "goal": f">= {GOAL_RATE:g} certs/s at {GOAL_CLIENTS} "
                      "clients", "value": rate, "unit": "/s",
                      "met": None if rate is None else rate >= GOAL_RATE})
        goals.append({"server": name, "goal": f"p99 at {GOAL_CLIENTS} clients <= "
                      f"{GOAL_P99_MS:g} ms", "value": p99, "unit": " ms",
                      "met": None if p99 is None else p99 <= GOAL_P99_MS})
    return {
        "mode": "vs-cfssl", "clients": args.clients, "rounds": args.rounds,
        "seconds": float(max(1, math.ceil(args.seconds))),
        "warmup_seconds": float(max(1, math.ceil(args.warmup))) if args.warmup > 0 else 0.0,
        "workers": args.workers, "threads": args.threads,
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "cfssl": "cfssl " + _version([CFSSL, "version"]).removeprefix("Version: "),
        "wrk": _version([WRK, "--version"]),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "setup_seconds": round(setup_seconds, 1), "total_seconds": round(total_seconds, 1),
        "transport": {"ours": "HTTPS (TLS 1.3, keep-alive)", "cfssl": "HTTP (keep-alive)"},
        "servers": names, "summary": summary, "ratios": {str(k): v for k, v in ratios.items()},
        "goals": goals,
        "extensions": extensions, "database": consistency,
        "exit_codes": exit_codes, "notes": notes,
        "rounds_detail": [r.__dict__ for r in rows],
    }


def _version(cmd: list[str]) -> str:
    with contextlib.suppress(OSError):
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        first = (p.stdout + p.stderr).strip().splitlines()[:1]
        return " ".join(first[0].split()[:2]) if first else "?"
    return "?"


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def print_report(rep: dict[str, Any]) -> None:
    f = base._fmt
    print("Issuance vs cfssl: POST /1.0/sign (HTTPS; "
          f"{rep['workers']} API worker(s) x {rep['threads']} thread(s), SoftHSM, pkilint, "
          "database, audit) vs cfssl serve /api/v1/cfssl/sign (HTTP; software P-256 CA, "
          "no DB, no lint, no auth)")
    print(f"{rep['cfssl']}; clients: {rep['wrk']}, 1 thread, N keep-alive connections, "
          "bodies made before the clock (ours: CSR + one-time token each; cfssl: "
          f"{CFSSL_CSRS} CSRs cycled)")
    print(f"{rep['rounds']} round(s) per client count, alternating "
          f"{' / '.join(rep['servers'])}; "
          f"{rep['seconds']:g} s each after {rep['warmup_seconds']:g} s warm-up; medians "
          f"shown; {rep['cpus']} CPU(s); python {rep['python']}; load before "
          f"{rep['loadavg_before'][0]:.2f}; run took {rep['total_seconds']:.0f} s")
    print()
    header = (f"{'server':<8} {'clients':>7} {'certs/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'errors':>6} {'CPU ms/cert':>11} {'server':>6} {'client':>6} {'others':>6} "
              f"{'spread':>6}")
    print(header)
    print("-" * len(header))
    for s in rep["summary"]:
        spread = "-" if s["rate_spread"] is None else f"{100 * s['rate_spread']:.0f}%"
        line = (f"{s['server']:<8} {s['clients']:>7} {f(s['certs_per_second'], '.1f'):>9} "
                f"{f(s['p50_ms'], '.2f'):>8} {f(s['p99_ms'], '.2f'):>8} {s['errors']:>6} "
                f"{f(s['cpu_ms_per_cert'], '.3f'):>11} {f(s['server_cores'], '.2f'):>6} "
                f"{f(s['client_cores'], '.2f'):>6} {f(s['other_cores'], '.2f'):>6} "
                f"{spread:>6}")
        if s["cut_short"]:
            line += "  (ran out of prepared requests: numbers invalid)"
        print(line)
    print()
    for n, per in rep["ratios"].items():
        for name, v in per.items():
            print(f"{name}/cfssl at {n} clients: CPU per cert {f(v['cpu_ratio'], '.1f')}x, "
                  f"certs/s {f(v['rate_ratio'], '.3f')}x")
    print("CPU ms/cert: the server's process group (user+system, /proc), from before the "
          "timed run until it\n  settled after it, over the certificates it issued in that "
          "span (our database; cfssl's log)")
    print("server, client, others: CPU cores busy (client: wrk; others: the rest of the "
          "machine, the idle\n  servers of the other rows included; above ~0.3 the numbers "
          "are disturbed)\nspread: (max - min) / median of the rounds' certs/s")
    for name, exts in rep["extensions"].items():
        print(f"{name} leaf: {len(exts)} extensions: {', '.join(exts)}  (! critical)")
    for name, d in rep["database"].items():
        line = (f"{name} database: +{d['issued']} issued, +{d['failed']} failed, "
                f"+{d['reserved']} reserved, +{d['used_tokens']} tokens spent; "
                f"{d['answered_201']} x 201 answered (all phases)")
        if d["issued"] < d["answered_201"] or d["failed"] or d["reserved"]:
            line += " - MISMATCH"
        print(line)
    for s in rep["summary"]:
        if s["errors"]:
            ex = next((r["first_error"] for r in rep["rounds_detail"]
                       if r["server"] == s["server"] and r["clients"] == s["clients"]
                       and r["first_error"]), "")
            print(f"errors: {s['server']} at {s['clients']} clients: {s['errors']}; e.g. "
                  f"{ex[:200]}")
    for note in rep["notes"]:
        print(f"note: {note}")
    for name, rc in rep["exit_codes"].items():
        if rc not in (0, None):
            print(f"{name} exited with code {rc}")
    for g in rep["goals"]:
        val = g["value"]
        shown = "not measured" if val is None else (
            f"{val:.1f}{g['unit']}" if g["unit"] != "/s" else f"{val:.1f} certs/s")
        verdict = "" if g["met"] is None else (" (meets)" if g["met"] else " (misses)")
        who = "" if g["server"] == "ours" else f" [{g['server']}]"
        print(f"goal{who}: {g['goal']}: {shown}{verdict}")


def main(args: argparse.Namespace) -> int:
    if not os.access(CFSSL, os.X_OK) or not os.access(WRK, os.X_OK):
        print("error: cfssl and wrk are needed: run scripts/bench-peers.sh (Debian packages "
              "golang-cfssl, wrk)", file=sys.stderr)
        return 2
    if args.seconds <= 0 or args.warmup < 0 or min(args.clients) < 1 or args.workers < 1:
        print("error: --seconds must be > 0, --warmup >= 0, counts >= 1", file=sys.stderr)
        return 2
    if args.keep is not None:
        print("note: --keep is ignored with --vs-cfssl (throw-away data directories)",
              file=sys.stderr)
    try:
        rep = run(args)
    except KeyboardInterrupt:
        print("interrupted; the servers were stopped", file=sys.stderr)
        return 130
    if args.json:
        json.dump(rep, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_report(rep)
    return 0
