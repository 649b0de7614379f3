"""Rough edges an operator meets first (issue 11, item 7), each run as an operator would."""

from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest

from tests.conftest import run_cli


@pytest.fixture(scope="module")
def qs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("edges") / "data"
    run_cli("quickstart", "--dir", str(d), check=True)
    return d


def _cli(d: Path, *args: str, check: bool = False) -> tuple[int, str, str]:
    proc = run_cli("--dir", str(d), *args, check=check)
    return proc.returncode, proc.stdout, proc.stderr


def _provisioners(d: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(
        _cli(d, "provisioner", "list", "--json", check=True)[1])
    return rows


@pytest.mark.parametrize(("args", "message"), [
    (["--min-duration", "2h", "--max-duration", "1h"],
     "min_duration 2h is longer than max_duration 1h"),
    (["--max-duration", "1h", "--default-duration", "2h"],
     "default_duration 2h is longer than max_duration 1h"),
    (["--min-duration", "1h", "--default-duration", "30m"],
     "default_duration 30m is shorter than min_duration 1h"),
    # the authority's min_duration (5m, appliance.yaml) is above this provisioner's maximum
    (["--max-duration", "1m"], "min_duration 5m is longer than max_duration 1m"),
])
def test_provisioner_add_refuses_bounds_no_request_can_meet(
        qs: Path, args: list[str], message: str) -> None:
    before = _provisioners(qs)
    rc, _out, err = _cli(qs, "provisioner", "add", "bounds", "--type", "jwk", *args)
    assert rc == 2 and message in err, err
    assert _provisioners(qs) == before
    assert not (qs / "secrets" / "provisioner-bounds.pem").exists()


def test_provisioner_update_checks_the_bounds_it_would_leave(qs: Path) -> None:
    _cli(qs, "provisioner", "add", "short", "--type", "jwk", "--max-duration", "1h", check=True)
    before = _provisioners(qs)
    rc, _out, err = _cli(qs, "provisioner", "update", "short", "--min-duration", "2h")
    assert rc == 2 and "min_duration 2h is longer than max_duration 1h" in err, err
    assert _provisioners(qs) == before
    _cli(qs, "provisioner", "update", "short", "--min-duration", "30m", check=True)
    shown = json.loads(_cli(qs, "provisioner", "show", "short", "--json", check=True)[1])
    assert shown["claims"]["min_duration"] == "30m"
    assert shown["claims"]["default_duration"] == "1h"  # the authority's 24h, clamped


def test_json_on_template_show_and_db_current(qs: Path) -> None:
    shown = json.loads(_cli(qs, "template", "show", "tls-server", "--json", check=True)[1])
    text = _cli(qs, "template", "show", "tls-server", check=True)[1]
    assert shown["name"] == "tls-server" and shown["source"] == "built-in"
    assert shown["text"] == text and '"extended_key_usage"' in text
    current = json.loads(_cli(qs, "db", "current", "--json", check=True)[1])
    assert current["up_to_date"] is True and current["database"] == current["newest"]


def test_tables_and_show_print_a_dash_for_nothing(qs: Path) -> None:
    for args in (["template", "list"], ["provisioner", "list"], ["provisioner", "show", "admin"],
                 ["authority", "list"], ["hsm", "info"]):
        out = _cli(qs, *args, check=True)[1]
        assert "None" not in out, (args, out)
    listed = _cli(qs, "template", "list", check=True)[1].splitlines()
    assert any(line.split()[-1] == "-" for line in listed if "built-in" in line)


def _token_claims(token: str) -> dict[str, object]:
    claims: dict[str, object] = jwt.decode(token, options={"verify_signature": False})
    return claims


@pytest.mark.parametrize(("san", "message"), [
    ("bad name", '"bad name" is not a DNS name: whitespace or control character'),
    ("*.*.example.com", "is not a DNS name: wildcard only allowed as the whole leftmost label"),
    ("ops@@example.com", "is not an email address"),
])
def test_token_refuses_a_san_no_certificate_can_carry(qs: Path, san: str, message: str) -> None:
    rc, out, err = _cli(qs, "token", "admin", "--san", "ok.example.com", "--san", san)
    assert rc == 2 and message in err, err
    assert out == ""  # no token


def test_token_carries_checked_normalised_names_and_a_common_name(qs: Path) -> None:
    out = _cli(qs, "token", "admin", "--san", "Web.Example.COM", "--san", "2001:DB8::1",
               "--san", "ops@example.com", "--san", "spiffe://example.org/web",
               "--cn", "Web Service", check=True)[1]
    assert _token_claims(out.strip())["sans"] == [
        "web.example.com", "2001:db8::1", "ops@example.com", "spiffe://example.org/web",
        "Web Service"]
