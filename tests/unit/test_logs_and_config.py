"""Operational logs never carry secrets; configuration is strict and found where documented."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from appliance import config, logs
from appliance.errors import ConfigError


def _capture() -> tuple[logging.Logger, io.StringIO]:
    buf = io.StringIO()
    logs.configure("DEBUG", buf)
    return logs.get("test"), buf


def test_log_lines_are_json_with_extra_fields() -> None:
    log, buf = _capture()
    log.info("key generated", extra={"label": "root-1", "count": 3})
    record = json.loads(buf.getvalue())
    assert record["message"] == "key generated"
    assert record["label"] == "root-1" and record["count"] == 3
    assert record["level"] == "info" and record["time"].endswith("+00:00")


def test_secret_fields_and_pin_assignments_are_redacted() -> None:
    log, buf = _capture()
    log.warning("login with pin=hunter22 failed", extra={"user_pin": "hunter22",
                                                           "so_password": "s3cret"})
    try:
        raise ValueError("PIN: hunter22 rejected")
    except ValueError:
        log.exception("oops")
    out = buf.getvalue()
    assert "hunter22" not in out and "s3cret" not in out
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["user_pin"] == "[REDACTED]"
    assert "[REDACTED]" in lines[0]["message"] and "[REDACTED]" in lines[1]["error"]


def test_config_is_located_by_flag_env_or_dir(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPLIANCE_CONFIG", raising=False)
    explicit = tmp_path / "x.yaml"
    assert config.locate(explicit, tmp_path) == explicit
    assert config.locate(None, tmp_path) == tmp_path / "appliance.yaml"
    monkeypatch.setenv("APPLIANCE_CONFIG", "/etc/appliance/appliance.yaml")
    assert config.locate(None, tmp_path) == Path("/etc/appliance/appliance.yaml")
    monkeypatch.delenv("APPLIANCE_CONFIG")
    with pytest.raises(ConfigError, match="no configuration"):
        config.locate(None, None)


@pytest.mark.parametrize("body, message", [
    ("node_id: a\nnode_idd: b\n", "Extra inputs"),
    ("node_id: 'bad id with spaces'\n", "node_id"),
    ("database: {url: 'sqlite:///x.db', pool_size: 0}\n", "pool_size"),
    ("a: 1\n---\nb: 2\n", "exactly one YAML mapping"),
    ("[1, 2]\n", "exactly one YAML mapping"),
    ("key: [unclosed\n", "not valid YAML"),
    # A base URL no certificate could carry: refused when read, not at the first issuance.
    ("service: {public_base_url: 'http://127.0.0.1:118080'}\n", "port from 1 to 65535"),
    ("service: {public_base_url: 'http://localhost:8080'}\n", "dotted host name"),
    ("service: {public_base_url: 'ftp://ca.example.com'}\n", "public_base_url"),
])
def test_bad_configuration_is_refused_with_a_clear_message(
    tmp_path: Path, body: str, message: str
) -> None:
    path = tmp_path / "appliance.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        config.load(path)


def test_relative_sqlite_url_resolves_against_the_config_folder(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.delenv("APPLIANCE_DATABASE_URL", raising=False)
    path = tmp_path / "appliance.yaml"
    path.write_text("database: {url: 'sqlite:///state/app.db'}\n")
    settings = config.load(path)
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'state/app.db'}"
    monkeypatch.setenv("APPLIANCE_DATABASE_URL", "postgresql://u@h/db")
    assert settings.database_url == "postgresql://u@h/db"


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "https://pki.example.com/base",
                                 "http://[::1]:65535", "http://ca.example.com"])
def test_public_base_urls_a_certificate_can_carry_load(tmp_path: Path, url: str) -> None:
    path = tmp_path / "appliance.yaml"
    path.write_text(f"service: {{public_base_url: '{url}'}}\n")
    assert config.load(path).config.service.public_base_url == url
