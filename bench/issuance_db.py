#!/usr/bin/env python3
"""What the database costs per certificate issued, in-process, before and after issue 16's
database work, on SQLite and PostgreSQL in the same run.

For each backend a data directory is made (``appliance quickstart``; PostgreSQL: a fresh
database on ``--pg-url``'s server, dropped afterwards) and a child process issues
certificates through the real path of ``POST /1.0/sign`` minus HTTP: the one-time token
verified, then ``Issuer.issue`` (CSR, template, policy, pkilint, token signature, OCSP,
store and audit). Two modes take turns in rounds (order reversed every other round):

* ``before``: the order before issue 16's database work, statement for statement: the
  provisioner row read, the token verified and spent in a transaction of its own (as
  ``authorize`` did it then), and every pipeline read made afresh (the issuance epochs
  withheld): three durable commits;
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

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
    commit_seconds: float = 0.0
    statements: int = 0
    commits: int = 0
    write_commits: int = 0
    by_statement: dict[str, list[float]] = field(default_factory=dict)  # key: [seconds, n]
    _started: dict[int, tuple[float, str]] = field(default_factory=dict)
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
                    took = time.perf_counter() - start
                    self.seconds += took
                    self.commit_seconds += took
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
        words = statement.split()
        key = " ".join(words[:3]) if words else "?"
        self._started[id(cursor)] = (time.perf_counter(), key[:48])
        if statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE"):
            with self._lock:
                self._wrote.add(id(conn.connection))  # what do_commit is given

    def _after(self, conn: Any, cursor: Any, *_: Any) -> None:
        started = self._started.pop(id(cursor), None)
        if started is not None:
            took = time.perf_counter() - started[0]
            with self._lock:
                self.seconds += took
                self.statements += 1
                entry = self.by_statement.setdefault(started[1], [0.0, 0])
                entry[0] += took
                entry[1] += 1

    def snapshot(self) -> tuple[float, int, int, int, float]:
        with self._lock:
            return (self.seconds, self.statements, self.commits, self.write_commits,
                    self.commit_seconds)


def child(data_dir: Path, certs: int, rounds: int) -> dict[str, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from sqlalchemy import Table, bindparam, select

    from appliance import config
    from appliance.issuance import spend as spending
    from appliance.issuance.pipeline import Issuer
    from appliance.issuance.request import SignRequest, TokenSpend
    from appliance.provisioners import authorize, sealed, tokens
    from appliance.provisioners.settings import sign_audience
    from appliance.runtime import Appliance
    from appliance.store.models import Provisioner

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

    provisioners = cast(Table, Provisioner.__table__)
    by_name = select(*(provisioners.c[k] for k in (
        "id", "name", "type", "config", "credential", "authority_id"))).where(
        provisioners.c.name == bindparam("b_name"))

    def spent_before(ott: str) -> tuple[Any, Any]:
        """The token as ``authorize`` checked it before: the row read on every request,
        then verified, then spent in a transaction of its own."""
        name = tokens.unverified_issuer(ott)
        with app.db.read() as db:
            row = db.execute(by_name, {"b_name": name}).first()
        assert row is not None
        ctx = authorize.context_of(app, row.id, row.name, row.type, row.config,
                                   row.authority_id)
        claims = tokens.verify(ott, json.loads(row.credential), provisioner=name,
                               audience=audience)
        authorize.require_enabled(row.config, row.name)
        with spending.replay_refused(), app.db.write() as db:
            spending.spend(db, TokenSpend(f"{name}:{claims.jti}", row.id,
                                          datetime.fromtimestamp(claims.expires_at, UTC)))
        return ctx, claims

    def one(mode: str, csr: x509.CertificateSigningRequest, ott: str) -> None:
        if mode == "before":
            ctx, claims = spent_before(ott)
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
    # wall, db, statements, commits, durable commits, commit time, certificates
    totals = {m: [0.0, 0.0, 0, 0, 0, 0.0, 0] for m in MODES}
    per_statement: dict[str, dict[str, list[float]]] = {m: {} for m in MODES}
    for r in range(rounds):
        for mode in (MODES if r % 2 == 0 else MODES[::-1]):
            batch = items(certs)
            probe.by_statement = per_statement[mode]
            before = probe.snapshot()
            start = time.perf_counter()
            for csr, ott in batch:
                one(mode, csr, ott)
            wall = time.perf_counter() - start
            after = probe.snapshot()
            t = totals[mode]
            t[0] += wall
            for i in range(5):
                t[1 + i] += after[i] - before[i]
            t[6] += len(batch)
    app.close()
    return {"dialect": app.db.dialect, "statements": {
        m: {k: {"ms": round(1000 * v[0] / totals[m][6], 3), "per_cert": v[1] / totals[m][6]}
            for k, v in sorted(st.items(), key=lambda kv: -kv[1][0])}
        for m, st in per_statement.items()}, "modes": {
        m: {"certs": t[6], "wall_ms": 1000 * t[0] / t[6], "db_ms": 1000 * t[1] / t[6],
            "commit_ms": 1000 * t[5] / t[6], "statements": t[2] / t[6],
            "commits": t[3] / t[6], "write_commits": t[4] / t[6]}
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
    parser.add_argument("--statements", action="store_true",
                        help="also print the time per statement kind (first three words)")
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
          f"{'db ms':>7} {'commit ms':>9} {'total ms':>8}")
    for label, res in results:
        for mode in MODES:
            m = res["modes"][mode]
            print(f"{label:<11} {mode:<7} {m['write_commits']:7.2f} {m['commits']:7.2f} "
                  f"{m['statements']:6.1f} {m['db_ms']:7.2f} {m['commit_ms']:9.2f} "
                  f"{m['wall_ms']:8.2f}")
        b, a = res["modes"]["before"], res["modes"]["after"]
        print(f"{label:<11} saved   {b['write_commits'] - a['write_commits']:7.2f} "
              f"{b['commits'] - a['commits']:7.2f} {b['statements'] - a['statements']:6.1f} "
              f"{b['db_ms'] - a['db_ms']:7.2f} {b['commit_ms'] - a['commit_ms']:9.2f} "
              f"{b['wall_ms'] - a['wall_ms']:8.2f}")
    if args.statements:
        for label, res in results:
            for mode in MODES:
                print(f"\n{label} {mode}: ms per certificate by statement")
                for k, v in res["statements"][mode].items():
                    print(f"  {v['ms']:7.3f}  x{v['per_cert']:.2f}  {k}")
    print("durable: commits of transactions that wrote; commits: all (reads too); db ms: "
          "statements + commits + rollbacks at the driver (commit ms: the commits alone); "
          "total: the whole request")


if __name__ == "__main__":
    main()
