"""Migration 0009 (registration authorities) on SQLite and PostgreSQL: a database of 0008
with certificates in it upgrades (their ``ra_path`` NULL: asked for directly), the RA
contact row goes with its provisioner, and the downgrade takes both away again."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import inspect, text

from appliance.store import migrate
from appliance.store.db import Database

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _columns(db: Database, table: str) -> set[str]:
    return {c["name"] for c in inspect(db.engine).get_columns(table)}


def test_0009_upgrades_a_populated_database_and_downgrades(db_url: str) -> None:
    db = Database(db_url)
    try:
        migrate.upgrade(db, "0008")
        assert "ra_path" not in _columns(db, "certificates")
        with db.transaction() as s:
            s.execute(text(
                "INSERT INTO authorities (id, name, kind, subject, certificate_der, "
                "fingerprint_sha256, not_before, not_after, status, serial_hex, created_at) "
                "VALUES (1, 'issuing', 'intermediate', 'CN=x', :der, :fp, :t, :t, 'active', "
                "'1', :t)"), {"der": b"x", "fp": "0" * 64, "t": NOW})
            s.execute(text(
                "INSERT INTO provisioners (id, name, type, config, credential, authority_id, "
                "created_at, updated_at) VALUES (1, 'edge-1', 'ra', '{}', '{}', 1, :t, :t)"),
                {"t": NOW})
            s.execute(text(
                "INSERT INTO certificates (serial_hex, authority_id, provisioner_name, "
                "requester, template, status, subject, sans, request_context, reserved_at) "
                "VALUES ('ab', 1, 'admin', 'r', 'tls-server', 'issued', '', '[]', '{}', :t)"),
                {"t": NOW})
        assert migrate.upgrade(db) == migrate.head()
        assert "ra_path" in _columns(db, "certificates")
        assert _columns(db, "ra_contacts") == {"provisioner_id", "last_contact_at", "last_op"}
        with db.transaction() as s:
            assert s.execute(text("SELECT ra_path FROM certificates")).scalar() is None
            s.execute(text("UPDATE certificates SET ra_path = :p"), {"p": '["edge-1"]'})
            s.execute(text("INSERT INTO ra_contacts VALUES (1, :t, 'sign')"), {"t": NOW})
        with db.transaction() as s:  # the contact goes with its RA
            s.execute(text("DELETE FROM provisioners WHERE id = 1"))
        with db.transaction() as s:
            assert s.execute(text("SELECT COUNT(*) FROM ra_contacts")).scalar() == 0
            assert s.execute(text("SELECT ra_path FROM certificates")).scalar() == '["edge-1"]'
        migrate.downgrade(db, "0008")
        assert "ra_contacts" not in inspect(db.engine).get_table_names()
        assert "ra_path" not in _columns(db, "certificates")
        with db.transaction() as s:  # the certificate itself survives the downgrade
            assert s.execute(text("SELECT serial_hex FROM certificates")).scalar() == "ab"
    finally:
        db.dispose()
