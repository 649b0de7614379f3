#!/usr/bin/env python3
"""What the database costs per certificate issued, in-process, before and after issue 16's
database work, on SQLite and PostgreSQL in the same run.

For each backend a data directory is made (``appliance quickstart``; PostgreSQL: a fresh
database on ``--pg-url``'s server, dropped afterwards) and a child process issues
certificates through the real path of ``POST /1.0/sign`` minus HTTP: the one-time token
verified, then ``Issuer.issue`` (CSR, template, policy, pkilint, token signature, OCSP,
store and audit). Two modes take turns in rounds (order reversed every other round):

* ``before``: the order of PR 16's predecessor: the token spent in a transaction of its own
  (``authorize.one_time_token``), and every read made afresh on every request (the
  issuance epochs withheld, the provisioner row re-read): three durable commits;
* ``after``: the token spent in the serial reservation's transaction, the reads cached
  behind the issuance epochs (``appliance.store.epochs``): two durable commits.

The database is timed at the driver (every statement from before to after its cursor
execution, plus every COMMIT and ROLLBACK), so the numbers are what the process spent
waiting on or talking to the database, not its own Python around it. It prints numbers
and never fails on them.

    .venv/bin/python bench/issuance_db.py [--certs 40] [--rounds 3] [--no-pg]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("APPLIANCE_TEST_PG_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MODES = ("before", "after")
WARMUP = 5  # certificates per mode before the clock starts


def child_env(database_url: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)  # each process sets it from the HSM profile
    env.pop("APPLIANCE_CONFIG", None)
    env.pop("APPLIANCE_DATABASE_URL", None)
    if database_url:
        env["APPLIANCE_DATABASE_URL"] = database_url
    env["PYTHONPATH"] = str(REPO)
    return env


# -- the child: one backend ------------------------------------------------------------------


@dataclass
class Probe:
    """Driver-level timing of one engine's statements and transaction ends."""

    seconds: float = 0.0
    statements: int = 0
    commits: int = 0
    write_commits: int = 0
    _started: dict[int, float] = field(default_factory=dict)
    _wrote: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, engine: Any) -> None:
        from sqlalchemy import event

        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)
        dialect = engine.dialect
        commit, rollback = dialect.do_commit, dialect.do_rollback

        def do_commit(dbapi_conn: Any) -> None:
            start = time.perf_counter()
            try:
                commit(dbapi_conn)
            finally:
                with self._lock:
                    self.seconds += time.perf_counter() - start
                    self.commits += 1
                    if id(dbapi_conn) in self._wrote:
                        self._wrote.discard(id(dbapi_conn))
                        self.write_commits += 1

        def do_rollback(dbapi_conn: Any) -> None:
            start = time.perf_counter()
            try:
                rollback(dbapi_conn)
            finally:
                with self._lock:
                    self.seconds += time.perf_counter() - start
                    self._wrote.discard(id(dbapi_conn))

        dialect.do_commit = do_commit
        dialect.do_rollback = do_rollback

    def _before(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        self._started[id(cursor)] = time.perf_counter()
        if statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
            with self._lock:
                self._wrote.add(id(conn.connection))  # what do_commit is given

    def _after(self, conn: Any, cursor: Any, *_: Any) -> None:
        start = self._started.pop(id(cursor), None)
        if start is not None:
            with self._lock:
                self.seconds += time.perf_counter() - start
                self.statements += 1

    def snapshot(self) -> tuple[float, int, int, int]:
        with self._lock:
            return self.seconds, self.statements, self.commits, self.write_commits


def child(data_dir: Path, certs: int, rounds: int) -> dict[str, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from appliance import config
    from appliance.issuance.pipeline import Issuer
    from appliance.issuance.request import SignRequest
    from appliance.provisioners import authorize, sealed, tokens
    from appliance.provisioners.settings import sign_audience
    from appliance.runtime import Appliance

    app = Appliance(config.load(data_dir / "appliance.yaml"))
    issuer = Issuer(app)
    probe = Probe()
    probe.attach(app.db.engine)
    key_file = data_dir / "secrets" / "provisioner-admin.jwe"
    key = sealed.unseal(key_file.read_text().strip(),
                        sealed.read_password_file(key_file.with_suffix(".password")))
    svc = app.settings.config.service
    audience = sign_audience(svc.api_hostname, svc.api_listen)
    tag = secrets.token_hex(3)
    counter = iter(range(10**9))

    def items(n: int) -> list[tuple[x509.CertificateSigningRequest, str]]:
        out = []
        for _ in range(n):
            name = f"db{next(counter)}-{tag}.example.com"
            csr = (x509.CertificateSigningRequestBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]),
                                  critical=False)
                   .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256()))
            out.append((csr, tokens.mint(key, provisioner="admin",  # type: ignore[arg-type]
                                         audience=audience, sans=[name], lifetime=1800)))
        return out

    rows = app.epoch_cache("provisioner", "provisioner-rows", authorize.PROVISIONER_CACHE)

    def one(mode: str, csr: x509.CertificateSigningRequest, ott: str) -> None:
        if mode == "before":
            rows.clear()  # the provisioner row read on every request, as before
            ctx, claims = authorize.one_time_token(app, ott)  # spent in its own commit
            issuer.issue(SignRequest(csr=csr, provisioner=ctx, requester="bench:db",
                                     credential_names=list(claims.sans), epochs={}))
            return
        v = authorize.verify_one_time_token(app, ott)
        issuer.issue(SignRequest(csr=csr, provisioner=v.ctx, requester="bench:db",
                                 credential_names=list(v.claims.sans),
                                 token_spend=v.spend, epochs=v.epochs))

    for mode in MODES:
        for csr, ott in items(WARMUP):
            one(mode, csr, ott)
    totals = {m: [0.0, 0.0, 0, 0, 0, 0] for m in MODES}  # wall, db, stmts, commits, writes, n
    for r in range(rounds):
        for mode in (MODES if r % 2 == 0 else MODES[::-1]):
            batch = items(certs)
            before = probe.snapshot()
            start = time.perf_counter()
            for csr, ott in batch:
                one(mode, csr, ott)
            wall = time.perf_counter() - start
            after = probe.snapshot()
            t = totals[mode]
            t[0] += wall
            for i in range(4):
                t[1 + i] += after[i] - before[i]
            t[5] += len(batch)
    app.close()
    return {"dialect": app.db.dialect, "modes": {
        m: {"certs": t[5], "wall_ms": 1000 * t[0] / t[5], "db_ms": 1000 * t[1] / t[5],
            "statements": t[2] / t[5], "commits": t[3] / t[5], "write_commits": t[4] / t[5]}
        for m, t in totals.items()}}


# -- the parent: data directories, children, the table ---------------------------------------


def quickstart(directory: Path, database_url: str | None) -> None:
    proc = subprocess.run([sys.executable, "-m", "appliance", "quickstart", "--dir",
                           str(directory)], capture_output=True, text=True,
                          env=child_env(database_url), check=False, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"appliance quickstart failed:\n{(proc.stdout + proc.stderr)[-3000:]}")


def run_backend(label: str, directory: Path, database_url: str | None, args: argparse.Namespace
                ) -> dict[str, Any]:
    print(f"[{label}] quickstart in {directory} ...", file=sys.stderr, flush=True)
    quickstart(directory, database_url)
    print(f"[{label}] issuing {args.rounds} x {args.certs} certificates per mode ...",
          file=sys.stderr, flush=True)
    proc = subprocess.run([sys.executable, __file__, "--child", str(directory), "--certs",
                           str(args.certs), "--rounds", str(args.rounds)],
                          capture_output=True, text=True, env=child_env(database_url),
                          check=False, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"[{label}] the measuring process failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def pg_database(admin_url: str) -> tuple[str, str] | None:
    try:
        import psycopg
    except ImportError:
        return None
    name = f"appliance_bench_{secrets.token_hex(4)}"
    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(plain, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        print(f"PostgreSQL not available at {admin_url}: {exc}", file=sys.stderr)
        return None
    return admin_url.rsplit("/", 1)[0] + "/" + name, name


def drop_pg(admin_url: str, name: str) -> None:
    import psycopg

    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--certs", type=int, default=40, help="certificates per mode per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    parser.add_argument("--pg-url", default=PG_ADMIN_URL,
                        help="a PostgreSQL server to make a throw-away database on")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.certs, args.rounds)))
        return
    results: list[tuple[str, dict[str, Any]]] = []
    tmp = Path(tempfile.mkdtemp(prefix="issuance-db-"))
    try:
        results.append(("sqlite", run_backend("sqlite", tmp / "sqlite", None, args)))
        if not args.no_pg:
            made = pg_database(args.pg_url)
            if made is not None:
                url, name = made
                try:
                    results.append(("postgresql", run_backend("postgresql", tmp / "pg", url,
                                                              args)))
                finally:
                    drop_pg(args.pg_url, name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(dict(results), indent=2))
        return
    print(f"database per certificate, in-process (/1.0/sign minus HTTP), {args.rounds} rounds "
          f"x {args.certs} certificates per mode; {os.cpu_count()} CPU(s)")
    print(f"{'backend':<11} {'mode':<7} {'durable':>7} {'commits':>7} {'stmts':>6} "
          f"{'db ms':>7} {'total ms':>8}")
    for label, res in results:
        for mode in MODES:
            m = res["modes"][mode]
            print(f"{label:<11} {mode:<7} {m['write_commits']:7.2f} {m['commits']:7.2f} "
                  f"{m['statements']:6.1f} {m['db_ms']:7.2f} {m['wall_ms']:8.2f}")
        b, a = res["modes"]["before"], res["modes"]["after"]
        print(f"{label:<11} saved   {b['write_commits'] - a['write_commits']:7.2f} "
              f"{b['commits'] - a['commits']:7.2f} {b['statements'] - a['statements']:6.1f} "
              f"{b['db_ms'] - a['db_ms']:7.2f} {b['wall_ms'] - a['wall_ms']:8.2f}")
    print("durable: commits of transactions that wrote; commits: all (reads too); "
          "db ms: statements + commits + rollbacks at the driver; total: the whole request")


if __name__ == "__main__":
    main()
