"""Engines and transactions.

SQLite runs in WAL mode. Writing transactions (``Database.transaction``) start
with ``BEGIN IMMEDIATE``: writers queue on the database lock instead of failing
later when a read snapshot turns out to be stale, which is what keeps
concurrent audit writers (threads or processes) in one chain. Reads
(``Database.sessions``) start a plain deferred ``BEGIN`` and never wait for
writers (WAL). PostgreSQL takes a row lock instead (see :mod:`appliance.audit.log`).

How SQLite writers wait matters for latency more than for throughput. SQLite's own busy
handler sleeps 1, 2, 5, 10, ... up to 100 ms between tries, so a writer that has just
missed the lock sleeps long past its release, and under a few dozen concurrent requests
the 99th percentile of a write climbs to hundreds of milliseconds. So the writers of one
process queue on a lock of the process (one of them at a time asks SQLite), and that one
asks for the database lock itself every half millisecond or so (``BEGIN IMMEDIATE`` with
no busy timeout) until it has it or its deadline has passed. The waits are bounded by the same
deadline as before and end in the same ``DatabaseError``; what a transaction does once it
has the lock is unchanged (the busy timeout is back for it).
"""

from __future__ import annotations

import math
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from appliance import deadline, logs
from appliance.errors import ConfigError, DatabaseError

log = logs.get("store")

SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def as_fault(exc: BaseException) -> DatabaseError | None:
    """A read that met a locked or unreachable database, or no pooled connection within the
    deadline, as the fault of ours it is (writes already raise ``DatabaseError``), so every
    protocol answers it as one: 503 and retry, never the client's error or a bare 500."""
    if isinstance(exc, (OperationalError, PoolTimeout)):
        return DatabaseError(f"the database is not available: {type(exc).__name__}")
    return None


def private_sqlite_file(url: str) -> Path | None:
    """Make the SQLite file of ``url`` readable by its owner only; returns its path.

    The database holds the audit log, every certificate and the ACME accounts: nothing for
    other users of the host. SQLite gives its ``-wal``, ``-shm`` and ``-journal`` files the
    database file's mode, so the file is created 0600 before SQLite first opens it (whatever
    the umask); one that exists with wider permissions (made by an older version) is
    tightened, with its side files, and the change logged. In-memory databases and URIs
    are left alone.
    """
    try:
        database = make_url(url).database
    except ArgumentError:
        return None
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    path = Path(database)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError:
        return path  # a missing folder: SQLite's own error says it better
    else:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is masked by the umask; this is not
        os.close(fd)
        return path
    for candidate in [path, *(path.with_name(path.name + s) for s in SQLITE_SIDE_FILES)]:
        try:
            st = candidate.stat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077 and st.st_uid == os.geteuid():
            os.chmod(candidate, 0o600)
            log.warning("database file was readable by others; made it 0600",
                        extra={"path": str(candidate), "mode": oct(st.st_mode & 0o777)})
    return path


def make_engine(url: str, busy_timeout: float = 30.0, pool_size: int = 5) -> Engine:
    if url.startswith("sqlite"):
        private_sqlite_file(url)
        engine = create_engine(
            url, connect_args={"timeout": busy_timeout, "check_same_thread": False},
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # Every commit is on disk before it returns (the WAL is synced), unless a
            # caller asks for less with ``write(durable=False)``.
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # The lock wait of this transaction: what is left of the request's deadline.
            want = deadline.wait_seconds(busy_timeout)
            info = conn.connection.info
            if abs(info.get("busy_timeout", busy_timeout) - want) > 0.05:
                conn.connection.driver_connection.execute(
                    f"PRAGMA busy_timeout={int(want * 1000)}")
                info["busy_timeout"] = want
            if conn.get_execution_options().get("sqlite_immediate", False):
                _begin_immediate(conn.connection.driver_connection, want)
            else:
                conn.exec_driver_sql("BEGIN")

        return engine
    if url.startswith(("postgresql", "postgres")):
        if url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url[len("postgres://"):]
        elif url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        # The same bound on every wait: a connection from the pool, a row or table lock.
        wait_ms = max(1, int(busy_timeout * 1000))
        pg = create_engine(url, pool_size=pool_size, pool_pre_ping=True,
                           pool_timeout=busy_timeout,
                           connect_args={"options": f"-c lock_timeout={wait_ms}",
                                         "connect_timeout": max(1, math.ceil(busy_timeout))})

        @event.listens_for(pg, "begin")
        def _pg_begin(conn: Any) -> None:
            if deadline.active():  # the lock wait: what is left of the request's deadline
                ms = max(1, int(deadline.wait_seconds(busy_timeout) * 1000))
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = {ms}")

        return pg
    raise ConfigError(f"unsupported database URL scheme in {url.split(':', 1)[0]!r}")


# Between two tries for SQLite's write lock: half a millisecond at first, then 1 and 2 ms
# once the wait is long (a lock held for a while costs the waiter little CPU).
BEGIN_RETRY_SECONDS = ((0.005, 0.0005), (0.05, 0.001), (float("inf"), 0.002))


def _begin_immediate(driver: sqlite3.Connection, wait: float) -> None:
    """``BEGIN IMMEDIATE``, trying again every half millisecond or so for up to ``wait``
    seconds (see the module docstring); then SQLite's own "database is locked", as before."""
    start = time.monotonic()
    end = start + wait
    driver.execute("PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                driver.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if (("locked" not in str(exc) and "busy" not in str(exc))
                        or time.monotonic() >= end):
                    # As SQLAlchemy raises a driver's error, for the callers' handlers.
                    raise OperationalError("BEGIN IMMEDIATE", None, exc) from exc
            waited = time.monotonic() - start
            time.sleep(next(pause for upto, pause in BEGIN_RETRY_SECONDS if waited < upto))
    finally:
        # What the transaction does once it has the lock waits as SQLite waits.
        driver.execute(f"PRAGMA busy_timeout={int(wait * 1000)}")


def _driver(conn: Connection) -> Any:
    """The sqlite3 connection under ``conn`` (autocommit: ``isolation_level = None``)."""
    return conn.connection.driver_connection


class Database:
    """An engine plus a session factory; one per process (create after fork)."""

    def __init__(self, url: str, busy_timeout: float = 30.0, pool_size: int = 5) -> None:
        self.url = url
        self.busy_timeout = busy_timeout
        self.engine = make_engine(url, busy_timeout, pool_size)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite: this process's writers, one at a time (re-entrant: a write inside a write
        # in one thread waits on SQLite's lock as it always did, not on itself).
        self._writers = threading.RLock() if self.dialect == "sqlite" else None

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        if self._writers is None:
            yield
            return
        wait = deadline.wait_seconds(self.busy_timeout)
        if not self._writers.acquire(timeout=max(wait, 0.001)):
            raise DatabaseError(f"database error: the database is locked (no turn to write "
                                f"within {wait:.1f} s)")
        try:
            yield
        finally:
            self._writers.release()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits together at the end, or not at all."""
        with self._writer_turn(), self.sessions() as session:
            try:
                with session.begin():
                    if self.dialect == "sqlite":
                        session.connection(execution_options={"sqlite_immediate": True})
                    yield session
            except OperationalError as exc:
                raise DatabaseError(f"database error: {exc.orig!r}") from exc

    @contextmanager
    def write(self, *, durable: bool = True) -> Iterator[Connection]:
        """One writing transaction on a Core connection (no ORM session): for hot paths that
        write a row or two. Same locking as ``transaction`` (``BEGIN IMMEDIATE`` on SQLite);
        commits at the end, or not at all.

        ``durable=False`` is for state whose last moments may be lost in a power or
        operating-system failure (never in a crash of this process): the commit does not
        wait for the disk (SQLite ``synchronous=NORMAL`` in WAL mode, PostgreSQL
        ``synchronous_commit = off``). It is atomic and ordered like any other, and the
        next durable commit of anyone makes it durable too. Used for redeemed ACME nonces.
        """
        try:
            with self._writer_turn(), self.engine.connect() as conn:
                sqlite = self.dialect == "sqlite"
                if sqlite:
                    conn.execution_options(sqlite_immediate=True)
                    if not durable:  # on the driver: no SQLAlchemy autobegin around it
                        _driver(conn).execute("PRAGMA synchronous=NORMAL")
                try:
                    with conn.begin():
                        if not durable and not sqlite:
                            conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                        yield conn
                finally:
                    if sqlite and not durable:  # the pooled connection goes back durable
                        _driver(conn).execute("PRAGMA synchronous=FULL")
        except OperationalError as exc:
            raise DatabaseError(f"database error: {exc.orig!r}") from exc

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A Core connection for a few reads in one snapshot (no ORM session)."""
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except OperationalError as exc:
            raise DatabaseError(f"database error: {exc.orig!r}") from exc

    def dispose(self) -> None:
        self.engine.dispose()
