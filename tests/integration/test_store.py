"""Schema migrations and store behaviour on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from appliance.errors import ConfigError
from appliance.store import migrate
from appliance.store.db import Database

TABLES = {"hsm_keys", "authorities", "audit_events", "audit_heads", "audit_checkpoints", "crls",
          "provisioners", "certificates", "used_tokens", "templates", "inventory_records",
          "ocsp_responses", "acme_secrets", "acme_used_nonces", "acme_eab_keys", "acme_accounts",
          "acme_orders", "acme_authorizations", "acme_challenges", "issuance_epochs"}


def test_upgrade_creates_the_schema_and_is_idempotent(db_url: str) -> None:
    db = Database(db_url)
    try:
        assert migrate.current(db) is None
        assert migrate.upgrade(db) == migrate.head()
        assert migrate.head().isdigit() and int(migrate.head()) >= 5
        assert set(inspect(db.engine).get_table_names()) >= TABLES
        assert migrate.upgrade(db) == migrate.head()  # second run changes nothing
    finally:
        db.dispose()


def test_downgrade_and_upgrade_again(db_url: str) -> None:
    db = Database(db_url)
    try:
        migrate.upgrade(db)
        migrate.downgrade(db, "base")
        assert not (TABLES & set(inspect(db.engine).get_table_names()))
        migrate.upgrade(db)
        assert set(inspect(db.engine).get_table_names()) >= TABLES
    finally:
        db.dispose()


def test_transaction_rolls_back_as_a_whole(db: Database) -> None:
    with pytest.raises(RuntimeError), db.transaction() as s:
        s.execute(text("INSERT INTO audit_heads (node_id, seq, hash) VALUES ('n', 0, 'x')"))
        raise RuntimeError("boom")
    with db.transaction() as s:
        assert s.execute(text("SELECT count(*) FROM audit_heads")).scalar() == 0


def test_sqlite_runs_in_wal_mode(tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = Database(f"sqlite:///{tmp_path / 'w.db'}")
    try:
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        db.dispose()


def test_unknown_database_scheme_is_refused() -> None:
    with pytest.raises(ConfigError, match="unsupported database"):
        Database("mysql://localhost/x")


def _sync_setting(conn: object, sqlite: bool) -> str:
    query = "PRAGMA synchronous" if sqlite else "SHOW synchronous_commit"
    return str(conn.exec_driver_sql(query).scalar())  # type: ignore[attr-defined]


def test_non_durable_write_is_limited_to_its_own_transaction(db: Database) -> None:
    """``write(durable=False)`` (redeemed ACME nonces) commits without waiting for the disk;
    every other transaction, on the same pooled connection too, stays fully durable."""
    sqlite = db.dialect == "sqlite"
    durable, relaxed = ("2", "1") if sqlite else ("on", "off")  # FULL / NORMAL
    with db.write() as conn:
        assert _sync_setting(conn, sqlite) == durable
    with db.write(durable=False) as conn:
        assert _sync_setting(conn, sqlite) == relaxed
        conn.exec_driver_sql("INSERT INTO acme_secrets (name, value) VALUES ('t1', x'00')"
                             if sqlite else
                             "INSERT INTO acme_secrets (name, value) VALUES ('t1', '\\x00')")
    with pytest.raises(RuntimeError), db.write(durable=False) as conn:
        conn.exec_driver_sql("DELETE FROM acme_secrets")
        raise RuntimeError("rolled back")
    for _ in range(3):  # whichever pooled connection comes next
        with db.write() as conn:
            assert _sync_setting(conn, sqlite) == durable
        with db.read() as conn:
            assert _sync_setting(conn, sqlite) == durable
            assert conn.exec_driver_sql("SELECT name FROM acme_secrets").scalars().all() == [
                "t1"]
