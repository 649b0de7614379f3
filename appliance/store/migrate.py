"""Schema migrations with Alembic, driven from code (no alembic.ini to ship or find)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from appliance.store.db import Database

MIGRATIONS = Path(__file__).parent / "migrations"


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _run(db: Database, action: Callable[[Config, str], None], revision: str) -> None:
    cfg = _config()
    with db.engine.connect() as conn:
        if conn.in_transaction():
            conn.commit()
        cfg.attributes["connection"] = conn
        action(cfg, revision)
        conn.commit()


def upgrade(db: Database, revision: str = "head") -> str:
    """Bring the schema to ``revision``; returns the revision now in place."""
    _run(db, command.upgrade, revision)
    return current(db) or ""


def downgrade(db: Database, revision: str) -> None:
    """Take the schema back to ``revision`` ("base" drops every table)."""
    _run(db, command.downgrade, revision)


def current(db: Database) -> str | None:
    with db.engine.connect() as conn:
        rev = MigrationContext.configure(conn).get_current_revision()
        conn.rollback()
        return rev


def head() -> str:
    rev = ScriptDirectory.from_config(_config()).get_current_head()
    return rev or ""


def revision(db: Database, message: str) -> None:
    """Autogenerate a new migration from the models (developer tool)."""
    cfg = _config()
    with db.engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.revision(cfg, message=message, autogenerate=True)
