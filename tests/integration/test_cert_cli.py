"""``appliance cert list`` / ``cert show`` over certificates a real server issued.

One quickstarted appliance issues a handful of certificates over HTTPS (one
revoked with ``appliance revoke``, one that lives three seconds and has expired by
the time the tests run, one that expires in two hours). The listing commands
only read the database, so most checks run the real entry point
(``appliance.cli.main.main``) in this process: an ``appliance`` process costs
seconds of imports. A few run as separate processes, to see the exit codes an
operator sees.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import secrets
import sqlite3
import ssl
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.cli.main import main
from appliance.ops import certificates as cert_ops
from appliance.runtime import Appliance
from appliance.store.db import Database
from appliance.store.models import Authority, Certificate
from tests.conftest import run_cli
from tests.service_helpers import Server, load_pem, make_csr, san_values, serving

LIST_KEYS = {"serial", "status", "stored_status", "subject", "sans", "not_before", "not_after",
             "authority", "provisioner", "requester", "template", "inventory_record_id",
             "fingerprint_sha256", "renewed_from", "reserved_at", "issued_at", "revoked_at",
             "revocation_reason"}


@dataclass
class Issued:
    data_dir: Path
    # by short name: alpha, bravo, charlie, delta, brief, and tls (the server's own)
    certs: dict[str, x509.Certificate]
    failed_serial: str

    def serial(self, name: str) -> str:
        return f"{self.certs[name].serial_number:x}"


def _issue(server: Server, work: Path, *names: str, provisioner: str = "admin",
           **extra: Any) -> x509.Certificate:
    csr = make_csr(work, *(f"DNS:{n}" for n in names), cn=names[0])
    resp = server.sign(csr, server.token(*names, provisioner=provisioner), **extra)
    assert resp.status_code == 201, resp.text
    return load_pem(resp.json()["crt"])


def _insert_failed(data_dir: Path) -> str:
    """A reservation whose signing failed. The real way there is a token or lint failure
    halfway through issuance, which cannot be provoked cheaply; the row is what it leaves."""
    serial = "7f" + secrets.token_hex(15)
    conn = sqlite3.connect(data_dir / "appliance.db", timeout=30)
    try:
        with conn:
            (authority_id,) = conn.execute(
                "SELECT id FROM authorities WHERE name = 'issuing'").fetchone()
            conn.execute(
                "INSERT INTO certificates (serial_hex, authority_id, provisioner_name, requester,"
                " template, status, subject, sans, request_context, reserved_at) VALUES"
                " (?, ?, 'admin', 'failed.example.com', 'tls-server', 'failed', '', '[]', '{}',"
                " ?)",
                (serial, authority_id,
                 datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")))
    finally:
        conn.close()
    return serial


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issued]:
    d = tmp_path_factory.mktemp("certcli") / "data"
    work = d.parent / "work"
    run_cli("quickstart", "--dir", str(d), check=True)
    run_cli("--dir", str(d), "provisioner", "add", "other", "--type", "jwk",
            "--generate-password", check=True)
    run_cli("--dir", str(d), "provisioner", "add", "brief", "--type", "jwk",
            "--generate-password",
            "--min-duration", "1s", check=True)
    certs: dict[str, x509.Certificate] = {}
    with serving(d) as s:
        # `serve` issues its HTTPS certificate from the CA before it answers.
        certs["tls"] = load_pem(ssl.get_server_certificate(("127.0.0.1", s.api_port)))
        certs["brief"] = _issue(s, work, "brief.example.com", provisioner="brief",
                                notAfter=(datetime.now(UTC) + timedelta(seconds=3)).isoformat())
        certs["alpha"] = _issue(s, work, "alpha.example.com", "api.alpha.example.com")
        certs["bravo"] = _issue(s, work, "bravo.example.org", provisioner="other")
        certs["charlie"] = _issue(
            s, work, "charlie.example.net",
            notAfter=(datetime.now(UTC) + timedelta(hours=2)).isoformat())
        certs["delta"] = _issue(s, work, "delta.example.com")
        s.cli("revoke", f"{certs['delta'].serial_number:x}", "--reason", "keyCompromise")
    failed = _insert_failed(d)
    wait = (certs["brief"].not_valid_after_utc - datetime.now(UTC)).total_seconds() + 1.1
    if wait > 0:
        time.sleep(wait)
    yield Issued(d, certs, failed)


def _run(issued: Issued, *args: str) -> tuple[int, str, str]:
    """``appliance --dir D ARGS`` through the real entry point, in this process (the
    ``appliance`` logger it configures is put back as it was afterwards)."""
    out, err = sys.stdout, sys.stderr
    so, se = io.StringIO(), io.StringIO()
    code = 0
    logger = logging.getLogger("appliance")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["appliance", "--dir", str(issued.data_dir), *args])
        mp.setattr(sys, "stdout", so)
        mp.setattr(sys, "stderr", se)
        try:
            main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        finally:
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate
    assert sys.stdout is out and sys.stderr is err
    return code, so.getvalue(), se.getvalue()


def _json(issued: Issued, *args: str) -> Any:
    code, out, err = _run(issued, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def _serials(issued: Issued, *args: str) -> list[str]:
    return [r["serial"] for r in _json(issued, "cert", "list", *args)]


def _audit_count(d: Path) -> int:
    conn = sqlite3.connect(f"file:{d / 'appliance.db'}?mode=ro", uri=True)
    try:
        n: int = conn.execute("SELECT COUNT(*) FROM audit_events").fetchone()[0]
    finally:
        conn.close()
    return n


def test_list_shows_everything_newest_first_with_derived_statuses(issued: Issued) -> None:
    rows = _json(issued, "cert", "list")
    assert [r["serial"] for r in rows] == [
        issued.failed_serial, *(issued.serial(n) for n in
                                ("delta", "charlie", "bravo", "alpha", "brief", "tls"))]
    for r in rows:
        assert set(r) == LIST_KEYS, r
    by = {r["serial"]: r for r in rows}
    status = {n: by[issued.serial(n)]["status"] for n in issued.certs}
    assert status == {"alpha": "issued", "bravo": "issued", "charlie": "issued",
                      "delta": "revoked", "brief": "expired", "tls": "issued"}
    tls = by[issued.serial("tls")]
    assert tls["provisioner"] == "appliance-tls" and tls["sans"] == ["127.0.0.1"]
    assert by[issued.serial("brief")]["stored_status"] == "issued"
    assert by[issued.failed_serial]["status"] == "failed"
    assert by[issued.failed_serial]["not_after"] is None
    alpha = by[issued.serial("alpha")]
    cert = issued.certs["alpha"]
    assert alpha["subject"] == "CN=alpha.example.com"
    assert alpha["sans"] == san_values(cert) == ["alpha.example.com", "api.alpha.example.com"]
    assert datetime.fromisoformat(alpha["not_after"]) == cert.not_valid_after_utc
    assert alpha["provisioner"] == "admin" and alpha["authority"] == "issuing"
    assert alpha["fingerprint_sha256"] == hashlib.sha256(
        cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    delta = by[issued.serial("delta")]
    assert delta["revocation_reason"] == "keyCompromise" and delta["revoked_at"]


def test_list_filters(issued: Issued) -> None:
    s = issued.serial
    assert _serials(issued, "--provisioner", "other") == [s("bravo")]
    assert _serials(issued, "--provisioner", "nobody") == []
    assert _serials(issued, "--provisioner", "appliance-tls") == [s("tls")]
    assert _serials(issued, "--status", "issued") == [s("charlie"), s("bravo"), s("alpha"),
                                                      s("tls")]
    assert _serials(issued, "--status", "expired") == [s("brief")]
    assert _serials(issued, "--status", "revoked") == [s("delta")]
    assert _serials(issued, "--status", "failed") == [issued.failed_serial]
    assert _serials(issued, "--status", "reserved") == []
    assert len(_serials(issued, "--authority", "issuing")) == 7
    assert _serials(issued, "--authority", "root") == []
    assert _serials(issued, "--provisioner", "admin", "--status", "issued") == [
        s("charlie"), s("alpha")]
    # Only the two-hour certificate expires within 3h; the 3-second one has already expired.
    assert _serials(issued, "--expiring-within", "3h") == [s("charlie")]
    # The 24-hour ones, not the server's 30-day certificate, until the window reaches it.
    assert _serials(issued, "--expiring-within", "29d") == [s("charlie"), s("bravo"),
                                                            s("alpha")]
    assert _serials(issued, "--expiring-within", "31d", "--status", "issued") == [
        s("charlie"), s("bravo"), s("alpha"), s("tls")]
    assert _serials(issued, "--limit", "2") == [issued.failed_serial, s("delta")]
    assert _serials(issued, "--limit", "1", "--status", "issued") == [s("charlie")]


def test_list_name_matches_subject_or_any_san_case_insensitively(issued: Issued) -> None:
    s = issued.serial
    assert _serials(issued, "--name", "ALPHA") == [s("alpha")]
    assert _serials(issued, "--name", "Api.Alpha") == [s("alpha")]  # a SAN, not the subject
    assert _serials(issued, "--name", "cn=bravo") == [s("bravo")]  # the subject
    assert _serials(issued, "--name", ".example.com") == [s("delta"), s("alpha"), s("brief")]
    assert _serials(issued, "--name", "127.0.0.1") == [s("tls")]  # CN and IP SAN of the server
    # LIKE wildcards and the JSON around the stored SANs are text like any other.
    for literal in ("%", "_", "alpha%", '", "', "[", "example.com\""):
        assert _serials(issued, "--name", literal) == [], literal


def test_list_table(issued: Issued) -> None:
    code, out, err = _run(issued, "cert", "list", "--status", "revoked")
    assert code == 0, err
    header, line = out.splitlines()
    assert header.split() == ["SERIAL", "STATUS", "SUBJECT", "/", "FIRST", "SAN", "NOT",
                              "AFTER", "PROVISIONER", "AUTHORITY"]
    delta = issued.certs["delta"]
    assert line.split() == [issued.serial("delta"), "revoked", "CN=delta.example.com",
                            f"{delta.not_valid_after_utc:%Y-%m-%d}",
                            f"{delta.not_valid_after_utc:%H:%M:%S}Z", "admin", "issuing"]
    code, out, _ = _run(issued, "cert", "list", "--status", "reserved")
    assert (code, out.strip()) == (0, "(none)")
    code, out, err = _run(issued, "cert", "list", "--limit", "2")
    assert code == 0 and len(out.splitlines()) == 3 and "raise --limit" in err


def test_show_json_matches_the_certificate(issued: Issued) -> None:
    cert = issued.certs["alpha"]
    info = _json(issued, "cert", "show", issued.serial("alpha"))
    assert set(info) == LIST_KEYS | {"inventory_record", "pem", "ra_path"}
    assert info["ra_path"] is None  # asked for here, not through a registration authority
    assert info["serial"] == f"{cert.serial_number:x}"
    assert info["status"] == "issued"
    assert info["subject"] == cert.subject.rfc4514_string()
    assert info["sans"] == san_values(cert)
    assert datetime.fromisoformat(info["not_before"]) == cert.not_valid_before_utc
    assert datetime.fromisoformat(info["not_after"]) == cert.not_valid_after_utc
    assert (info["authority"], info["provisioner"], info["template"]) == (
        "issuing", "admin", "tls-server")
    assert info["requester"] and info["issued_at"] and info["revoked_at"] is None
    assert load_pem(info["pem"]) == cert


def test_show_pem_in_every_serial_spelling(issued: Issued) -> None:
    cert = issued.certs["bravo"]
    raw = cert.serial_number.to_bytes(20, "big").hex(":")  # leading 00: octets too
    for spelling in (f"{cert.serial_number:x}", f"{cert.serial_number:X}", raw, raw.upper(),
                     f"0x{cert.serial_number:x}"):
        code, out, err = _run(issued, "cert", "show", spelling, "--pem")
        assert code == 0, (spelling, err)
        assert out.startswith("-----BEGIN CERTIFICATE-----") and out.count("BEGIN") == 1
        got = load_pem(out)
        assert got.serial_number == cert.serial_number
        assert san_values(got) == ["bravo.example.org"]


def test_show_text(issued: Issued) -> None:
    code, out, err = _run(issued, "cert", "show", issued.serial("delta"))
    assert code == 0, err
    fields = dict(line.split(":", 1) for line in out.splitlines())
    fields = {k: v.strip() for k, v in fields.items()}
    delta = issued.certs["delta"]
    assert fields["serial"] == issued.serial("delta")
    assert fields["status"] == "revoked"
    assert fields["subject"] == "CN=delta.example.com"
    assert fields["SANs"] == "delta.example.com"
    assert fields["not after"] == f"{delta.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z"
    assert fields["authority"] == "issuing" and fields["provisioner"] == "admin"
    assert fields["fingerprint"] == hashlib.sha256(
        delta.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert fields["revocation reason"] == "keyCompromise"
    assert fields["revoked at"] != "-" and fields["renewed from"] == "-"
    code, out, _ = _run(issued, "cert", "show", issued.serial("brief"))
    assert code == 0 and "status:" in out and "expired (issued, past its notAfter)" in out


def test_show_never_signed(issued: Issued) -> None:
    info = _json(issued, "cert", "show", issued.failed_serial)
    assert info["status"] == "failed" and info["pem"] is None and info["fingerprint_sha256"] \
        is None
    code, out, err = _run(issued, "cert", "show", issued.failed_serial, "--pem")
    assert code == 1 and out == "" and "never signed" in err


def test_bad_input_is_a_usage_error_and_reads_change_nothing(issued: Issued) -> None:
    before = _audit_count(issued.data_dir)
    for args, words in [
        (["list", "--limit", "0"], "0 is not in the range 1<=x<=10000"),
        (["list", "--limit", "10001"], "10001 is not in the range"),
        (["list", "--limit", "many"], "'many' is not a valid integer"),
        (["list", "--expiring-within", "5x"], "not a duration"),
        (["list", "--expiring-within", "0s"], "out of range"),
        (["list", "--name", "x" * 257], "1 to 256 characters"),
        (["list", "--name", ""], "1 to 256 characters"),
        (["list", "--status", "valid"], "'valid' is not one of"),
        (["list", "--expiring-within", "1d", "--status", "revoked"], "cannot be combined"),
        (["show", "xyz"], "not a hexadecimal serial"),
        (["show", "0"], "positive"),
        (["show", "a" * 41], "not a hexadecimal serial"),
        (["show", issued.serial("alpha"), "--json", "--pem"], "exclude each other"),
    ]:
        code, out, err = _run(issued, "cert", *args)
        assert code == 2, (args, code, err)
        assert out == "" and words in err, (args, err)
    assert _run(issued, "cert", "list", "--name", "x" * 256)[0] == 0
    assert _audit_count(issued.data_dir) == before


def test_unknowns_are_clear_errors(issued: Issued) -> None:
    code, out, err = _run(issued, "cert", "show", "DE:AD:BE:EF")
    assert (code, out) == (1, "")
    assert err.strip() == "error [not_found]: no certificate with serial deadbeef"
    code, _, err = _run(issued, "cert", "list", "--authority", "nope")
    assert code == 1 and "error [not_found]: no authority named 'nope'" in err


def test_as_a_separate_process(issued: Issued) -> None:
    """What an operator's shell sees: the exit codes, and the output of a fresh process."""
    d = str(issued.data_dir)
    proc = run_cli("--dir", d, "cert", "show", "00:DE:AD:BE:EF")
    assert proc.returncode == 1 and "no certificate with serial deadbeef" in proc.stderr
    proc = run_cli("cert", "list", "--dir", d, "--limit", "0")
    assert proc.returncode == 2 and "--limit" in proc.stderr
    proc = run_cli("--dir", d, "cert", "list", "--status", "issued", "--json", check=True)
    assert [r["serial"] for r in json.loads(proc.stdout)] == [
        issued.serial(n) for n in ("charlie", "bravo", "alpha", "tls")]


# -- the queries themselves, on SQLite and PostgreSQL -------------------------------------


@dataclass
class _DatabaseOnly:
    """The one part of an ``Appliance`` the queries use."""

    db: Database


def test_queries_on_each_backend(db: Database) -> None:
    """Time comparisons, case folding and LIKE escaping are the database's: both backends."""
    now = datetime.now(UTC).replace(microsecond=0)
    with db.transaction() as s:
        cas = [Authority(name=n, kind="intermediate", subject=f"CN={n}",
                         certificate_der=b"-", fingerprint_sha256=n * 8, not_before=now,
                         not_after=now + timedelta(days=999), created_at=now)
               for n in ("ca-a", "ca-b")]
        s.add_all(cas)
        s.flush()

        def cert(serial: str, ca: Authority, status: str, age: int, *, subject: str = "",
                 sans: list[str] | None = None, lasts: int | None = 86400) -> Certificate:
            issued = now - timedelta(seconds=age)
            return Certificate(
                serial_hex=serial, authority_id=ca.id, provisioner_name="p", requester="r",
                template="t", status=status, subject=subject, sans=json.dumps(sans or []),
                not_before=issued if lasts else None,
                not_after=issued + timedelta(seconds=lasts) if lasts else None,
                reserved_at=issued, issued_at=issued if status != "reserved" else None)

        s.add_all([
            cert("a1", cas[0], "issued", 60, subject="CN=Café Server",
                 sans=["café.example", "Mixed.Example.COM"], lasts=3660),
            cert("a2", cas[0], "issued", 120, subject="CN=gone", lasts=100),
            cert("a3", cas[0], "revoked", 180, subject="CN=a_b", sans=["a_b.example"]),
            cert("b1", cas[1], "issued", 240, subject="CN=axb", sans=["axb.example"]),
            cert("a4", cas[0], "reserved", 0, lasts=None),
        ])
    app = cast(Appliance, _DatabaseOnly(db))

    def serials(**kw: Any) -> list[str]:
        return [r["serial"] for r in cert_ops.list_certificates(app, now=now, **kw)]

    rows = cert_ops.list_certificates(app, now=now)
    assert [r["serial"] for r in rows] == ["a4", "a1", "a2", "a3", "b1"]
    assert [r["status"] for r in rows] == ["reserved", "issued", "expired", "revoked", "issued"]
    assert rows[1]["not_after"] == (now + timedelta(seconds=3600)).isoformat()
    assert rows[1]["issued_at"] == (now - timedelta(seconds=60)).isoformat()
    assert rows[0]["not_after"] is None and rows[0]["issued_at"] is None
    assert serials(status="issued") == ["a1", "b1"]
    assert serials(status="expired") == ["a2"]
    assert serials(status="reserved") == ["a4"]
    assert serials(expiring_within=3600) == ["a1"]  # inclusive: a1 ends exactly then
    assert serials(expiring_within=3599) == []
    assert serials(authority="ca-b") == ["b1"]
    assert serials(provisioner="p", limit=2) == ["a4", "a1"]
    assert serials(name="mixed.example.com") == ["a1"]
    assert serials(name="café") == ["a1"]
    assert serials(name="a_b") == ["a3"]  # "_" is no wildcard: axb does not match
    # "u00e9" is in the stored JSON (as the escape of é) but in no name: the rows the SQL
    # pre-filter lets through are checked again, page after page, up to the limit.
    assert serials(name="u00e9", limit=1) == []
    with pytest.raises(cert_ops.NotFound, match="no authority named 'nope'"):
        cert_ops.list_certificates(app, authority="nope")
    for bad in ({"limit": 0}, {"limit": 10_001}, {"name": ""}, {"name": "x" * 257},
                {"status": "valid"}, {"expiring_within": 0}):
        with pytest.raises(cert_ops.CertificateQueryError):
            cert_ops.list_certificates(app, **bad)
    info = cert_ops.show(app, "A1", now=now)
    assert info["sans"] == ["café.example", "Mixed.Example.COM"] and info["pem"] is None
    assert cert_ops.show(app, "0x00:A2", now=now)["status"] == "expired"
    with pytest.raises(cert_ops.NotFound, match="no certificate with serial abc"):
        cert_ops.show(app, "ABC", now=now)
