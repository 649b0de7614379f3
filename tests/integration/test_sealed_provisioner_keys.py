"""Sealed and owner-held provisioner keys, end to end: quickstart leaves no private key
in the clear, `appliance token` mints from a sealed key or the owner's own key (also off
the CA host, with no configuration), a wrong password mints nothing, and a data directory
from before sealed keys migrates (audited, plaintext gone). Tokens are presented to a real
`appliance serve` over HTTPS."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from appliance.provisioners import sealed, tokens
from tests.conftest import run_cli
from tests.service_helpers import Server, make_csr, provisioner_key, serving

PASSWORD = "an owner's long password"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("sealed") / "data"
    run_cli("quickstart", "--dir", str(d), check=True)
    with serving(d) as s:
        yield s


def _no_cli_config() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "APPLIANCE_CONFIG"}
    return env


def _signs(server: Server, token: str, name: str) -> None:
    r = server.sign(make_csr(server.data_dir.parent / "csr", f"DNS:{name}", cn=name), token)
    assert r.status_code == 201, r.text


def _events(data_dir: Path, event_type: str) -> list[dict[str, object]]:
    conn = sqlite3.connect(f"file:{data_dir / 'appliance.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT object_ids, details FROM audit_events WHERE event_type = ?"
                            " ORDER BY id", (event_type,)).fetchall()
    finally:
        conn.close()
    return [{"object_ids": json.loads(o), "details": json.loads(d)} for o, d in rows]


def _credential(data_dir: Path, name: str) -> str:
    conn = sqlite3.connect(f"file:{data_dir / 'appliance.db'}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT credential FROM provisioners WHERE name = ?",
                           (name,)).fetchone()
    finally:
        conn.close()
    value: str = row[0]
    return value


def test_quickstart_leaves_no_private_key_in_the_clear(server: Server) -> None:
    d = server.data_dir
    secrets_dir = d / "secrets"
    assert (secrets_dir / "provisioner-admin.jwe").stat().st_mode & 0o777 == 0o600
    assert (secrets_dir / "provisioner-admin.password").stat().st_mode & 0o777 == 0o600
    assert not (secrets_dir / "provisioner-admin.pem").exists()
    admin = provisioner_key(d, "admin")
    scalar = admin.private_numbers().private_value.to_bytes(32, "big")
    jwk_d = json.loads(sealed.private_jwk(admin).export_private())["d"].encode()
    found = []
    for path in d.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if scalar in data or jwk_d in data:
                found.append(path)  # the admin key, in any encoding
            # tls/api.key is serve's TLS key (software, by design): not a provisioner key.
            if path.parent.name != "tls" and (b"PRIVATE KEY" in data or b'"d":' in data):
                found.append(path)
    assert found == []
    assert '"d"' not in _credential(d, "admin")
    head = sealed.header((secrets_dir / "provisioner-admin.jwe").read_text().strip())
    assert head["alg"] == "PBES2-HS256+A128KW" and head["enc"] == "A256GCM"
    assert head["p2c"] == 600_000


def test_token_from_the_sealed_key(server: Server) -> None:
    pw = server.data_dir / "secrets" / "provisioner-admin.password"
    proc = server.cli("token", "admin", "--san", "sealed.example.com", "--password-file",
                      str(pw))
    _signs(server, proc.stdout.strip(), "sealed.example.com")


def test_wrong_or_missing_password_mints_nothing(server: Server, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not the password\n")
    proc = server.cli("token", "admin", "--san", "x.example.com", "--password-file",
                      str(wrong), check=False)
    assert proc.returncode != 0 and proc.stdout == ""
    assert "wrong password" in proc.stderr
    assert "not the password" not in proc.stderr
    proc = server.cli("token", "admin", "--san", "x.example.com", check=False)  # no tty
    assert proc.returncode != 0 and proc.stdout == ""
    assert "--password-file" in proc.stderr


def test_off_host_token_needs_no_configuration(server: Server, tmp_path: Path) -> None:
    """The sealed key and its password copied elsewhere; no --dir, no APPLIANCE_CONFIG."""
    key = tmp_path / "admin.jwe"
    shutil.copy(server.data_dir / "secrets" / "provisioner-admin.jwe", key)
    pw = tmp_path / "pw"
    shutil.copy(server.data_dir / "secrets" / "provisioner-admin.password", pw)
    proc = run_cli("token", "admin", "--san", "offhost.example.com", "--key", str(key),
                   "--password-file", str(pw), "--ca-url", server.api, "--root",
                   str(server.roots), env=_no_cli_config(), cwd=tmp_path, check=True)
    _signs(server, proc.stdout.strip(), "offhost.example.com")
    # --root checks at the CA that the key is the provisioner's: another key is refused.
    other = tmp_path / "other.pem"
    other.write_bytes(tokens.new_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    proc = run_cli("token", "admin", "--san", "x.example.com", "--key", str(other),
                   "--ca-url", server.api, "--root", str(server.roots),
                   env=_no_cli_config(), cwd=tmp_path)
    assert proc.returncode != 0 and proc.stdout == ""
    assert "is not provisioner 'admin'" in proc.stderr


def test_owner_held_key(server: Server, tmp_path: Path) -> None:
    """The appliance gets only the public key; the owner mints with the private one,
    here kept under the owner's password (encrypted PKCS#8)."""
    key = tokens.new_key()
    owner_key = tmp_path / "owner.pem"
    owner_key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASSWORD.encode())))
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    public = tmp_path / "owner.pub.pem"
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    # Handing the private key over is refused, and nothing is added.
    proc = server.cli("provisioner", "add", "owner", "--type", "jwk", "--public-key",
                      str(owner_key), check=False)
    assert proc.returncode != 0 and "give only the public key" in proc.stderr
    with server.db() as conn:
        assert conn.execute("SELECT COUNT(*) FROM provisioners WHERE name = 'owner'"
                            ).fetchone()[0] == 0
    server.cli("provisioner", "add", "owner", "--type", "jwk", "--public-key", str(public))
    assert not list((server.data_dir / "secrets").glob("provisioner-owner*"))
    assert json.loads(_credential(server.data_dir, "owner"))["kid"] == \
        tokens.public_jwk(key.public_key())["kid"]
    added = _events(server.data_dir, "provisioner.added")[-1]
    assert added["object_ids"] == {"provisioner": "owner"}
    assert added["details"]["key"] == "owner-held"  # type: ignore[index]
    proc = server.cli("token", "owner", "--san", "owned.example.com", "--key", str(owner_key),
                      "--password-file", str(pw))
    _signs(server, proc.stdout.strip(), "owned.example.com")


def _legacy(d: Path, name: str) -> None:
    """Turn NAME's sealed key back into the plaintext file of an appliance from before."""
    key = provisioner_key(d, name)
    for suffix in (".jwe", ".password"):
        (d / "secrets" / f"provisioner-{name}{suffix}").unlink()
    path = d / "secrets" / f"provisioner-{name}.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def test_plaintext_data_dir_migrates(server: Server, tmp_path: Path) -> None:
    d = server.data_dir
    for name in ("old1", "old2"):
        server.cli("provisioner", "add", name, "--type", "jwk", "--generate-password")
        _legacy(d, name)
    keys = {n: provisioner_key(d, n) for n in ("old1", "old2")}
    # A plaintext file that is not the provisioner's key is refused and left alone.
    decoy = d / "secrets" / "provisioner-old2.pem"
    original = decoy.read_bytes()
    decoy.write_bytes(tokens.new_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    proc = server.cli("provisioner", "seal", "old2", "--generate-password", check=False)
    assert proc.returncode != 0 and "is not 'old2''s key" in proc.stderr
    assert not (d / "secrets" / "provisioner-old2.jwe").exists()
    decoy.write_bytes(original)

    # First use after the upgrade: the token command seals before it signs.
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    proc = server.cli("token", "old1", "--san", "first-use.example.com", "--password-file",
                      str(pw))
    assert "sealed the plaintext key" in proc.stderr
    _signs(server, proc.stdout.strip(), "first-use.example.com")
    assert not (d / "secrets" / "provisioner-old1.pem").exists()
    assert sealed.unseal((d / "secrets" / "provisioner-old1.jwe").read_text(),
                         PASSWORD).private_numbers() == keys["old1"].private_numbers()

    # What up.sh runs on every start: every plaintext key left is sealed.
    proc = server.cli("provisioner", "seal", "--all", "--generate-password")
    assert proc.stdout.count("plaintext overwritten and removed") == 1
    assert not (d / "secrets" / "provisioner-old2.pem").exists()
    assert provisioner_key(d, "old2").private_numbers() == keys["old2"].private_numbers()
    assert "nothing to seal" in server.cli("provisioner", "seal", "--all",
                                           "--generate-password").stdout
    sealed_events = _events(d, "provisioner.key.sealed")
    assert [e["object_ids"] for e in sealed_events][-2:] == [
        {"provisioner": "old1"}, {"provisioner": "old2"}]
    last = sealed_events[-1]["details"]
    assert last["kid"] == tokens.public_jwk(keys["old2"].public_key())["kid"]  # type: ignore[index]
    assert last["plaintext_removed"] == "provisioner-old2.pem"  # type: ignore[index]
    assert PASSWORD not in json.dumps(sealed_events)
    server.cli("audit", "verify")

    server.cli("provisioner", "remove", "old2")
    assert not list((d / "secrets").glob("provisioner-old2*"))


def _at_terminal(args: list[str], answer: str) -> tuple[int, str, bytes]:
    """Run ``appliance ARGS`` with a terminal as stdin/stderr and type ANSWER at each
    password prompt; returns (exit code, stdout, everything the terminal showed)."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    proc = subprocess.Popen([sys.executable, "-m", "appliance", *args], stdin=slave,
                            stdout=subprocess.PIPE, stderr=slave, env=env,
                            start_new_session=True)
    os.close(slave)
    shown, answered = b"", 0
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    shown += os.read(master, 4096)
                except OSError:
                    break
            if shown.count(b"Password") + shown.count(b"Repeat for confirmation") > answered:
                time.sleep(0.3)  # getpass flushes pending input when it turns echo off
                os.write(master, answer.encode() + b"\n")
                answered += 1
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out.decode(), shown


def test_password_asked_at_a_terminal_is_not_echoed(server: Server) -> None:
    password = sealed.read_password_file(Path(server.password_file()))
    rc, out, shown = _at_terminal(["--dir", str(server.data_dir), "token", "admin", "--san",
                                   "typed.example.com"], password)
    assert rc == 0, shown
    assert b"Password for" in shown and password.encode() not in shown
    _signs(server, out.strip(), "typed.example.com")


def test_provisioner_add_asks_for_the_sealing_password(server: Server) -> None:
    rc, _, shown = _at_terminal(["--dir", str(server.data_dir), "provisioner", "add", "typed",
                                 "--type", "jwk"], PASSWORD)
    assert rc == 0, shown
    assert b"Repeat for confirmation" in shown and PASSWORD.encode() not in shown
    secrets_dir = server.data_dir / "secrets"
    assert not (secrets_dir / "provisioner-typed.password").exists()
    key = sealed.unseal((secrets_dir / "provisioner-typed.jwe").read_text(), PASSWORD)
    assert json.loads(_credential(server.data_dir, "typed"))["kid"] == \
        tokens.public_jwk(key.public_key())["kid"]
