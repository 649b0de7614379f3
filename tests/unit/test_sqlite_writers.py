"""SQLite writers queue in their process and poll for the database lock (store/db.py).

Real SQLite files, real threads and a second process; what must hold whatever the timing:
every write of concurrent writers lands exactly once, a lock held elsewhere past the wait
ends in the same DatabaseError as before, and a write inside a write of one thread does
not wait on itself.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from appliance.errors import DatabaseError
from appliance.store.db import Database


def _db(path: Path, busy: float = 5.0) -> Database:
    db = Database(f"sqlite:///{path}", busy_timeout=busy)
    with db.write() as c:
        c.execute(text("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, who TEXT)"))
    return db


WRITER = """
import sys
from sqlalchemy import text
from appliance.store.db import Database
db = Database("sqlite:///" + sys.argv[1], busy_timeout=30)
for i in range(int(sys.argv[2])):
    with db.write() as c:
        c.execute(text("INSERT INTO t (who) VALUES ('process')"))
"""


def test_threads_and_another_process_all_land(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    db = _db(path)
    other = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "200"])
    errors: list[BaseException] = []

    def writes(n: int, orm: bool) -> None:
        try:
            for _ in range(n):
                if orm:
                    with db.transaction() as s:
                        s.execute(text("INSERT INTO t (who) VALUES ('orm')"))
                else:
                    with db.write() as c:
                        c.execute(text("INSERT INTO t (who) VALUES ('core')"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writes, args=(50, i % 2 == 0)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert other.wait(timeout=120) == 0
    assert not errors, errors
    with db.read() as c:
        counts = dict(c.execute(text("SELECT who, COUNT(*) FROM t GROUP BY who")).all())
    assert counts == {"orm": 200, "core": 200, "process": 200}


@pytest.mark.parametrize("orm", [False, True])
def test_a_lock_held_elsewhere_past_the_wait_is_a_database_error(tmp_path: Path,
                                                                 orm: bool) -> None:
    path = tmp_path / "l.db"
    db = _db(path, busy=1.0)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        start = time.monotonic()
        with pytest.raises(DatabaseError, match="database is locked"):
            if orm:
                with db.transaction() as s:
                    s.execute(text("INSERT INTO t (who) VALUES ('x')"))
            else:
                with db.write() as c:
                    c.execute(text("INSERT INTO t (who) VALUES ('x')"))
        assert time.monotonic() - start >= 0.9  # it did wait, for its whole turn
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with db.write() as c:  # the lock gone: writing works at once, nothing was written
        c.execute(text("INSERT INTO t (who) VALUES ('after')"))
    with db.read() as c:
        assert c.execute(text("SELECT who FROM t")).scalars().all() == ["after"]


def test_a_write_inside_a_write_does_not_wait_on_its_own_turn(tmp_path: Path) -> None:
    """The inner transaction waits on SQLite's lock (the outer one holds it) and ends in a
    DatabaseError by its wait, as before the queue; the outer one commits."""
    db = _db(tmp_path / "n.db", busy=0.5)
    with db.write() as outer:
        outer.execute(text("INSERT INTO t (who) VALUES ('outer')"))
        with pytest.raises(DatabaseError), db.write() as inner:
            inner.execute(text("INSERT INTO t (who) VALUES ('inner')"))
    with db.read() as c:
        assert c.execute(text("SELECT who FROM t")).scalars().all() == ["outer"]
