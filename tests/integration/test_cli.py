"""The operator's path from the issue, run as separate ``appliance`` processes."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance import config
from appliance.store import migrate
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli") / "data"
    run_cli("init", "--dir", str(d), check=True)
    run_cli("hsm", "genkey", "--dir", str(d), "--label", "audit-key", "--type", "ec-p256",
            check=True)
    return d


def _pins(d: Path) -> list[str]:
    return [(d / "secrets" / n).read_text().strip() for n in ("so.pin", "user.pin")]


def test_init_lays_out_the_data_directory_with_private_secrets(data_dir: Path) -> None:
    for name in ("appliance.yaml", "hsm.yaml", "appliance.db", "softhsm/softhsm2.conf"):
        assert (data_dir / name).exists(), name
    assert stat.S_IMODE((data_dir / "secrets").stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "softhsm" / "tokens").stat().st_mode) == 0o700
    for db_file in data_dir.glob("appliance.db*"):  # and -wal/-shm while they exist
        assert stat.S_IMODE(db_file.stat().st_mode) == 0o600, db_file
    for pin in ("so.pin", "user.pin"):
        assert stat.S_IMODE((data_dir / "secrets" / pin).stat().st_mode) == 0o600
    so_pin, user_pin = _pins(data_dir)
    assert len(user_pin) >= 20 and so_pin != user_pin
    for name in ("appliance.yaml", "hsm.yaml"):
        text = (data_dir / name).read_text()
        assert user_pin not in text and so_pin not in text


def test_init_writes_every_setting_and_config_show_prints_it(data_dir: Path) -> None:
    text = (data_dir / "appliance.yaml").read_text()
    for block in ("database", "hsm", "audit", "logging", "claims", "service", "revocation",
                  "ocsp", "acme"):
        assert f"\n{block}:\n" in text, block
    assert "  api_listen: 127.0.0.1:8443" in text and "  http_listen: 127.0.0.1:8080" in text
    loaded = config.load(data_dir / "appliance.yaml").config
    assert loaded == config.ApplianceConfig(node_id="node-1")  # init's values are the defaults
    shown = json.loads(run_cli("--dir", str(data_dir), "config", "show", "--json",
                               check=True).stdout)
    assert shown["path"] == str(data_dir / "appliance.yaml")
    assert shown["config"]["service"] == loaded.service.model_dump(mode="json")
    assert shown["config"]["database"]["url"] == f"sqlite:///{data_dir.resolve()}/appliance.db"


def test_init_refuses_to_clobber(data_dir: Path) -> None:
    before = (data_dir / "appliance.yaml").read_bytes()
    proc = run_cli("init", "--dir", str(data_dir))
    assert proc.returncode == 1
    assert "refusing to clobber" in proc.stderr
    assert (data_dir / "appliance.yaml").read_bytes() == before


def test_keys_listing_shows_protection_attributes(data_dir: Path) -> None:
    proc = run_cli("--dir", str(data_dir), "hsm", "keys", "--json", check=True)
    rows = json.loads(proc.stdout)
    (audit_key,) = [r for r in rows if r["label"] == "audit-key"]
    assert audit_key["key_type"] == "ec" and audit_key["curve"] == "p256"
    assert len(bytes.fromhex(audit_key["id"])) == 16
    assert audit_key["sensitive"] is True and audit_key["extractable"] is False
    assert audit_key["always_sensitive"] is True and audit_key["never_extractable"] is True
    text = run_cli("--dir", str(data_dir), "hsm", "keys", check=True).stdout
    assert "audit-key" in text and "NEVER_EXTRACTABLE" in text


def test_genkey_refuses_an_existing_label_and_audits_the_refusal(data_dir: Path) -> None:
    proc = run_cli("--dir", str(data_dir), "hsm", "genkey", "--label", "audit-key",
                   "--type", "rsa-2048")
    assert proc.returncode == 1 and "already exists" in proc.stderr
    events = _export(data_dir)
    assert events[-1]["event_type"] == "key.generate.failed"
    assert events[-1]["outcome"] == "failure"


def test_selftest_passes(data_dir: Path) -> None:
    proc = run_cli("--dir", str(data_dir), "hsm", "selftest", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    names = {c["name"] for c in report["checks"]}
    assert {"kat-sha256", "kat-ecdsa-p256-sha256", "token-sign-verify"} <= names


def _export(d: Path, *extra: str) -> list[dict[str, object]]:
    proc = run_cli("--dir", str(d), "audit", "export", "--format", "jsonl", *extra, check=True)
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_checkpoint_verify_export(data_dir: Path) -> None:
    cp = run_cli("--dir", str(data_dir), "audit", "checkpoint", check=True)
    assert "signed by 'audit-key'" in cp.stdout
    ok = run_cli("--dir", str(data_dir), "audit", "verify", "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads(ok.stdout)
    assert report["ok"] and report["checkpoints"] >= 1
    events = _export(data_dir)
    types = [e["event_type"] for e in events]
    assert types[:2] == ["appliance.initialized", "key.generated"]
    assert "audit.checkpoint" in types
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    generated = events[1]
    assert generated["details"]["never_extractable"] is True  # type: ignore[index]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert _export(data_dir, "--since", future) == []
    bad = run_cli("--dir", str(data_dir), "audit", "export", "--since", "yesterday")
    assert bad.returncode != 0 and "ISO 8601" in bad.stderr


def test_verify_names_a_tampered_record_and_exits_1(tmp_path: Path, data_dir: Path) -> None:
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(data_dir, copy)
    db = sqlite3.connect(copy / "appliance.db")
    db.execute("DROP TRIGGER audit_events_no_update")
    db.execute("UPDATE audit_events SET actor = 'someone-else' WHERE seq = 2")
    db.commit()
    db.close()
    proc = run_cli("--dir", str(copy), "audit", "verify")
    assert proc.returncode == 1
    assert "record 2" in proc.stdout and "edited" in proc.stdout


def test_config_found_by_environment_variable(data_dir: Path) -> None:
    proc = run_cli("hsm", "keys", "--json",
                   env={"APPLIANCE_CONFIG": str(data_dir / "appliance.yaml")}, check=True)
    assert any(r["label"] == "audit-key" for r in json.loads(proc.stdout))
    proc = run_cli("--config", str(data_dir / "appliance.yaml"), "db", "current", check=True)
    assert f"database: {migrate.head()}  newest: {migrate.head()}" in proc.stdout
    missing = run_cli("hsm", "keys", env={"APPLIANCE_CONFIG": ""})
    assert missing.returncode == 1 and "no configuration" in missing.stderr


def test_wrong_pin_is_clear_logged_without_the_pin_and_audited(
    tmp_path: Path, data_dir: Path
) -> None:
    import shutil

    copy = tmp_path / "wrongpin"
    shutil.copytree(data_dir, copy)
    wrong = "definitely-not-the-pin-123"
    pin_file = copy / "secrets" / "user.pin"
    pin_file.write_text(wrong + "\n")
    os.chmod(pin_file, 0o600)
    proc = run_cli("--dir", str(copy), "--log-level", "DEBUG", "hsm", "genkey",
                   "--label", "k1", "--type", "ec-p256")
    assert proc.returncode == 1
    assert "refused the PIN" in proc.stderr
    real_so, real_user = _pins(data_dir)
    for secret in (wrong, real_so, real_user):
        assert secret not in proc.stderr and secret not in proc.stdout
    events = _export(copy)
    assert events[-1]["event_type"] == "hsm.login_failed"
    assert events[-1]["outcome"] == "failure"
    assert wrong not in json.dumps(events)


def test_world_readable_pin_file_is_refused(tmp_path: Path, data_dir: Path) -> None:
    import shutil

    copy = tmp_path / "loose"
    shutil.copytree(data_dir, copy)
    os.chmod(copy / "secrets" / "user.pin", 0o644)
    proc = run_cli("--dir", str(copy), "hsm", "keys")
    assert proc.returncode == 1
    assert "chmod 600" in proc.stderr


def test_unknown_configuration_key_is_refused(tmp_path: Path, data_dir: Path) -> None:
    import shutil

    copy = tmp_path / "typo"
    shutil.copytree(data_dir, copy)
    cfg = copy / "appliance.yaml"
    cfg.write_text(cfg.read_text() + "audti:\n  key_label: x\n")
    proc = run_cli("--dir", str(copy), "db", "current")
    assert proc.returncode == 1
    assert "audti" in proc.stderr and "Extra inputs are not permitted" in proc.stderr


def test_schema_upgrade_is_audited_when_it_changes_something(tmp_path: Path,
                                                             data_dir: Path) -> None:
    import shutil

    from appliance.store.db import Database

    copy = tmp_path / "older"
    shutil.copytree(data_dir, copy)
    run_cli("--dir", str(copy), "db", "upgrade", check=True)  # already current: no event
    assert not [e for e in _export(copy) if e["event_type"] == "schema.upgraded"]
    db = Database(f"sqlite:///{copy / 'appliance.db'}")
    previous = str(int(migrate.head()) - 1).zfill(4)
    migrate.downgrade(db, previous)
    db.dispose()
    run_cli("--dir", str(copy), "db", "upgrade", check=True)
    events = [e for e in _export(copy) if e["event_type"] == "schema.upgraded"]
    assert len(events) == 1
    assert events[0]["details"] == {"from": previous, "to": migrate.head()}
    assert run_cli("--dir", str(copy), "audit", "verify").returncode == 0
