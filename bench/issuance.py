#!/usr/bin/env python3
"""Certificates per second through ``POST /1.0/sign`` against the raw build-and-sign rate.

Measures, on one appliance data directory (made by ``appliance quickstart``, or
kept with ``--keep``), in the same run:

* ``raw``     build and sign an equivalent leaf certificate with the appliance's own
  primitives and nothing else: a ``SessionPool`` on the data directory's token,
  ``token_private_key`` for the issuing CA's key, then ``CertificateBuilder(...)
  .sign(key, SHA256())`` in a loop (no HTTP, database, policy, lint or audit), in
  1 and 2 spawned processes, while the server is stopped;
* ``service`` ``appliance serve`` (``--workers`` workers x ``--threads``
  threads, rate limit off) and N client threads in this process, each with its own
  keep-alive HTTPS session, posting pre-generated CSRs and one-time tokens.

For each ``--clients`` N the service gets a short pilot (warms the workers up and
sizes the batch), then runs for ``--warmup`` + ``--seconds``; only responses that
arrive after the warm-up count. The primary comparison is against raw with as
many processes as the server has workers.

It prints numbers and never fails on them. The old goal (the service reaches at
least 25% of the raw rate) is withdrawn (issue 16) and the ratio is shown for
information only; ``--vs-cfssl`` (bench/vs_cfssl.py) measures against the peer
the goals now name: ``cfssl serve`` on the same machine in the same run.

    .venv/bin/python bench/issuance.py [--clients 1 4 16] [--seconds 10] [--keep DIR]
    .venv/bin/python bench/issuance.py --vs-cfssl [--clients 4 16] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import multiprocessing as mp
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

GOAL_PERCENT = 25.0
CPUS = os.cpu_count() or 1
RAW_WARMUP_CERTS = 50
SUBJECT_KEYS = 64  # raw: distinct subject public keys, cycled
TOKEN_LIFETIME = 1800  # seconds; tokens are minted before the clock starts
PROVISIONER = "admin"
REQUEST_TIMEOUT = 60.0
BATCH_MARGIN = 1.6  # pre-generate this many times the requests the pilot predicts
MAX_BATCH = 200_000
VERIFY_SAMPLE = 8  # issued certificates checked in full after the run


# -- the data directory ------------------------------------------------------------


def appliance_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "appliance", *args]


def child_env(database_url: str | None = None) -> dict[str, str]:
    """The environment for ``appliance`` children: this shell's database URL never leaks in;
    ``database_url`` (a PostgreSQL run) is passed as ``APPLIANCE_DATABASE_URL``."""
    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)  # each process sets it from the HSM profile
    env.pop("APPLIANCE_CONFIG", None)
    env.pop("APPLIANCE_DATABASE_URL", None)
    if database_url is not None:
        env["APPLIANCE_DATABASE_URL"] = database_url
    return env


def prepare_dir(keep: Path | None, tmp: Path,
                database_url: str | None = None) -> tuple[Path, bool]:
    """The data directory to use, and whether this run made it."""
    directory = keep if keep is not None else tmp / "data"
    if (directory / "appliance.yaml").is_file():
        return directory.resolve(), False
    if directory.exists() and any(directory.iterdir()):
        raise SystemExit(f"error: {directory} exists but holds no appliance.yaml; give --keep an "
                         "empty or missing folder, or an appliance data directory")
    proc = subprocess.run(appliance_cmd("quickstart", "--dir", str(directory)),
                          capture_output=True, text=True, env=child_env(database_url),
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"error: appliance quickstart failed (exit code {proc.returncode}):\n"
                         + _tail(proc.stdout + proc.stderr, 30))
    return directory.resolve(), True


_SERVICE_BLOCK_START = re.compile(r"^service:\s*(#.*)?$")
_MARKER = "# service: added by bench/issuance.py for this run"


def without_service_block(text: str) -> str:
    """``text`` minus any top-level ``service:`` mapping (and this script's marker)."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        if line == _MARKER:
            continue
        if _SERVICE_BLOCK_START.match(line):
            skipping = True
            continue
        if skipping and (not line.strip() or line[:1] in (" ", "\t")):
            continue
        skipping = False
        out.append(line)
    while out and not out[-1].strip():
        out.pop()
    return "\n".join(out) + "\n"


def service_block(api_port: int, http_port: int, workers: int, threads: int) -> str:
    return (f"\n{_MARKER}\nservice:\n"
            f"  api_listen: 127.0.0.1:{api_port}\n"
            f"  http_listen: 127.0.0.1:{http_port}\n"
            f"  public_base_url: http://127.0.0.1:{http_port}\n"
            f"  api_hostname: 127.0.0.1\n"
            f"  workers: {workers}\n"
            f"  threads: {threads}\n"
            f"  rate_limit_per_minute: 0\n")


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Authority:
    """The CA the ``admin`` provisioner issues under: what both sides sign with."""

    name: str
    key_label: str
    certificate_der: bytes


def issuing_authority(config_path: Path, database_url: str | None = None) -> Authority:
    from sqlalchemy import select

    from appliance import config
    from appliance.store.db import Database
    from appliance.store.models import Authority as AuthorityRow
    from appliance.store.models import HsmKey, Provisioner

    settings = config.load(config_path)
    db = Database(database_url or settings.database_url)
    try:
        with db.sessions() as s:
            prov = s.scalars(select(Provisioner)
                             .where(Provisioner.name == PROVISIONER)).one_or_none()
            if prov is None:
                raise SystemExit(f"error: the data directory has no provisioner {PROVISIONER!r} "
                                 "(appliance quickstart adds it)")
            ca = s.get(AuthorityRow, prov.authority_id)
            key = s.get(HsmKey, ca.key_id) if ca is not None and ca.key_id is not None else None
            if ca is None or key is None:
                raise SystemExit(f"error: provisioner {PROVISIONER!r} has no authority with a key")
            return Authority(ca.name, key.label, bytes(ca.certificate_der))
    finally:
        db.dispose()


def certificate_counts(config_path: Path, database_url: str | None = None) -> dict[str, int]:
    """Certificates by status and spent tokens, straight from the database."""
    from sqlalchemy import func, select

    from appliance import config
    from appliance.store.db import Database
    from appliance.store.models import Certificate, UsedToken

    settings = config.load(config_path)
    db = Database(database_url or settings.database_url)
    try:
        with db.sessions() as s:
            rows = s.execute(select(Certificate.status, func.count())
                             .group_by(Certificate.status)).all()
            out = {str(status): int(n) for status, n in rows}
            out["used_tokens"] = int(s.scalar(select(func.count()).select_from(UsedToken)) or 0)
            return out
    finally:
        db.dispose()


# -- raw: build and sign in spawned processes --------------------------------------------


class RawSigner:
    """One process's build-and-sign loop on the issuing CA's token key."""

    def __init__(self, config_path: str, authority: Authority, base_url: str, prefix: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import AuthorityInformationAccessOID, ObjectIdentifier

        from appliance import config
        from appliance.hsm.keys import find_key
        from appliance.hsm.pool import SessionPool
        from appliance.hsm.profile import load_profile
        from appliance.hsm.signer import token_private_key
        from appliance.x509.signing import ca_public_key

        settings = config.load(Path(config_path))
        # SessionPool sets SOFTHSM2_CONF as the module loads.
        self.pool = SessionPool(load_profile(settings.hsm_profile_path))
        self.issuer = x509.load_der_x509_certificate(authority.certificate_der)
        info = find_key(self.pool, authority.key_label, ca_public_key(self.issuer))
        self.key = token_private_key(self.pool, info)
        self.prefix = prefix
        self.counter = itertools.count()
        self.subject_keys = [ec.generate_private_key(ec.SECP256R1()).public_key()
                             for _ in range(SUBJECT_KEYS)]
        self.aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            self.issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value)
        # What the service's tls-server template adds besides names and keys.
        self.policies = x509.CertificatePolicies(
            [x509.PolicyInformation(ObjectIdentifier("2.23.140.1.2.1"), None)])
        uri = x509.UniformResourceIdentifier
        self.crl_dp = x509.CRLDistributionPoints([x509.DistributionPoint(
            [uri(f"{base_url}/crl/{authority.name}.crl")], None, None, None)])
        self.aia = x509.AuthorityInformationAccess([
            x509.AccessDescription(AuthorityInformationAccessOID.OCSP, uri(f"{base_url}/ocsp")),
            x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS,
                                   uri(f"{base_url}/ca/{authority.name}.crt")),
        ])

    def one(self) -> Any:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        i = next(self.counter)
        name = f"{self.prefix}{i}.example.com"
        public = self.subject_keys[i % SUBJECT_KEYS]
        now = datetime.now(UTC).replace(microsecond=0)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.issuer.subject)
            .public_key(public)
            .serial_number((int.from_bytes(os.urandom(16), "big") >> 1) | 1)
            .not_valid_before(now - timedelta(seconds=60))
            .not_valid_after(now + timedelta(hours=24))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(self.policies, critical=False)
            .add_extension(self.crl_dp, critical=False)
            .add_extension(self.aia, critical=False)
            .add_extension(self.aki, critical=False)
        )
        return builder.sign(self.key, hashes.SHA256())

    def check_once(self) -> None:
        """Prove once that the loop makes real certificates by the issuing CA."""
        self.one().verify_directly_issued_by(self.issuer)

    def timed(self, seconds: float) -> tuple[int, float, list[float]]:
        latencies: list[float] = []
        clock = time.perf_counter
        start = clock()
        deadline = start + seconds
        now = start
        while now < deadline:
            t = now
            self.one()
            now = clock()
            latencies.append(now - t)
        return len(latencies), now - start, latencies

    def close(self) -> None:
        self.pool.close()


def raw_worker(conn: Connection, config_path: str, authority: Authority, base_url: str,
               prefix: str) -> None:
    """A spawned process: set up, then build-and-sign on command until told to stop."""
    signer: RawSigner | None = None
    try:
        signer = RawSigner(config_path, authority, base_url, prefix)
        signer.check_once()
        conn.send(("ready",))
        while True:
            msg = conn.recv()
            if msg[0] == "stop":
                break
            seconds = msg[1]
            for _ in range(RAW_WARMUP_CERTS):
                signer.one()
            conn.send(("armed",))
            if conn.recv() != ("go",):
                raise RuntimeError("protocol error")
            conn.send(("done", signer.timed(seconds)))
    except BaseException as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        if signer is not None:
            signer.close()
        conn.close()


class RawWorkers:
    """Spawned raw signers, kept up across measurements (start-up is never timed)."""

    def __init__(self, count: int, config_path: Path, authority: Authority, base_url: str) -> None:
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for i in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=raw_worker, daemon=True,
                               args=(child, str(config_path), authority, base_url, f"raw{i}-"))
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
            # One at a time: SoftHSM's file store can fail when two processes log in at once.
            self._expect(i, "ready")

    def _expect(self, i: int, what: str) -> tuple[Any, ...]:
        try:
            msg: tuple[Any, ...] = self.conns[i].recv()
        except (EOFError, ConnectionError):
            self.procs[i].join(timeout=5)
            raise RuntimeError(f"raw worker died (exit code {self.procs[i].exitcode})") from None
        if msg[0] == "error":
            raise RuntimeError(f"raw worker failed: {msg[1]}")
        if msg[0] != what:
            raise RuntimeError(f"raw worker said {msg[0]!r}, expected {what!r}")
        return msg

    def measure(self, processes: int, seconds: float) -> Measurement:
        ids = range(processes)
        for i in ids:
            self.conns[i].send(("run", seconds))
        for i in ids:
            self._expect(i, "armed")
        pids = [self.procs[i].pid for i in ids]
        busy, own, t0 = machine_busy(), cpu_seconds(pids), time.perf_counter()
        for i in ids:
            self.conns[i].send(("go",))
        m = Measurement(kind="raw", concurrency=processes, seconds=seconds)
        rate = 0.0
        for i in ids:
            n, elapsed, latencies = self._expect(i, "done")[1]
            rate += n / elapsed
            m.ok += n
            m.latencies.extend(latencies)
        share, span = _busy_share(busy, machine_busy()), time.perf_counter() - t0
        m.own_cpu = (sum(cpu_seconds(pids).values()) - sum(own.values())) / span
        m.other_cpu = None if share is None else max(0.0, share * CPUS - m.own_cpu)
        m.rate = rate
        return m

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


# -- the server ---------------------------------------------------------------------------


class ServerError(Exception):
    pass


class Server:
    """``appliance --dir D serve`` in its own session; its output goes to ``log_path``."""

    def __init__(self, data_dir: Path, log_path: Path, workers: int, threads: int,
                 database_url: str | None = None) -> None:
        self.data_dir = data_dir
        self.database_url = database_url  # None: the one in appliance.yaml (SQLite)
        self.config_path = data_dir / "appliance.yaml"
        self.original_config = self.config_path.read_text(encoding="utf-8")
        self.log_path = log_path
        self.workers = workers
        self.threads = threads
        self.proc: subprocess.Popen[bytes] | None = None
        self.api_port = 0
        self.http_port = 0

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def roots(self) -> str:
        return str(self.data_dir / "tls" / "roots.pem")

    def configure(self) -> None:
        """Fresh free ports into appliance.yaml (before the raw run: it names the CRL URL)."""
        self.api_port, self.http_port = free_ports(2)
        self.config_path.write_text(
            without_service_block(self.original_config)
            + service_block(self.api_port, self.http_port, self.workers, self.threads),
            encoding="utf-8")

    def restore_config(self) -> None:
        self.config_path.write_text(self.original_config, encoding="utf-8")

    def start(self, timeout: float) -> float:
        """Start and wait until ``/1.0/health`` answers over verified TLS; seconds taken."""
        for attempt in range(3):
            if attempt:
                self.configure()  # the ports were taken in the meantime: pick new ones
            t0 = time.monotonic()
            with self.log_path.open("ab") as log:
                log.write(f"--- bench: serve on port {self.api_port} ---\n".encode())
                log.flush()
                self.proc = subprocess.Popen(
                    appliance_cmd("--dir", str(self.data_dir), "serve"), stdout=log,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=child_env(self.database_url), start_new_session=True)
            try:
                self._wait_healthy(timeout)
                return time.monotonic() - t0
            except ServerError:
                log_text = self.log_tail(200)
                self.stop()
                if attempt < 2 and "Address already in use" in log_text:
                    continue
                raise
        raise AssertionError("unreachable")

    def _wait_healthy(self, timeout: float) -> None:
        import requests

        deadline = time.monotonic() + timeout
        last = "no answer yet"
        with requests.Session() as s:
            s.trust_env = False
            while time.monotonic() < deadline:
                assert self.proc is not None
                rc = self.proc.poll()
                if rc is not None:
                    raise ServerError(f"appliance serve exited with code {rc} while starting")
                if os.path.exists(self.roots):
                    try:
                        r = s.get(f"{self.base_url}/1.0/health", verify=self.roots, timeout=2)
                        if r.status_code == 200:
                            return
                        last = f"HTTP {r.status_code}"
                    except requests.RequestException as exc:
                        last = type(exc).__name__
                time.sleep(0.2)
        raise ServerError(f"appliance serve did not answer {self.base_url}/1.0/health within "
                          f"{timeout:g} s (last: {last})")

    def processes(self) -> dict[int, tuple[int, str]]:
        """The server's process group (serve, both listeners' supervisors, their workers):
        pid -> (parent pid, command line)."""
        if self.proc is None:
            return {}
        out = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == self.proc.pid:
                    cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
                    out[int(entry)] = (int(fields[1]), cmd.decode(errors="replace"))
        return out

    def pids(self) -> list[int]:
        return sorted(self.processes())

    def api_workers(self) -> list[int]:
        """The API's workers: children of its supervisor (``appliance.web.api_server``)."""
        procs = self.processes()
        arbiters = {pid for pid, (ppid, cmd) in procs.items()
                    if "appliance.web.api_server" in cmd and self.proc is not None
                    and ppid == self.proc.pid}
        return sorted(pid for pid, (ppid, _) in procs.items() if ppid in arbiters)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)  # serve stops both listeners
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        self.proc = proc
        if self.pids():  # anything left of the group (a worker that ignored SIGTERM)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self.proc = None
        return proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no server log)"
        return _tail(text, lines)


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds per pid (Linux /proc); a process that ended counts 0."""
    hz = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        out[pid] = 0.0
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / hz
    return out


def group_pids(pgid: int) -> list[int]:
    """Every process in process group ``pgid`` (a server started in a session of its own)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                out.append(int(entry))
    return sorted(out)


def group_cpu(pgid: int) -> dict[int, float]:
    """CPU seconds (user + system, reaped children's included) of each process in a group."""
    hz = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / hz
    return out


def cpu_delta(a: dict[int, float], b: dict[int, float], pids: set[int] | None = None) -> float:
    """CPU seconds between two ``group_cpu`` readings. A process that ended in between counts
    minus its first reading: its parent's reaped-children time now holds all of it."""
    keys = (set(a) | set(b)) if pids is None else pids
    return sum(b.get(k, 0.0) - a.get(k, 0.0) for k in keys)


def _busy_share(a: tuple[float, float], b: tuple[float, float]) -> float | None:
    return (b[0] - a[0]) / (b[1] - a[1]) if b[1] > a[1] else None


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat; steal counts as busy."""
    try:
        parts = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0, 0.0
    total = sum(parts)  # user nice system idle iowait irq softirq steal (guest is in user)
    return total - parts[3] - (parts[4] if len(parts) > 4 else 0.0), total


# -- service: requests made before the clock, sent by client threads -----------------------


@dataclass
class Item:
    name: str
    body: bytes


class ItemFactory:
    """CSRs (EC P-256, CN and SAN DNS hostN.example.com) and their one-time tokens."""

    def __init__(self, key_path: Path, audience: str) -> None:
        from cryptography.hazmat.primitives import serialization

        from appliance.provisioners import sealed, tokens

        key: Any
        if key_path.exists():  # sealed (quickstart): the password file is beside it
            key = sealed.unseal(key_path.read_text().strip(), sealed.read_password_file(
                key_path.with_suffix(".password")))
        else:  # a data directory kept from before sealed keys
            key = serialization.load_pem_private_key(
                key_path.with_suffix(".pem").read_bytes(), None)
        self.key = key
        self.kid = tokens.public_jwk(key.public_key())["kid"]  # type: ignore[arg-type]
        self.audience = audience
        self.counter = itertools.count()
        self.run_tag = os.urandom(3).hex()  # names differ between runs on a kept directory

    def make(self, n: int) -> list[Item]:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        from appliance.provisioners import tokens

        out = []
        for _ in range(n):
            name = f"host{next(self.counter)}-{self.run_tag}.example.com"
            csr = (x509.CertificateSigningRequestBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]),
                                  critical=False)
                   .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
            ott = tokens.mint(self.key, provisioner=PROVISIONER,  # type: ignore[arg-type]
                              audience=self.audience, sans=[name], lifetime=TOKEN_LIFETIME,
                              kid=self.kid)
            pem = csr.public_bytes(serialization.Encoding.PEM).decode()
            out.append(Item(name, json.dumps({"csr": pem, "ott": ott}).encode()))
        return out


@dataclass
class Sent:
    start: float
    end: float
    status: int  # 0: no HTTP answer (connection error, timeout)
    error: str = ""


@dataclass
class Load:
    """What the clients saw in one run."""

    t0: float
    sent: list[Sent]
    exhausted_at: float | None
    samples: list[tuple[str, dict[str, Any]]]  # (name asked for, 201 body) for a full check


def drive(url: str, roots: str, items: list[Item], clients: int, until: float | None,
          on_start: Any = None) -> Load:
    """``clients`` threads post ``items`` (each once) until ``until`` seconds or none are left."""
    import requests

    counter = itertools.count()  # next() on it is atomic under the GIL
    barrier = threading.Barrier(clients + 1)
    per_thread: list[list[Sent]] = [[] for _ in range(clients)]
    exhausted: list[float] = []
    samples: list[tuple[str, dict[str, Any]]] = []
    headers = {"Content-Type": "application/json"}
    deadline = math.inf
    failures: list[BaseException] = []

    def client(k: int) -> None:
        log = per_thread[k]
        clock = time.perf_counter
        last: tuple[str, dict[str, Any]] | None = None
        try:
            with requests.Session() as s:
                s.trust_env = False  # no proxies; REQUESTS_CA_BUNDLE would override verify
                s.verify = roots
                barrier.wait()
                while True:
                    now = clock()
                    if now >= deadline:
                        break
                    i = next(counter)
                    if i >= len(items):
                        exhausted.append(now)
                        break
                    item = items[i]
                    try:
                        r = s.post(url, data=item.body, headers=headers, timeout=REQUEST_TIMEOUT)
                        end = clock()
                        if r.status_code == 201:
                            log.append(Sent(now, end, 201))
                            last = (item.name, r.json())
                        else:
                            log.append(Sent(now, end, r.status_code, r.text[:300]))
                    except requests.RequestException as exc:
                        log.append(Sent(now, clock(), 0, f"{type(exc).__name__}: {exc}"[:300]))
        except BaseException as exc:
            failures.append(exc)
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.abort()
        if last is not None:
            samples.append(last)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    if until is not None:
        deadline = t0 + until
    if on_start is not None:
        on_start(t0)
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    return Load(t0, [x for log in per_thread for x in log], min(exhausted, default=None),
                samples)


@dataclass
class Measurement:
    kind: str  # "raw" or "service"
    concurrency: int  # processes (raw) or clients (service)
    seconds: float  # the measured window
    rate: float = 0.0
    ok: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0  # in the window
    errors_outside: int = 0  # in the pilot, the warm-up or after the window
    ok_all: int = 0  # 201 answers, the pilot and warm-up included
    error_kinds: Counter[str] = field(default_factory=Counter)
    error_examples: list[str] = field(default_factory=list)
    window_cut: bool = False
    batch: int = 0
    generate_seconds: float = 0.0
    server_cpu: float | None = None  # CPU seconds per second (1.0 = one core busy)
    worker_cpu: list[float] = field(default_factory=list)  # each API worker's share of that
    client_cpu: float | None = None
    own_cpu: float | None = None  # raw processes, or server + client
    other_cpu: float | None = None  # everything else on the machine, in cores

    def note_errors(self, sent: list[Sent], in_window: bool) -> None:
        for x in sent:
            if x.status == 201:
                continue
            if in_window:
                self.errors += 1
            else:
                self.errors_outside += 1
            kind = f"HTTP {x.status}" if x.status else x.error.split(":", 1)[0]
            self.error_kinds[kind] += 1
            if len(self.error_examples) < 5:
                self.error_examples.append(f"{kind}: {x.error}")


def pilot_rate(load: Load) -> float:
    """Completions per second over the last two thirds of a pilot (the first third warms up)."""
    ends = sorted(x.end for x in load.sent)
    if len(ends) < 6:
        return 0.0
    a = ends[len(ends) // 3]
    span = ends[-1] - a
    return (len(ends) - len(ends) // 3 - 1) / span if span > 0 else 0.0


def measure_service(server: Server, factory: ItemFactory, clients: int, seconds: float,
                    warmup: float, rate_hint: float, verbose: bool
                    ) -> tuple[Measurement, list[tuple[str, dict[str, Any]]]]:
    url = f"{server.base_url}/1.0/sign"
    m = Measurement(kind="service", concurrency=clients, seconds=seconds)

    # Pilot: warms workers and connections up and tells how many requests to prepare.
    pilot = drive(url, server.roots, factory.make(30 + 8 * clients), clients, None)
    m.note_errors(pilot.sent, in_window=False)
    rate = max(pilot_rate(pilot), rate_hint)
    m.batch = min(MAX_BATCH, math.ceil(rate * (warmup + seconds) * BATCH_MARGIN) + 8 * clients)
    g0 = time.perf_counter()
    items = factory.make(m.batch)
    m.generate_seconds = time.perf_counter() - g0
    if verbose:
        print(f"  {clients} client(s): pilot {rate:.1f}/s, {m.batch} requests made in "
              f"{m.generate_seconds:.1f} s", file=sys.stderr)

    # The run: CPU counters are read at the window's edges by this (otherwise idle) thread.
    pids = server.pids()
    workers = server.api_workers()
    marks: dict[str, tuple[float, dict[int, float], float, tuple[float, float]]] = {}

    def sample() -> tuple[float, dict[int, float], float, tuple[float, float]]:
        return time.perf_counter(), cpu_seconds(pids), time.process_time(), machine_busy()

    def on_start(t0: float) -> None:
        def watch() -> None:
            time.sleep(max(0.0, t0 + warmup - time.perf_counter()))
            marks["start"] = sample()
            time.sleep(max(0.0, t0 + warmup + seconds - time.perf_counter()))
            marks["end"] = sample()

        threading.Thread(target=watch, daemon=True).start()

    load = drive(url, server.roots, items, clients, warmup + seconds, on_start)
    w_start = load.t0 + warmup
    w_end = load.t0 + warmup + seconds
    if load.exhausted_at is not None and load.exhausted_at < w_end:
        m.window_cut = True
        w_end = max(load.exhausted_at, w_start + 1e-3)
    m.ok_all = sum(x.status == 201 for x in pilot.sent) + sum(x.status == 201 for x in load.sent)
    inside = [x for x in load.sent if w_start <= x.end < w_end]
    outside = [x for x in load.sent if not w_start <= x.end < w_end]
    m.note_errors(inside, in_window=True)
    m.note_errors(outside, in_window=False)
    good = [x for x in inside if x.status == 201]
    m.seconds = w_end - w_start
    m.ok = len(good)
    m.rate = m.ok / m.seconds
    m.latencies = [x.end - x.start for x in good]
    time.sleep(0.05)
    if "start" in marks and "end" in marks and not m.window_cut:
        (a_t, a_srv, a_cli, a_m), (b_t, b_srv, b_cli, b_m) = marks["start"], marks["end"]
        span = b_t - a_t
        m.server_cpu = sum(b_srv.values()) / span - sum(a_srv.values()) / span
        m.worker_cpu = [(b_srv[p] - a_srv[p]) / span for p in workers]
        m.client_cpu = (b_cli - a_cli) / span
        m.own_cpu = m.server_cpu + m.client_cpu
        share = _busy_share(a_m, b_m)
        m.other_cpu = None if share is None else max(0.0, share * CPUS - m.own_cpu)
    return m, load.samples


def check_samples(samples: list[tuple[str, dict[str, Any]]], issuer_der: bytes) -> list[str]:
    """Full checks on a few issued certificates: names, chain, issued by the issuing CA."""
    from cryptography import x509

    issuer = x509.load_der_x509_certificate(issuer_der)
    problems = []
    for name, body in samples[:VERIFY_SAMPLE]:
        try:
            cert = x509.load_pem_x509_certificate(body["crt"].encode())
            cert.verify_directly_issued_by(issuer)
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            if san.get_values_for_type(x509.DNSName) != [name]:
                problems.append(f"{name}: SAN is {san}")
            if body.get("serial") != f"{cert.serial_number:x}":
                problems.append(f"{name}: serial field {body.get('serial')} does not match")
            if len(body.get("certChain", [])) < 2:
                problems.append(f"{name}: certChain has {len(body.get('certChain', []))} entries")
        except Exception as exc:
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
    return problems


# -- the run and the report -------------------------------------------------------------


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(p / 100.0 * len(ordered)) - 1))]


def log_findings(text: str) -> list[str]:
    """Server log lines that speak of trouble (errors, tracebacks, worker timeouts)."""
    keep = re.compile(r'\[(ERROR|CRITICAL)\]|Traceback|WORKER TIMEOUT|"level": "(error|critical'
                      r'|warning)"|Exception|Error:', re.I)
    return [line for line in text.splitlines() if keep.search(line)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.monotonic()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="issuance-bench-") as tmp_name:
        tmp = Path(tmp_name)
        data_dir, made = prepare_dir(args.keep, tmp)
        log_path = (data_dir if args.keep is not None else tmp) / "bench-serve.log"
        with contextlib.suppress(FileNotFoundError):
            log_path.unlink()
        server = Server(data_dir, log_path, args.workers, args.threads)
        rows: list[Measurement] = []
        findings: list[str] = []
        sample_problems: list[str] = []
        samples: list[tuple[str, dict[str, Any]]] = []
        rc: int | None = None
        try:
            server.configure()
            authority = issuing_authority(server.config_path)
            counts_before = certificate_counts(server.config_path)
            setup_seconds = time.monotonic() - t_start

            # Raw, while no server runs.
            raw_procs = sorted(set(args.raw_processes))
            try:
                workers = RawWorkers(max(raw_procs), server.config_path, authority,
                                     f"http://127.0.0.1:{server.http_port}")
                try:
                    for p in raw_procs:
                        rows.append(workers.measure(p, args.seconds))
                        if args.verbose:
                            print(f"  raw {p} process(es): {rows[-1].rate:.1f}/s",
                                  file=sys.stderr)
                finally:
                    workers.close()
            except RuntimeError as exc:
                raise SystemExit(f"error: the raw measurement failed: {exc}") from None

            # The service.
            start_seconds = server.start(args.start_timeout)
            if args.verbose:
                print(f"  server up in {start_seconds:.1f} s on {server.base_url}",
                      file=sys.stderr)
            from appliance.provisioners.settings import sign_audience

            factory = ItemFactory(data_dir / "secrets" / f"provisioner-{PROVISIONER}.jwe",
                                  sign_audience("127.0.0.1", f"127.0.0.1:{server.api_port}"))
            hint = 0.0
            try:
                for n in args.clients:
                    m, got = measure_service(server, factory, n, args.seconds, args.warmup,
                                             hint, args.verbose)
                    rows.append(m)
                    samples += got
                    hint = max(hint, m.rate)
                    if args.verbose:
                        print(f"  service {n} client(s): {m.rate:.1f}/s, errors {m.errors}",
                              file=sys.stderr)
            finally:
                rc = server.stop()
            findings = log_findings(log_path.read_text(encoding="utf-8", errors="replace"))
            counts_after = certificate_counts(server.config_path)
            sample_problems = check_samples(samples, authority.certificate_der)
        except ServerError as exc:
            tail = server.log_tail(40)
            raise SystemExit(f"error: {exc}\n--- last lines of the server log ({log_path}) ---\n"
                             f"{tail}") from None
        finally:
            server.stop()
            server.restore_config()
            if args.keep is not None and made:
                print(f"note: made the data directory {data_dir} (kept; the next run with "
                      "--keep reuses it)", file=sys.stderr)
        total_seconds = time.monotonic() - t_start
        if findings and args.keep is None:
            # The temporary directory goes away; keep the log where the user can read it.
            saved = Path(tempfile.gettempdir()) / f"issuance-bench-serve-{os.getpid()}.log"
            shutil.copyfile(log_path, saved)
            log_path = saved

    raw_rates = {m.concurrency: m.rate for m in rows if m.kind == "raw"}
    base_procs = args.workers if args.workers in raw_rates else max(raw_rates)
    baseline = raw_rates[base_procs]
    responses_201 = sum(m.ok_all for m in rows if m.kind == "service")
    delta = {k: counts_after.get(k, 0) - counts_before.get(k, 0)
             for k in sorted(set(counts_after) | set(counts_before))}
    service = [m for m in rows if m.kind == "service"]
    best = max(service, key=lambda m: m.rate) if service else None

    def row(m: Measurement) -> dict[str, Any]:
        ms = [1000.0 * x for x in m.latencies]
        out: dict[str, Any] = {
            "kind": m.kind, "concurrency": m.concurrency,
            "certs_per_second": round(m.rate, 1), "certificates": m.ok,
            "seconds": round(m.seconds, 2),
            "p50_ms": _r(percentile(ms, 50)), "p95_ms": _r(percentile(ms, 95)),
            "p99_ms": _r(percentile(ms, 99)), "max_ms": _r(max(ms, default=None)),
            "errors": m.errors, "ratio_to_raw": round(m.rate / baseline, 4) if baseline else None,
            "own_cpu_cores": _r(m.own_cpu, 2), "other_cpu_cores": _r(m.other_cpu, 2),
        }
        if m.kind == "service":
            out.update({
                "errors_outside_window": m.errors_outside,
                "error_kinds": dict(m.error_kinds), "error_examples": m.error_examples,
                "window_cut_short": m.window_cut, "requests_prepared": m.batch,
                "created_all": m.ok_all,
                "prepare_seconds": round(m.generate_seconds, 2),
                "server_cpu_cores": _r(m.server_cpu, 2),
                "worker_cpu_cores": [round(x, 2) for x in m.worker_cpu],
                "client_cpu_cores": _r(m.client_cpu, 2),
            })
        return out

    return {
        "data_dir": str(data_dir) if args.keep is not None else None,
        "data_dir_reused": not made,
        "workers": args.workers, "threads": args.threads,
        "seconds": args.seconds, "warmup_seconds": args.warmup,
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "setup_seconds": round(setup_seconds, 1),
        "server_start_seconds": round(start_seconds, 1),
        "total_seconds": round(total_seconds, 1),
        "client": "threads in one process, one requests.Session (keep-alive) each",
        "results": [row(m) for m in rows],
        "baseline": f"raw with {base_procs} process(es)",
        "baseline_certs_per_second": round(baseline, 1),
        "best_service_certs_per_second": round(best.rate, 1) if best else None,
        "best_service_clients": best.concurrency if best else None,
        "service_to_raw_percent": round(100.0 * best.rate / baseline, 2) if best else None,
        "goal_percent": GOAL_PERCENT,
        "goal_withdrawn": True,  # issue 16: informational only; see --vs-cfssl
        "server_exit_code": rc,
        "server_log": str(log_path) if (findings or args.keep is not None) else None,
        "server_log_findings": len(findings),
        "server_log_examples": findings[:10],
        "responses_201": responses_201,
        "database_delta": delta,
        "sample_check_problems": sample_problems,
    }


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else f"{value:{spec}}"


def print_table(report: dict[str, Any]) -> None:
    print(f"Issuance benchmark: POST /1.0/sign on {report['workers']} API worker(s) x "
          f"{report['threads']} thread(s) vs raw build-and-sign through SoftHSM")
    print(f"{report['seconds']:g} s per measurement (service: after a pilot and "
          f"{report['warmup_seconds']:g} s warm-up); {report['cpus']} CPU(s); python "
          f"{report['python']}; run took {report['total_seconds']:.0f} s")
    print(f"clients: {report['client']}")
    print()
    header = (f"{'mode':<8} {'conc':>4} {'certs/s':>9} {'p50 ms':>8} {'p95 ms':>8} "
              f"{'p99 ms':>8} {'errors':>6} {'vs raw':>7}   {'server':>6} {'workers':<11} "
              f"{'client':>6} {'others':>6}")
    print(header)
    print("-" * len(header))
    for r in report["results"]:
        per_worker = "/".join(f"{x:.2f}" for x in r.get("worker_cpu_cores", [])) or "-"
        line = (f"{r['kind']:<8} {r['concurrency']:>4} {r['certs_per_second']:>9.1f} "
                f"{_fmt(r['p50_ms'], '.2f'):>8} {_fmt(r['p95_ms'], '.2f'):>8} "
                f"{_fmt(r['p99_ms'], '.2f'):>8} {r['errors']:>6} "
                f"{_fmt(r['ratio_to_raw'], '.3f'):>7}   "
                f"{_fmt(r.get('server_cpu_cores'), '.2f'):>6} {per_worker:<11} "
                f"{_fmt(r.get('client_cpu_cores'), '.2f'):>6} "
                f"{_fmt(r.get('other_cpu_cores'), '.2f'):>6}")
        if r.get("window_cut_short"):
            line += f"  (ran out of prepared requests after {r['seconds']:.1f} s)"
        print(line)
    print()
    print(f"vs raw: against {report['baseline']} ({report['baseline_certs_per_second']:.1f}/s), "
          "as many as the server has workers")
    print("server, workers, client, others: CPU cores busy in the window (others: the rest of "
          "the machine;\nabove ~0.2 the numbers are disturbed)")
    for r in report["results"]:
        if r["kind"] == "service" and (r["errors"] or r["errors_outside_window"]):
            kinds = ", ".join(f"{k} x{v}" for k, v in r["error_kinds"].items())
            print(f"errors with {r['concurrency']} client(s): {r['errors']} in the window, "
                  f"{r['errors_outside_window']} in pilot/warm-up ({kinds}); e.g. "
                  f"{r['error_examples'][0]}")
    for r in report["results"]:
        cpu = r.get("worker_cpu_cores") or []
        if r["concurrency"] > 1 and len(cpu) > 1 and min(cpu) < 0.1 * max(cpu):
            print(f"note: with {r['concurrency']} clients one worker did nearly all the work "
                  f"({'/'.join(f'{x:.2f}' for x in cpu)}): every keep-alive connection stayed "
                  "on the worker that accepted it")
    delta = report["database_delta"]
    issued = delta.get("issued", 0)
    line = (f"database: +{issued} issued, +{delta.get('failed', 0)} failed, "
            f"+{delta.get('reserved', 0)} reserved, +{delta.get('used_tokens', 0)} tokens "
            f"spent; {report['responses_201']} x 201 answered (all phases)")
    if issued < report["responses_201"] or delta.get("failed") or delta.get("reserved"):
        line += " - MISMATCH"
    print(line)
    if report["sample_check_problems"]:
        print("issued-certificate check FAILED: " + "; ".join(report["sample_check_problems"]))
    if report["server_log_findings"]:
        print(f"server log: {report['server_log_findings']} line(s) with errors or warnings, see "
              f"{report['server_log']}; first: {report['server_log_examples'][0][:200]}")
    if report["server_exit_code"] not in (0, None):
        print(f"server exited with code {report['server_exit_code']}")
    pct = report["service_to_raw_percent"]
    if pct is None:
        print("service/raw: not measured (informational)")
        return
    # Issue 16 withdrew the ">= 25% of raw" goal (raw build+sign is the wrong baseline); the
    # goals now compare with a peer in the same run: --vs-cfssl, and bench/acme.py vs pebble.
    print(f"service/raw: {pct:.1f}% (informational; the old >= {GOAL_PERCENT:g}% goal is "
          f"withdrawn, see --vs-cfssl); best service rate ({report['best_service_clients']} "
          f"client(s)) vs {report['baseline']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vs-cfssl", action="store_true",
                    help="instead of raw: /1.0/sign (SQLite, and PostgreSQL unless "
                         "--no-postgres) against cfssl serve, alternating rounds, wrk clients, "
                         "server CPU per certificate (bench/vs_cfssl.py)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="--vs-cfssl: rounds per client count (default 3)")
    ap.add_argument("--no-postgres", action="store_true",
                    help="--vs-cfssl: leave out the PostgreSQL row")
    ap.add_argument("--clients", type=int, nargs="+", default=None,
                    help="concurrent clients, one measurement each (default: 1 4 16; "
                         "--vs-cfssl: 4 16)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="per measurement (default 10; --vs-cfssl: 5)")
    ap.add_argument("--warmup", type=float, default=1.0,
                    help="service: seconds of load before the window opens (default 1)")
    ap.add_argument("--workers", type=int, default=2, help="API workers (default 2)")
    ap.add_argument("--threads", type=int, default=4,
                    help="API threads per worker (default 4)")
    ap.add_argument("--raw-processes", type=int, nargs="+", default=[1, 2],
                    help="raw signing process counts (default: 1 2)")
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="use this data directory (made by quickstart if missing or empty) and "
                         "keep it; default: a temporary one")
    ap.add_argument("--start-timeout", type=float, default=60.0,
                    help="seconds to wait for the server to answer (default 60)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ap.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    args = ap.parse_args(argv)
    if args.clients is None:
        args.clients = [4, 16] if args.vs_cfssl else [1, 4, 16]
    if args.seconds is None:
        args.seconds = 5.0 if args.vs_cfssl else 10.0
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    if args.vs_cfssl:
        import vs_cfssl  # bench/vs_cfssl.py, beside this file

        return vs_cfssl.main(args)
    if (args.seconds <= 0 or args.warmup < 0 or min(args.clients) < 1 or args.workers < 1
            or args.threads < 1 or min(args.raw_processes) < 1):
        ap.error("--seconds must be > 0, --warmup >= 0, counts >= 1")
    try:
        report = run(args)
    except KeyboardInterrupt:
        print("interrupted; the server was stopped", file=sys.stderr)
        return 130
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
