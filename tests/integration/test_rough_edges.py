"""Rough edges an operator meets first (issue 11, item 7), each run as an operator would.

One quickstart data directory for the module; each ``appliance`` call is a process of its
own (about a second), so what a refusal must leave unchanged is read from the database.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import jwt
import pytest
import yaml

from tests.conftest import run_cli


@pytest.fixture(scope="module")
def qs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("edges") / "data"
    run_cli("quickstart", "--dir", str(d), check=True)
    return d


def _cli(d: Path, *args: str, check: bool = False) -> tuple[int, str, str]:
    proc = run_cli("--dir", str(d), *args, check=check)
    return proc.returncode, proc.stdout, proc.stderr


def _rows(d: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    con = sqlite3.connect(f"file:{d / 'appliance.db'}?mode=ro", uri=True)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def _state(d: Path) -> tuple[object, ...]:
    """Provisioners, templates and the number of audit records: what a refusal leaves alone."""
    return (_rows(d, "SELECT name, config FROM provisioners ORDER BY name"),
            _rows(d, "SELECT name, source FROM templates ORDER BY name"),
            _rows(d, "SELECT count(*) FROM audit_events"))


# -- duration bounds ---------------------------------------------------------------------------


def test_provisioner_add_and_update_refuse_bounds_no_request_can_meet(qs: Path) -> None:
    before = _state(qs)
    for args, message in [
        (["--min-duration", "2h", "--max-duration", "1h"],
         "min_duration 2h is longer than max_duration 1h"),
        (["--max-duration", "1h", "--default-duration", "2h"],
         "default_duration 2h is longer than max_duration 1h"),
        # the authority's min_duration (5m, appliance.yaml) is above this maximum
        (["--max-duration", "1m"], "min_duration 5m is longer than max_duration 1m"),
    ]:
        rc, _out, err = _cli(qs, "provisioner", "add", "bounds", "--type", "jwk",
                           "--generate-password", *args)
        assert rc == 2 and message in err, (args, err)
    assert _state(qs) == before
    assert not (qs / "secrets" / "provisioner-bounds.pem").exists()
    assert not (qs / "secrets" / "provisioner-bounds.jwe").exists()

    _cli(qs, "provisioner", "add", "short", "--type", "jwk", "--generate-password",
         "--max-duration", "1h", check=True)
    before = _state(qs)
    rc, _out, err = _cli(qs, "provisioner", "update", "short", "--min-duration", "2h")
    assert rc == 2 and "min_duration 2h is longer than max_duration 1h" in err, err
    assert _state(qs) == before
    _cli(qs, "provisioner", "update", "short", "--min-duration", "30m", check=True)
    shown = json.loads(_cli(qs, "provisioner", "show", "short", "--json", check=True)[1])
    assert shown["claims"]["min_duration"] == "30m"
    assert shown["claims"]["default_duration"] == "1h"  # the authority's 24h, clamped


# -- --json and empty cells --------------------------------------------------------------------


def test_json_on_template_show_and_db_current(qs: Path) -> None:
    shown = json.loads(_cli(qs, "template", "show", "tls-server", "--json", check=True)[1])
    text = _cli(qs, "template", "show", "tls-server", check=True)[1]
    assert shown["name"] == "tls-server" and shown["source"] == "built-in"
    assert shown["text"] == text and '"extended_key_usage"' in text
    current = json.loads(_cli(qs, "db", "current", "--json", check=True)[1])
    assert current["up_to_date"] is True and current["database"] == current["newest"]


def test_tables_and_show_print_a_dash_for_nothing(qs: Path) -> None:
    listed = _cli(qs, "template", "list", check=True)[1]
    assert "None" not in listed
    assert all(line.split()[-1] == "-" for line in listed.splitlines() if "built-in" in line)
    shown = _cli(qs, "provisioner", "show", "admin", check=True)[1]
    assert "None" not in shown and "{" not in shown  # no Python reprs either
    assert any(line.split() == ["template", "-"] for line in shown.splitlines())


# -- token SANs --------------------------------------------------------------------------------


def test_token_refuses_a_san_no_certificate_can_carry(qs: Path) -> None:
    for san, message in [
        ("bad name", '"bad name" is not a DNS name: whitespace or control character'),
        ("*.*.example.com", "is not a DNS name: wildcard only allowed as the whole leftmost"),
    ]:
        rc, out, err = _cli(qs, "token", "admin", "--san", "ok.example.com", "--san", san)
        assert rc == 2 and message in err, err
        assert out == ""  # no token


def test_token_carries_checked_normalised_names_and_a_common_name(qs: Path) -> None:
    out = _cli(qs, "token", "admin", "--san", "Web.Example.COM", "--san", "2001:DB8::1",
               "--san", "ops@example.com", "--san", "spiffe://example.org/web",
               "--cn", "Web Service", "--password-file",
               str(qs / "secrets" / "provisioner-admin.password"), check=True)[1]
    claims = jwt.decode(out.strip(), options={"verify_signature": False})
    assert claims["sans"] == ["web.example.com", "2001:db8::1", "ops@example.com",
                              "spiffe://example.org/web", "Web Service"]


# -- templates are tried before they are stored ------------------------------------------------

BROKEN_TEMPLATE = '{"subject": {"CN": {{ subject.common_name | tojson }}}}\n'  # misspelt
TLS_ONLY_TEMPLATE = ('{"subject": {"CN": {{ dns_names[0] | tojson }}}, "sans": {{ sans | tojson'
                     ' }}, "key_usage": ["digital_signature"], "basic_constraints": '
                     '{"ca": false}}\n')


def test_template_add_trial_renders_and_refuses_a_broken_template(qs: Path,
                                                                  tmp_path: Path) -> None:
    broken = tmp_path / "broken.j2"
    broken.write_text(BROKEN_TEMPLATE)
    before = _state(qs)
    rc, _out, err = _cli(qs, "template", "add", "broken", str(broken))
    assert rc == 1, err
    assert "template 'broken': with the sample tls server request (it renders for none" in err
    assert "has no attribute 'common_name'" in err, err
    assert _state(qs) == before
    proc = run_cli("template", "check", str(broken))  # needs no data directory
    assert proc.returncode == 1 and "common_name" in proc.stderr

    partial = tmp_path / "tls-only.j2"
    partial.write_text(TLS_ONLY_TEMPLATE)
    proc = run_cli("template", "check", "--json", str(partial), check=True)
    assert {o["sample"]: o["outcome"] for o in json.loads(proc.stdout)} == {
        "tls server": "rendered", "person": "failed", "device": "failed"}
    rc, _out, err = _cli(qs, "template", "add", "tls-only", "--strict", str(partial))
    assert rc == 1 and "sample person request" in err
    assert _state(qs) == before
    rc, out, err = _cli(qs, "template", "add", "tls-only", str(partial))
    assert rc == 0 and "template 'tls-only' stored" in out
    assert "sample person:      failed" in out and "would fail at issuance" in err
    assert _rows(qs, "SELECT count(*) FROM audit_events WHERE event_type = 'template.set'"
                 ) == [(1,)]


# -- scripts/up.sh -----------------------------------------------------------------------------


def test_up_sh_says_what_it_does_and_where_the_configuration_serves(qs: Path,
                                                                    tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(qs, data)
    cfg = data / "appliance.yaml"
    doc = yaml.safe_load(cfg.read_text())
    doc["service"].update(api_listen="127.0.0.1:9555", api_hostname="ca.example.test",
                          public_base_url="http://ca.example.test:8089")
    cfg.write_text(yaml.safe_dump(doc))
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "APPLIANCE_DATA": str(data), "APPLIANCE_NO_SERVE": "1",
           "APPLIANCE_SKIP_INSTALL": "1"}
    env.pop("SOFTHSM2_CONF", None)
    proc = subprocess.run([str(repo / "scripts" / "up.sh")], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "now serves" not in out and "not serving (APPLIANCE_NO_SERVE=1)" in out
    assert "8443" not in out
    assert "https://ca.example.test:9555/1.0/health" in out
    assert "OCSP/CRLs at http://ca.example.test:8089" in out
    assert f"--cacert {data.resolve()}/tls/roots.pem" in out


# -- progress of long runs ---------------------------------------------------------------------


def test_crl_publish_reports_its_steps_when_asked_and_always_a_summary(qs: Path) -> None:
    rc, out, err = _cli(qs, "crl", "publish", "--progress")
    assert rc == 0, err
    steps = err.splitlines()
    assert steps[0] == "[1/2] root: reading revoked certificates", err
    assert any(s.startswith("[2/2] issuing: building, linting and signing CRL #") for s in steps)
    assert any(s.startswith("[2/2] issuing: storing CRL #") for s in steps)
    assert out.splitlines()[-1].startswith("published 2 CRLs (0 entries) in ")
    rc, out, err = _cli(qs, "crl", "publish", "--authority", "issuing")  # stderr: no terminal
    assert rc == 0 and "reading revoked" not in err
    assert out.splitlines()[-1].startswith("published 1 CRL (0 entries) in ")


# -- wildcards under a deny-only authority policy ----------------------------------------------


def test_setting_a_deny_only_authority_policy_says_it_refuses_wildcards(qs: Path,
                                                                        tmp_path: Path) -> None:
    deny_only = tmp_path / "deny.yaml"
    deny_only.write_text("x509:\n  deny:\n    dns: [forbidden.example.com]\n")
    rc, out, err = _cli(qs, "policy", "set", "--authority", str(deny_only))
    try:
        assert rc == 0 and "policy set for the authority" in out, err
        assert "note: this policy has only deny rules" in err
        assert "every provisioner" in err and "allow_wildcard_names: true" in err
    finally:
        _cli(qs, "policy", "remove", "--authority", check=True)
