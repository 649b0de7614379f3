"""``cluster add-node``'s choices that need no database: listeners and the database URL."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import Settings, load
from appliance.ops import add_node


@pytest.mark.parametrize(("given", "source", "want"), [
    (None, "0.0.0.0:8443", "0.0.0.0:8443"),  # one node per machine, same port: inherited
    ("0.0.0.0:8443", "0.0.0.0:8443", "0.0.0.0:8443"),
    ("[::]:8443", "[::]:8443", "[::]:8443"),
    ("127.0.0.1:9443", "127.0.0.1:8443", "127.0.0.1:9443"),
    ("10.0.0.6:8443", "10.0.0.5:8443", "10.0.0.6:8443"),
])
def test_listener_chosen(given: str | None, source: str, want: str) -> None:
    assert add_node._listener("--api-listen", given, source) == want


@pytest.mark.parametrize(("given", "source", "message"), [
    (None, "127.0.0.1:8443", "give the new node its own --api-listen"),
    (None, "10.0.0.5:8443", "give the new node its own --api-listen"),
    ("127.0.0.1:8443", "127.0.0.1:8443", "node A's listener"),
    ("10.0.0.5:8443", "10.0.0.5:8443", "node A's listener"),
])
def test_listener_refused(given: str | None, source: str, message: str) -> None:
    with pytest.raises(add_node.NodeError, match=message):
        add_node._listener("--api-listen", given, source)


def _settings(tmp_path: Path, url: str) -> Settings:
    (tmp_path / "appliance.yaml").write_text(f"database:\n  url: {url}\n")
    return load(tmp_path / "appliance.yaml")


@pytest.mark.parametrize("url", ["sqlite:///appliance.db", "sqlite:////srv/ca/appliance.db"])
def test_sqlite_is_refused(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPLIANCE_DATABASE_URL", raising=False)
    with pytest.raises(add_node.NodeError, match=r"SQLite.*PostgreSQL"):
        add_node._shared_database_url(_settings(tmp_path, url))


def test_the_url_is_shown_without_its_password(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPLIANCE_DATABASE_URL", raising=False)
    shown = add_node._shared_database_url(_settings(
        tmp_path, "postgresql+psycopg://ca:s3cret@db.example.com/ca"))
    assert "s3cret" not in shown and "db.example.com/ca" in shown


def test_an_environment_override_is_refused(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """B is made from A's file: a URL only the environment names would not be B's."""
    monkeypatch.setenv("APPLIANCE_DATABASE_URL", "postgresql+psycopg://ca@other/ca")
    with pytest.raises(add_node.NodeError, match="APPLIANCE_DATABASE_URL"):
        add_node._shared_database_url(_settings(
            tmp_path, "postgresql+psycopg://ca@db/ca"))
    monkeypatch.setenv("APPLIANCE_DATABASE_URL", "postgresql+psycopg://ca@db/ca")
    assert add_node._shared_database_url(_settings(
        tmp_path, "postgresql+psycopg://ca@db/ca")) == "postgresql+psycopg://ca@db/ca"
