"""Migration 0011 (issuance epochs) on SQLite and PostgreSQL: a populated database of 0010
upgrades; every write to a table issuance reads bumps its scope's counter, whoever writes
(plain SQL here, as an operator's console would), and nothing else does; the downgrade
takes the table and its triggers away. Also: the token spend refuses a replay among
concurrent threads on both backends, exactly one spend winning."""

from __future__ import annotations

import importlib.util
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import inspect, text

from appliance.issuance import spend as spending
from appliance.issuance.request import TokenError, TokenSpend
from appliance.store import epochs, migrate
from appliance.store.db import Database

NOW = datetime(2026, 1, 1, tzinfo=UTC)
MIGRATION = migrate.MIGRATIONS / "versions" / "0011_issuance_epochs.py"


def _migration() -> Any:
    spec = importlib.util.spec_from_file_location("m0011", MIGRATION)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _epochs(db: Database) -> dict[str, int]:
    with db.read() as conn:
        return dict(epochs.read(conn))


def _sql(db: Database, statement: str, **params: Any) -> None:
    with db.transaction() as s:
        s.execute(text(statement), {"t": NOW, **params})


def _populate(db: Database) -> None:
    """One row in each table issuance reads, and a certificate (as of revision 0010)."""
    _sql(db, "INSERT INTO hsm_keys (id, label, ck_id, key_type, spki_sha256, spki_der, "
         "token_label, token_serial, created_at) VALUES (1, 'k', '01', 'ec-p256', :h, :d, "
         "'t', 's', :t)", h="0" * 64, d=b"x")
    _sql(db, "INSERT INTO authorities (id, name, kind, key_id, subject, certificate_der, "
         "fingerprint_sha256, not_before, not_after, status, serial_hex, created_at) VALUES "
         "(1, 'issuing', 'intermediate', 1, 'CN=x', :d, :h, :t, :t, 'active', '1', :t)",
         d=b"x", h="0" * 64)
    _sql(db, "INSERT INTO provisioners (id, name, type, config, credential, authority_id, "
         "created_at, updated_at) VALUES (1, 'admin', 'jwk', '{}', '{}', 1, :t, :t)")
    _sql(db, "INSERT INTO certificates (serial_hex, authority_id, provisioner_name, "
         "requester, template, status, subject, sans, request_context, reserved_at) "
         "VALUES ('ab', 1, 'admin', 'r', 'tls-server', 'issued', '', '[]', '{}', :t)")


# (scope, statement) for every watched table: insert, update and delete each bump.
WRITES = [
    ("template", "INSERT INTO templates (id, name, source, updated_at) VALUES (1, 'x', 's', :t)"),
    ("template", "UPDATE templates SET source = 'changed' WHERE id = 1"),
    ("template", "DELETE FROM templates WHERE id = 1"),
    ("policy", "INSERT INTO name_policies (id, level, provisioner_id, source, updated_at) "
               "VALUES (1, 'provisioner', 1, 'x509: {}', :t)"),
    ("policy", "UPDATE name_policies SET source = 'x509: {allow: {}}' WHERE id = 1"),
    ("inventory", "INSERT INTO inventory_records (id, name, kind, owner, metadata_json, "
                  "updated_at) VALUES (1, 'r', 'host', 'o', '{}', :t)"),
    ("inventory", "INSERT INTO inventory_identifiers (id, record_id, type, value) "
                  "VALUES (1, 1, 'dns', 'a.example.com')"),
    ("inventory", "UPDATE inventory_identifiers SET value = 'b.example.com' WHERE id = 1"),
    ("inventory", "DELETE FROM inventory_identifiers WHERE id = 1"),
    ("inventory", "UPDATE inventory_records SET owner = 'p' WHERE id = 1"),
    ("authority", "UPDATE authorities SET status = 'revoked' WHERE id = 1"),
    ("authority", "UPDATE hsm_keys SET token_label = 'u' WHERE id = 1"),
    ("provisioner", "UPDATE provisioners SET config = '{\"disabled\": true}' WHERE id = 1"),
    ("policy", "DELETE FROM name_policies WHERE id = 1"),
]
# Written on every request: no trigger, no bump.
UNWATCHED = [
    "INSERT INTO certificates (serial_hex, authority_id, provisioner_name, requester, "
    "template, status, subject, sans, request_context, reserved_at) "
    "VALUES ('cd', 1, 'admin', 'r', 'tls-server', 'reserved', '', '[]', '{}', :t)",
    "UPDATE certificates SET status = 'issued' WHERE serial_hex = 'cd'",
    "INSERT INTO used_tokens (jti, provisioner_id, expires_at, used_at) "
    "VALUES ('admin:j', 1, :t, :t)",
    "INSERT INTO audit_heads (node_id, seq, hash) VALUES ('n', 0, 'x')",
    "UPDATE audit_heads SET seq = 1 WHERE node_id = 'n'",
]


def test_0011_counts_every_write_to_issuance_state_and_downgrades(db_url: str) -> None:
    db = Database(db_url)
    try:
        migrate.upgrade(db, "0010")
        _populate(db)
        assert migrate.upgrade(db) == migrate.head()
        assert set(_epochs(db)) == set(epochs.SCOPES)
        for scope, statement in WRITES:
            before = _epochs(db)
            _sql(db, statement)
            after = _epochs(db)
            assert after[scope] > before[scope], statement
            assert {k: v for k, v in after.items() if k != scope} == {
                k: v for k, v in before.items() if k != scope}, statement
        before = _epochs(db)
        for statement in UNWATCHED:
            _sql(db, statement)
        assert _epochs(db) == before
        migrate.downgrade(db, "0010")
        assert "issuance_epochs" not in inspect(db.engine).get_table_names()
        _sql(db, "UPDATE templates SET source = 'x'")  # no trigger left behind to fail
        _sql(db, "UPDATE authorities SET status = 'active'")
        with db.read() as conn:  # the data survives the round trip
            assert conn.execute(text("SELECT status FROM certificates WHERE serial_hex = 'ab'")
                                ).scalar() == "issued"
        assert migrate.upgrade(db) == migrate.head()
        assert set(_epochs(db)) == set(epochs.SCOPES)
    finally:
        db.dispose()


def test_every_watched_table_has_its_triggers_at_head(db: Database) -> None:
    """The migration's list is the module's, and every table carries its triggers (a later
    migration that rebuilds one on SQLite must create them again)."""
    mig = _migration()
    assert {s: tuple(t for t, sc in mig.WATCHED.items() if sc == s)
            for s in mig.SCOPES} == dict(epochs.WATCHED)
    with db.read() as conn:
        if db.dialect == "sqlite":
            rows = conn.execute(text(
                "SELECT tbl_name, name FROM sqlite_master WHERE type = 'trigger'")).all()
            want = {(t, f"epoch_{t}_{e}") for t in mig.WATCHED for e in ("insert", "update",
                                                                          "delete")}
        else:
            rows = conn.execute(text(
                "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c "
                "ON c.oid = t.tgrelid WHERE NOT t.tgisinternal")).all()
            want = {(t, f"epoch_{t}") for t in mig.WATCHED}
    assert {(r[0], r[1]) for r in rows if r[1].startswith("epoch_")} == want


def test_a_token_spent_by_racing_threads_is_spent_once(db: Database) -> None:
    _sql(db, "INSERT INTO authorities (id, name, kind, subject, certificate_der, "
         "fingerprint_sha256, not_before, not_after, status, serial_hex, created_at) VALUES "
         "(1, 'issuing', 'intermediate', 'CN=x', :d, :h, :t, :t, 'active', '1', :t)",
         d=b"x", h="0" * 64)
    _sql(db, "INSERT INTO provisioners (id, name, type, config, credential, authority_id, "
         "created_at, updated_at) VALUES (1, 'admin', 'jwk', '{}', '{}', 1, :t, :t)")
    token = TokenSpend("admin:race", 1, datetime.now(UTC) + timedelta(minutes=5))
    outcomes: list[str] = []
    start = threading.Barrier(6)

    def attempt() -> None:
        start.wait()
        try:
            with spending.replay_refused(), db.write() as conn:
                spending.spend(conn, token)
                conn.execute(text(  # what the reservation writes with it
                    "INSERT INTO certificates (serial_hex, authority_id, provisioner_name, "
                    "requester, template, status, subject, sans, request_context, "
                    "reserved_at) VALUES (:s, 1, 'admin', 'r', 't', 'reserved', '', '[]', "
                    "'{}', :t)"), {"s": f"{threading.get_ident():x}", "t": NOW})
            outcomes.append("spent")
        except TokenError as exc:
            assert str(exc) == spending.REPLAYED
            outcomes.append("replay")

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["replay"] * 5 + ["spent"]
    with db.read() as conn:  # the replays reserved nothing
        assert conn.execute(text("SELECT COUNT(*) FROM certificates")).scalar() == 1
        assert conn.execute(text("SELECT COUNT(*) FROM used_tokens")).scalar() == 1


def test_a_scope_without_its_row_caches_nothing(db: Database) -> None:
    """An operator who deletes a counter row loses the caching of that scope, not its
    correctness: with no counter to compare, every request reads afresh."""
    scope = "template"
    _sql(db, "DELETE FROM issuance_epochs WHERE scope = :s", s=scope)
    cache: epochs.EpochCache[str, int] = epochs.EpochCache(scope, 8)
    loads: list[int] = []

    def load() -> int:
        loads.append(1)
        return len(loads)

    current = _epochs(db)
    assert scope not in current
    assert [cache.get(current, "k", load) for _ in range(3)] == [1, 2, 3]
