"""The SQLite database and its side files are readable by their owner only."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from appliance.store.db import Database


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)  # what a login shell usually has: files would be 0644
    try:
        yield
    finally:
        os.umask(old)


def test_a_new_database_and_its_wal_files_are_0600_whatever_the_umask(
        tmp_path: Path, loose_umask: None) -> None:
    path = tmp_path / "appliance.db"
    db = Database(f"sqlite:///{path}")
    try:
        with db.write() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            conn.execute(text("INSERT INTO t VALUES (1)"))
        with db.read() as conn:  # WAL mode: the -wal and -shm files now exist
            assert conn.execute(text("SELECT x FROM t")).scalar() == 1
        for name in ("appliance.db", "appliance.db-wal", "appliance.db-shm"):
            assert (tmp_path / name).exists(), name
            assert _mode(tmp_path / name) == 0o600, name
    finally:
        db.dispose()


def test_an_existing_world_readable_database_is_tightened(
        tmp_path: Path, loose_umask: None, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "old.db"
    first = Database(f"sqlite:///{path}")
    with first.write() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    first.dispose()
    os.chmod(path, 0o644)
    Database(f"sqlite:///{path}").dispose()
    assert _mode(path) == 0o600
    assert "made it 0600" in caplog.text


def test_in_memory_databases_are_left_alone(tmp_path: Path) -> None:
    db = Database("sqlite:///:memory:")
    with db.read() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    db.dispose()
    assert list(tmp_path.iterdir()) == []
