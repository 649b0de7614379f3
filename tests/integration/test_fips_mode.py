"""The installation's mode: chosen at init, recorded in the database, the same on every node.

Real SoftHSM tokens and the real CLI, each command in a process of its own as an operator
runs it. Three data directories per module: a plain ``init``, an ``init --fips`` and a
``quickstart --fips`` (which also serves and signs once, in FIPS mode). A test that flips a
configuration puts it back before it ends; one that must change more works on a copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from appliance.x509 import algorithms
from tests.ceremony_helpers import clone_data_dir
from tests.conftest import run_cli
from tests.service_helpers import make_csr, serving

SWITCH_ON = "cannot be switched on in place (new keys are needed"
SWITCH_OFF = "The FIPS mode cannot be switched off"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("fipsmode")
    plain, fips = base / "plain", base / "fips"
    run_cli("init", "--dir", str(plain), check=True)
    run_cli("init", "--dir", str(fips), "--fips", check=True)
    return {"base": base, "plain": plain, "fips": fips}


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fipsquick") / "data"
    out = run_cli("quickstart", "--dir", str(d), "--fips", check=True)
    assert "(FIPS mode)" in out.stdout, out.stdout
    return d


def _rows(data: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{data / 'appliance.db'}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _recorded_mode(data: Path) -> list[tuple[object, ...]]:
    return _rows(data, "SELECT value FROM installation WHERE key = 'mode'")


def _snapshot(data: Path) -> dict[str, str]:
    """Every file of a data directory with the SHA-256 of its bytes; the database by its
    content (SQLite's side files come and go with connections, a checkpoint rewrites pages)."""
    out = {str(p.relative_to(data)): hashlib.sha256(p.read_bytes()).hexdigest()
           for p in sorted(data.rglob("*"))
           if p.is_file() and not p.name.startswith("appliance.db")}
    conn = sqlite3.connect(f"file:{data / 'appliance.db'}?mode=ro", uri=True)
    try:
        out["appliance.db"] = hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    finally:
        conn.close()
    return out


@pytest.fixture
def flipped(dirs: dict[str, Path]) -> Iterator[dict[str, Path]]:
    """Both directories with ``fips.enabled`` turned over in their files, put back after."""
    saved = {name: (dirs[name] / "appliance.yaml").read_text() for name in ("plain", "fips")}
    for name in saved:
        path = dirs[name] / "appliance.yaml"
        doc = yaml.safe_load(saved[name])
        doc["fips"] = {"enabled": name == "plain"}
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        yield dirs
    finally:
        for name, text in saved.items():
            (dirs[name] / "appliance.yaml").write_text(text)


def _serve_refused(data: Path) -> subprocess.CompletedProcess[str]:
    """``serve`` as an operator starts it; refused, it exits at once (a bounded wait, so a
    serve that did start fails the test instead of hanging it)."""
    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)
    env.pop("APPLIANCE_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "appliance", "--dir", str(data), "serve"],
                          capture_output=True, text=True, env=env, timeout=60, check=False)


def test_init_records_the_mode_in_the_file_and_the_database(dirs: dict[str, Path]) -> None:
    for name, mode, enabled in (("plain", "default", False), ("fips", "fips", True)):
        data = dirs[name]
        assert yaml.safe_load((data / "appliance.yaml").read_text())["fips"]["enabled"] is \
            enabled
        assert _recorded_mode(data) == [(mode,)]
        events = _rows(data, "SELECT event_type, details FROM audit_events")
        assert [e for e, _ in events] == ["appliance.initialized"], events
        assert json.loads(str(events[0][1]))["mode"] == mode


def test_init_fips_on_an_existing_installation_refuses_and_changes_nothing(
        dirs: dict[str, Path]) -> None:
    before = {name: _snapshot(dirs[name]) for name in ("plain", "fips")}
    for args in (("init", "--fips"), ("quickstart", "--fips")):
        out = run_cli(args[0], "--dir", str(dirs["plain"]), *args[1:])
        assert out.returncode == 1, out
        assert "error [fips_mode_irreversible]" in out.stderr
        assert SWITCH_ON in out.stderr and "Nothing was changed" in out.stderr, out.stderr
    out = run_cli("init", "--dir", str(dirs["fips"]), "--fips")
    assert out.returncode == 1 and "already holds an installation in FIPS mode" in out.stderr
    assert {name: _snapshot(dirs[name]) for name in ("plain", "fips")} == before


def test_a_node_cannot_join_a_database_in_the_other_mode(dirs: dict[str, Path]) -> None:
    """A second node's init on the installation's database: the database's mode wins, and a
    refused init leaves neither its own directory nor the database changed."""
    shared = dirs["plain"] / "appliance.db"
    before = _snapshot(dirs["plain"])
    node2 = dirs["base"] / "node2"
    out = run_cli("init", "--dir", str(node2), "--node-id", "node-2", "--fips",
                  "--database-url", f"sqlite:///{shared}")
    assert out.returncode == 1, out
    assert "error [fips_mode_irreversible]" in out.stderr
    assert "already holds an installation in the default (non-FIPS) mode" in out.stderr
    assert not node2.exists()
    assert _snapshot(dirs["plain"]) == before


def test_a_flipped_configuration_refuses_serve_and_key_use(flipped: dict[str, Path]) -> None:
    cases = (
        ("fips", "this installation was initialised in FIPS mode; the configuration",
         "says fips.enabled: false", SWITCH_OFF),
        ("plain", "this installation was initialised in the default (non-FIPS) mode; the "
         "configuration", "says fips.enabled: true", SWITCH_ON),
    )
    for name, said, flag, way_out in cases:
        data = flipped[name]
        seq_before = _rows(data, "SELECT MAX(seq) FROM audit_events")[0][0]
        serve = _serve_refused(data)
        genkey = run_cli("--dir", str(data), "hsm", "genkey", "--label", "k-mismatch",
                         "--type", "ec-p256")
        for out in (serve, genkey):
            assert out.returncode == 1, (name, out)
            assert "error [fips_mode_mismatch]" in out.stderr, out.stderr
            for words in (said, flag, way_out, str(data / "appliance.yaml")):
                assert words in out.stderr, (words, out.stderr)
        assert "serving" not in serve.stderr
        # Nothing happened but the refusal's audit record: no key made, serve changed
        # nothing (not even the schema), the mode row as it was.
        keys = run_cli("--dir", str(data), "hsm", "keys", "--json", check=True)
        assert "k-mismatch" not in keys.stdout
        after = _rows(data, "SELECT event_type, outcome, details FROM audit_events "
                            f"WHERE seq > {seq_before}")
        assert [(e, o) for e, o, _ in after] == [("key.generate.failed", "failure")], after
        assert json.loads(str(after[0][2]))["error"] == "fips_mode_mismatch"
        assert _recorded_mode(data) == [("fips" if name == "fips" else "default",)]
        # A command that only reads still runs, and says what is wrong.
        status = run_cli("--dir", str(data), "fips", "status", "--json", check=True)
        doc = json.loads(status.stdout)
        assert doc["mode"]["consistent"] is False and doc["state"] == "mode_mismatch"
        assert doc["mode"]["recorded"] == ("fips" if name == "fips" else "default")
        text = run_cli("--dir", str(data), "fips", "status", check=True).stdout
        assert "MISMATCH" in text and said in text


def test_an_installation_from_before_the_mode_counts_as_default(
        dirs: dict[str, Path], tmp_path: Path) -> None:
    old = clone_data_dir(dirs["plain"], tmp_path / "old")
    conn = sqlite3.connect(old / "appliance.db")
    with conn:
        conn.execute("DELETE FROM installation")
    conn.close()
    doc = run_cli("--dir", str(old), "fips", "status", "--json", check=True).stdout
    assert json.loads(doc)["mode"] == {"recorded": "default", "configured": "default",
                                       "consistent": True}
    cfg = old / "appliance.yaml"
    conf = yaml.safe_load(cfg.read_text())
    conf["fips"] = {"enabled": True}
    cfg.write_text(yaml.safe_dump(conf, sort_keys=False))
    out = run_cli("--dir", str(old), "hsm", "genkey", "--label", "k", "--type", "ec-p256")
    assert out.returncode == 1 and "initialised in the default (non-FIPS) mode" in out.stderr


def _json_table(table: algorithms.Table) -> object:
    return json.loads(json.dumps(table.as_json()))


def test_fips_status_shows_the_mode_token_and_table(dirs: dict[str, Path]) -> None:
    for name, table in (("fips", algorithms.FIPS), ("plain", algorithms.DEFAULT)):
        out = run_cli("--dir", str(dirs[name]), "fips", "status", "--json", check=True)
        doc = json.loads(out.stdout)
        mode = "fips" if name == "fips" else "default"
        assert doc["mode"] == {"recorded": mode, "configured": mode, "consistent": True}
        assert doc["node_id"] == "node-1"
        assert doc["token"]["label"] == "appliance" and doc["token"]["serial"]
        assert doc["selftest"] is None and doc["state"] == "not_selftested"
        assert doc["algorithms"] == _json_table(table)
    text = run_cli("--dir", str(dirs["fips"]), "fips", "status", check=True).stdout
    assert "last self-test      none yet" in text
    assert "approved algorithms (in force):" in text and "jws.acme" in text


def test_quickstart_fips_serves_and_signs_in_fips_mode(quick: Path, tmp_path: Path) -> None:
    assert _recorded_mode(quick) == [("fips",)]
    assert yaml.safe_load((quick / "appliance.yaml").read_text())["fips"]["enabled"] is True
    run_cli("--dir", str(quick), "audit", "verify", check=True)
    with serving(quick) as server:
        assert "FIPS mode: approved algorithms only" in server.log.read_text()
        csr = make_csr(tmp_path, "DNS:fips.example.com", cn="fips.example.com")
        r = requests.post(server.api + "/1.0/sign",
                          json={"csr": csr, "ott": server.token("fips.example.com")},
                          verify=str(server.roots), timeout=60)
        assert r.status_code == 201, r.text
        # A reload whose file says another mode is refused; the running workers stay.
        cfg = quick / "appliance.yaml"
        good = cfg.read_text()
        workers = server.api_workers()
        doc = yaml.safe_load(good)
        doc["fips"] = {"enabled": False}
        cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
        try:
            server.proc.send_signal(signal.SIGHUP)
            end = time.monotonic() + 10
            while "reload refused" not in server.log.read_text() and time.monotonic() < end:
                time.sleep(0.1)
            log = server.log.read_text()
            assert "reload refused" in log and "fips.enabled is now false" in log, log
            assert server.api_workers() == workers and server.proc.poll() is None
        finally:
            cfg.write_text(good)
