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
          "acme_orders", "acme_authorizations", "acme_challenges"}


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
