"""The hot paths cache, but never past a change: what an operator changes counts on the very
next request in every worker.

Issuance caches what it reads (authority, template, policies, inventory, provisioner rows)
behind the issuance epochs that database triggers bump (``appliance.store.epochs``); so
the changes here are made both by the CLI and by plain SQL from another process, as an
operator's console would, which no code of ours sees.

Two Flask apps on one data directory stand for two gunicorn workers (each has its own
``Appliance``, engine and caches); the operator changes things with the CLI, in another
process, as in production. Every check is made through both "workers", each of which has
already served (and so cached) the state before the change.

Each scenario runs in a fresh Python process (``_run``): the PKCS#11 module is loaded once
per process with one token store, and other tests in the session load another.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from flask.testing import FlaskClient

from appliance import config
from appliance.issuance.csr import load_csr
from appliance.issuance.request import SignRequest, TokenError
from appliance.provisioners import authorize, tokens
from appliance.provisioners.settings import sign_audience
from appliance.runtime import Appliance
from appliance.templates.shipped import builtin_templates
from appliance.web.app import create_app
from tests.acme_client import Client, FlaskSession, jwk_of, sign
from tests.conftest import run_cli
from tests.service_helpers import make_csr, provisioner_key

BASE = "https://127.0.0.1:8443"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("perfguards") / "data"
    run_cli("quickstart", "--dir", str(d), check=True)
    return d


REPO = Path(__file__).resolve().parents[2]
Workers = list[tuple[Appliance, FlaskClient]]


def _run(scenario: str, data_dir: Path, tmp_path: Path) -> None:
    """Run ``scenario`` (a function of this module) in a fresh process."""
    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)  # the data directory's profile names its own store
    code = ("import sys; from pathlib import Path; import tests.integration.test_perf_guards "
            "as t; t.SCENARIOS[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]))")
    proc = subprocess.run([sys.executable, "-c", code, scenario, str(data_dir), str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def _workers(data_dir: Path) -> Workers:
    out = []
    for _ in range(2):
        app = Appliance(config.load(data_dir / "appliance.yaml"))
        out.append((app, create_app(app).test_client()))
    return out


def _cli(data_dir: Path, *args: str) -> None:
    run_cli("--dir", str(data_dir), *args, check=True)


def _operator_sql(data_dir: Path, statement: str, *params: Any) -> None:
    """An operator's SQL, from another process (no code of ours runs there)."""
    code = ("import sqlite3, sys, json; db = sqlite3.connect(sys.argv[1]); "
            "db.execute(sys.argv[2], json.loads(sys.argv[3])); db.commit(); db.close()")
    subprocess.run([sys.executable, "-c", code, str(data_dir / "appliance.db"), statement,
                    json.dumps(list(params))], check=True, timeout=60)


def _query(data_dir: Path, statement: str, *params: Any) -> list[Any]:
    with sqlite3.connect(data_dir / "appliance.db") as db:
        return db.execute(statement, params).fetchall()


def _row(data_dir: Path, serial: str) -> tuple[Any, ...]:
    (row,) = _query(data_dir, "SELECT status, der IS NOT NULL, inventory_record_id "
                    "FROM certificates WHERE serial_hex = ?", serial)
    return tuple(row)


def _client_auth(r: Any) -> bool:
    assert r.status_code == 201, r.get_json()
    cert = x509.load_pem_x509_certificate(r.get_json()["crt"].encode())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    return x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in eku


def _key(data_dir: Path) -> ec.EllipticCurvePrivateKey:
    return provisioner_key(data_dir, "admin")


def _sign(app: Appliance, client: FlaskClient, data_dir: Path, name: str,
          **token: Any) -> Any:
    svc = app.settings.config.service
    ott = tokens.mint(_key(data_dir), provisioner="admin",
                      audience=sign_audience(svc.api_hostname, svc.api_listen),
                      sans=[name], **token)
    csr = make_csr(data_dir.parent / "csr", f"DNS:{name}")
    return client.post("/1.0/sign", json={"csr": csr, "ott": ott}, base_url=BASE)


def _claims_change(data_dir: Path, tmp_path: Path) -> None:
    workers = _workers(data_dir)
    for i, (app, client) in enumerate(workers):  # both have parsed the settings once
        r = _sign(app, client, data_dir, f"before{i}.example.com", cert_lifetime=7200)
        assert r.status_code == 201, r.get_json()
    _cli(data_dir, "provisioner", "update", "admin", "--max-duration", "1h")
    try:
        for i, (app, client) in enumerate(workers):
            r = _sign(app, client, data_dir, f"after{i}.example.com", cert_lifetime=7200)
            assert r.status_code == 400, r.get_json()
            assert "exceeds the maximum" in r.get_json()["message"]
    finally:
        _cli(data_dir, "provisioner", "update", "admin", "--max-duration", "24h")
    for i, (app, client) in enumerate(workers):
        r = _sign(app, client, data_dir, f"again{i}.example.com", cert_lifetime=7200)
        assert r.status_code == 201, r.get_json()


def _policy_change(data_dir: Path, tmp_path: Path) -> None:
    workers = _workers(data_dir)
    for i, (app, client) in enumerate(workers):
        assert _sign(app, client, data_dir, f"p{i}.example.org").status_code == 201
    policy = tmp_path / "policy.yaml"
    policy.write_text("x509:\n  allow: {dns: ['*.example.com']}\n")
    _cli(data_dir, "policy", "set", "--provisioner", "admin", str(policy))
    try:
        for i, (app, client) in enumerate(workers):
            r = _sign(app, client, data_dir, f"q{i}.example.org")
            assert r.status_code == 403, r.get_json()
            assert _sign(app, client, data_dir, f"q{i}.example.com").status_code == 201
        policy.write_text("x509:\n  allow: {dns: ['*.example.org']}\n")  # same level, new text
        _cli(data_dir, "policy", "set", "--provisioner", "admin", str(policy))
        for i, (app, client) in enumerate(workers):
            assert _sign(app, client, data_dir, f"r{i}.example.com").status_code == 403
            assert _sign(app, client, data_dir, f"r{i}.example.org").status_code == 201
    finally:
        _cli(data_dir, "policy", "remove", "--provisioner", "admin")


def _acme_change(data_dir: Path, tmp_path: Path) -> None:
    workers = _workers(data_dir)

    def meta(client: FlaskClient) -> bool:
        r = client.get("/acme/acme/directory", base_url=BASE)
        assert r.status_code == 200, r.get_data(as_text=True)
        return bool(r.get_json()["meta"]["externalAccountRequired"])

    assert [meta(c) for _, c in workers] == [False, False]
    _cli(data_dir, "provisioner", "update", "acme", "--require-eab")
    try:
        assert [meta(c) for _, c in workers] == [True, True]
    finally:
        _cli(data_dir, "provisioner", "update", "acme", "--no-require-eab")
    assert [meta(c) for _, c in workers] == [False, False]


def _acme_account_changes(data_dir: Path, tmp_path: Path) -> None:
    """Each worker reads the provisioner and the account with the request's nonce, in one
    transaction, and keeps only the parsing of the key: a nonce, a key rollover, a disabled
    provisioner and a deactivation made through one worker (or the CLI) count on the very
    next request in the other."""
    a, b = (Client(f"{BASE}/acme/acme/directory", data_dir,  # type: ignore[arg-type]
                   session=FlaskSession(c)) for _, c in _workers(data_dir))
    assert a.register().status_code == 201
    b.key, b.kid = a.key, a.kid
    names = iter(f"n{i}.example.com" for i in range(100))

    def order(c: Client, **kw: Any) -> Any:
        return c.post(c.dir["newOrder"], {"identifiers": [
            {"type": "dns", "value": next(names)}]}, **kw)

    for c in (a, b):  # both have read the account and parsed its key
        assert order(c).status_code == 201
    # a nonce made by one worker, spent in the other, is refused again in both
    nonce = a.new_nonce()
    assert order(b, nonce=nonce).status_code == 201
    for c in (a, b):
        r = order(c, nonce=nonce)
        assert r.status_code == 400 and r.json()["type"].endswith(":badNonce"), r.json()
    # key rollover through b: at once in a, the old key is refused and the new one accepted
    new_key = ec.generate_private_key(ec.SECP256R1())
    inner = sign(new_key, {"alg": "ES256", "url": b.dir["keyChange"], "jwk": jwk_of(new_key)},
                 {"account": b.kid, "oldKey": jwk_of(b.key)})
    assert b.post(b.dir["keyChange"], inner).status_code == 200
    for c in (a, b):
        r = order(c)
        assert r.status_code == 403 and r.json()["type"].endswith(":unauthorized"), r.json()
    a.key = b.key = new_key
    for c in (a, b):
        assert order(c).status_code == 201
    # the provisioner (read with the nonce) disabled: both refuse at once, spending nothing
    nonce = a.new_nonce()
    _cli(data_dir, "provisioner", "update", "acme", "--disable")
    try:
        for c in (a, b):
            r = order(c, nonce=nonce)
            assert r.status_code == 403 and "disabled" in r.json()["detail"], r.json()
            r = c.session.post(c.dir["newOrder"], data="{}",  # refused before any nonce
                               headers={"Content-Type": "application/jose+json"})
            assert r.status_code == 403 and "disabled" in r.json()["detail"], r.json()
    finally:
        _cli(data_dir, "provisioner", "update", "acme", "--enable")
    assert order(b, nonce=nonce).status_code == 201  # the refused requests did not spend it
    r = a.session.post(f"{BASE}/acme/nope/new-order", data="{}",
                       headers={"Content-Type": "application/jose+json"})
    assert r.status_code == 404 and "no ACME provisioner" in r.json()["detail"], r.json()
    # deactivated through a: refused on the very next request in b (and in a)
    r = a.post(a.kid or "", {"status": "deactivated"})
    assert r.status_code == 200 and r.json()["status"] == "deactivated"
    for c in (b, a):
        r = order(c)
        assert r.status_code == 403 and "deactivated" in r.json()["detail"], r.json()


def _template_change(data_dir: Path, tmp_path: Path) -> None:
    workers = _workers(data_dir)
    builtin = builtin_templates()["tls-server"]
    for i, (app, client) in enumerate(workers):  # both have read "no stored template"
        assert _client_auth(_sign(app, client, data_dir, f"t{i}.example.com"))
    server_only = tmp_path / "server-only.json.j2"
    server_only.write_text(builtin.replace('["server_auth", "client_auth"]', '["server_auth"]'))
    _cli(data_dir, "template", "add", "tls-server", str(server_only))  # overrides the built-in
    try:
        for i, (app, client) in enumerate(workers):
            assert not _client_auth(_sign(app, client, data_dir, f"u{i}.example.com"))
        _operator_sql(data_dir, "UPDATE templates SET source = ? WHERE name = 'tls-server'",
                      builtin)
        for i, (app, client) in enumerate(workers):
            assert _client_auth(_sign(app, client, data_dir, f"v{i}.example.com"))
        _operator_sql(data_dir, "UPDATE templates SET source = ? WHERE name = 'tls-server'",
                      server_only.read_text())
        for i, (app, client) in enumerate(workers):
            assert not _client_auth(_sign(app, client, data_dir, f"w{i}.example.com"))
    finally:
        _cli(data_dir, "template", "remove", "tls-server")
    for i, (app, client) in enumerate(workers):
        assert _client_auth(_sign(app, client, data_dir, f"x{i}.example.com"))


def _inventory_change(data_dir: Path, tmp_path: Path) -> None:
    workers = _workers(data_dir)
    # The first worker holds the whole (small) inventory; the second looks names up one
    # request at a time (as for an inventory too large to hold), cached by the names.
    workers[1][1].application.extensions["issuer"].inventory_snapshot = 0
    name = "inv.example.com"  # the same names each time: the lookup cached by them

    def record_of(app: Appliance, client: FlaskClient) -> Any:
        r = _sign(app, client, data_dir, name)
        assert r.status_code == 201, r.get_json()
        status, has_der, record = _row(data_dir, r.get_json()["serial"])
        assert (status, has_der) == ("issued", 1)
        return record

    assert [record_of(a, c) for a, c in workers] == [None, None]
    _cli(data_dir, "inventory", "add", "guard-host", "--dns", name)
    try:
        ((record_id,),) = _query(data_dir, "SELECT id FROM inventory_records "
                                 "WHERE name = 'guard-host'")
        assert [record_of(a, c) for a, c in workers] == [record_id, record_id]
        _operator_sql(data_dir, "UPDATE inventory_identifiers SET value = "
                      "'elsewhere.example.com' WHERE record_id = ?", record_id)
        assert [record_of(a, c) for a, c in workers] == [None, None]
        _operator_sql(data_dir, "UPDATE inventory_identifiers SET value = ? "
                      "WHERE record_id = ?", name, record_id)
        assert [record_of(a, c) for a, c in workers] == [record_id, record_id]
    finally:
        _cli(data_dir, "inventory", "remove", "guard-host")
    assert [record_of(a, c) for a, c in workers] == [None, None]


def _authority_change(data_dir: Path, tmp_path: Path) -> None:
    workers = _workers(data_dir)
    for i, (app, client) in enumerate(workers):  # both have the CA's signer cached
        assert _sign(app, client, data_dir, f"ca{i}.example.com").status_code == 201
    issued = _query(data_dir, "SELECT COUNT(*) FROM certificates WHERE status = 'issued'")
    _operator_sql(data_dir, "UPDATE authorities SET status = 'revoked' WHERE name = 'issuing'")
    try:
        for i, (app, client) in enumerate(workers):
            r = _sign(app, client, data_dir, f"cb{i}.example.com")
            assert r.status_code == 503, r.get_json()
            assert r.get_json()["error"] == "authority_unavailable"
        assert _query(data_dir, "SELECT COUNT(*) FROM certificates "
                      "WHERE status = 'issued'") == issued
    finally:
        _operator_sql(data_dir, "UPDATE authorities SET status = 'active' "
                      "WHERE name = 'issuing'")
    for i, (app, client) in enumerate(workers):
        assert _sign(app, client, data_dir, f"cc{i}.example.com").status_code == 201


def _provisioner_sql_change(data_dir: Path, tmp_path: Path) -> None:
    workers = _workers(data_dir)
    for i, (app, client) in enumerate(workers):  # both have the provisioner row cached
        assert _sign(app, client, data_dir, f"pa{i}.example.com").status_code == 201
    ((original,),) = _query(data_dir, "SELECT config FROM provisioners WHERE name = 'admin'")
    disabled = json.dumps({**json.loads(original), "disabled": True})
    _operator_sql(data_dir, "UPDATE provisioners SET config = ? WHERE name = 'admin'", disabled)
    try:
        for i, (app, client) in enumerate(workers):
            r = _sign(app, client, data_dir, f"pb{i}.example.com")
            assert r.status_code == 403 and "disabled" in r.get_json()["message"], r.get_json()
    finally:
        _operator_sql(data_dir, "UPDATE provisioners SET config = ? WHERE name = 'admin'",
                      original)
    for i, (app, client) in enumerate(workers):
        assert _sign(app, client, data_dir, f"pc{i}.example.com").status_code == 201


def _certificates() -> str:
    return "SELECT COUNT(*) FROM certificates"


def _token_replay(data_dir: Path, tmp_path: Path) -> None:
    (app_a, a), (app_b, b) = _workers(data_dir)
    svc = app_a.settings.config.service
    audience = sign_audience(svc.api_hostname, svc.api_listen)
    ott = tokens.mint(_key(data_dir), provisioner="admin", audience=audience,
                      sans=["replay.example.com"])
    csr = make_csr(data_dir.parent / "csr", "DNS:replay.example.com")
    first = a.post("/1.0/sign", json={"csr": csr, "ott": ott}, base_url=BASE)
    assert first.status_code == 201, first.get_json()
    rows = _query(data_dir, _certificates())
    again = b.post("/1.0/sign", json={"csr": csr, "ott": ott}, base_url=BASE)
    assert again.status_code == 401, again.get_json()
    assert "already used" in again.get_json()["message"]
    assert _query(data_dir, _certificates()) == rows  # nothing reserved
    failed = [json.loads(d) for (d,) in _query(
        data_dir, "SELECT details FROM audit_events WHERE event_type = 'auth.failed'")]
    assert any("already used" in f["reason"] for f in failed)

    # Both workers verify the same token before either spends it (a race): the one that
    # reserves second finds it spent in its reservation's transaction and reserves nothing.
    ott = tokens.mint(_key(data_dir), provisioner="admin", audience=audience,
                      sans=["race.example.com"])
    verified = [authorize.verify_one_time_token(app, ott) for app in (app_a, app_b)]
    req = load_csr(make_csr(data_dir.parent / "csr", "DNS:race.example.com"))
    issuers = [c.application.extensions["issuer"] for c in (a, b)]

    def request(v: authorize.Verified) -> SignRequest:
        return SignRequest(csr=req, provisioner=v.ctx, requester="admin:race",
                           credential_names=list(v.claims.sans), token_spend=v.spend)

    issuers[0].issue(request(verified[0]))
    rows = _query(data_dir, _certificates())
    refused = _query(data_dir, "SELECT COUNT(*) FROM audit_events "
                     "WHERE event_type = 'certificate.refused'")
    with pytest.raises(TokenError, match="token already used"):
        issuers[1].issue(request(verified[1]))
    assert _query(data_dir, _certificates()) == rows
    assert _query(data_dir, "SELECT COUNT(*) FROM audit_events "
                  "WHERE event_type = 'certificate.refused'") == refused


def _refusal_spends(data_dir: Path, tmp_path: Path) -> None:
    """A token is good for one decision: a request the pipeline refuses spends it too (as
    when the spend came first), so the same token cannot come back, in any worker."""
    (app_a, a), (_, b) = _workers(data_dir)
    svc = app_a.settings.config.service
    ott = tokens.mint(_key(data_dir), provisioner="admin",
                      audience=sign_audience(svc.api_hostname, svc.api_listen),
                      sans=["long.example.com"], cert_lifetime=48 * 3600)
    csr = make_csr(data_dir.parent / "csr", "DNS:long.example.com")
    rows = _query(data_dir, _certificates())
    refusals = _query(data_dir, "SELECT COUNT(*) FROM audit_events "
                      "WHERE event_type = 'certificate.refused'")[0][0]
    first = a.post("/1.0/sign", json={"csr": csr, "ott": ott}, base_url=BASE)
    assert first.status_code == 400 and "exceeds the maximum" in first.get_json()["message"]
    for client in (a, b):
        again = client.post("/1.0/sign", json={"csr": csr, "ott": ott}, base_url=BASE)
        assert again.status_code == 401 and "already used" in again.get_json()["message"]
    assert _query(data_dir, _certificates()) == rows
    assert _query(data_dir, "SELECT COUNT(*) FROM audit_events "
                  "WHERE event_type = 'certificate.refused'")[0][0] == refusals + 1


def _concurrent_signs(data_dir: Path, tmp_path: Path) -> None:
    """Threads of two workers at once: distinct serials, every row issued with its DER, its
    OCSP response and its audit record, and the audit chain intact."""
    workers = _workers(data_dir)
    jobs = [(w, t, n) for w in range(2) for t in range(4) for n in range(3)]

    def one(job: tuple[int, int, int]) -> str:
        w, t, n = job
        app, client = workers[w]
        mine = client.application.test_client()  # a client per thread
        r = _sign(app, mine, data_dir, f"c{w}-{t}-{n}.example.com")
        assert r.status_code == 201, r.get_json()
        return str(r.get_json()["serial"])

    with ThreadPoolExecutor(8) as pool:
        serials = list(pool.map(one, jobs))
    assert len(set(serials)) == len(jobs)
    for serial in serials:  # read back by a new connection: committed, not just returned
        assert _row(data_dir, serial)[:2] == ("issued", 1)
        assert _query(data_dir, "SELECT o.status FROM ocsp_responses o JOIN certificates c "
                      "ON c.id = o.certificate_id WHERE c.serial_hex = ?", serial) == [("good",)]
    audited = {json.loads(o).get("serial") for (o,) in _query(
        data_dir, "SELECT object_ids FROM audit_events WHERE event_type = 'certificate.issued'")}
    assert set(serials) <= audited
    verify = run_cli("--dir", str(data_dir), "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _stored_with_ocsp(data_dir: Path, tmp_path: Path) -> None:
    app, client = _workers(data_dir)[0]
    r = _sign(app, client, data_dir, "stored.example.com")
    assert r.status_code == 201, r.get_json()
    serial = r.get_json()["serial"]
    with sqlite3.connect(data_dir / "appliance.db") as db:
        row = db.execute("SELECT c.status, c.der IS NOT NULL, o.status FROM certificates c "
                         "JOIN ocsp_responses o ON o.certificate_id = c.id "
                         "WHERE c.serial_hex = ?", (serial,)).fetchone()
        assert row == ("issued", 1, "good")
        events = [json.loads(o) for (o,) in db.execute(
            "SELECT object_ids FROM audit_events WHERE event_type = 'certificate.issued'")]
        assert any(e.get("serial") == serial for e in events)
    verify = run_cli("--dir", str(data_dir), "audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _pg_operator_sql(statement: str, *params: Any) -> None:
    """An operator's SQL on the PostgreSQL database, from another process (psql-like)."""
    url = os.environ["APPLIANCE_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    code = ("import psycopg, sys, json\n"
            "with psycopg.connect(sys.argv[1]) as db:\n"
            "    db.execute(sys.argv[2], json.loads(sys.argv[3]))\n")
    subprocess.run([sys.executable, "-c", code, url, statement, json.dumps(list(params))],
                   check=True, timeout=60)


def _postgresql_changes(data_dir: Path, tmp_path: Path) -> None:
    """Two workers on one PostgreSQL database (two nodes alike): the statement triggers
    count an operator's SQL and the CLI's writes on the very next request in both."""
    from sqlalchemy import create_engine, text

    engine = create_engine(os.environ["APPLIANCE_DATABASE_URL"])

    def record(serial: str) -> Any:
        with engine.connect() as db:
            return db.execute(text("SELECT inventory_record_id FROM certificates "
                                   "WHERE serial_hex = :s AND status = 'issued'"),
                              {"s": serial}).scalar_one()

    workers = _workers(data_dir)
    for i, (app, client) in enumerate(workers):  # everything cached in both
        assert _client_auth(_sign(app, client, data_dir, f"pg{i}.example.com"))
    _pg_operator_sql("UPDATE authorities SET status = 'revoked' WHERE name = 'issuing'")
    try:
        for i, (app, client) in enumerate(workers):
            r = _sign(app, client, data_dir, f"pga{i}.example.com")
            assert r.status_code == 503 and r.get_json()["error"] == "authority_unavailable"
    finally:
        _pg_operator_sql("UPDATE authorities SET status = 'active' WHERE name = 'issuing'")
    server_only = builtin_templates()["tls-server"].replace(
        '["server_auth", "client_auth"]', '["server_auth"]')
    _pg_operator_sql("INSERT INTO templates (name, source, updated_at) "
                     "VALUES ('tls-server', %s, now())", server_only)
    for i, (app, client) in enumerate(workers):
        assert not _client_auth(_sign(app, client, data_dir, f"pgb{i}.example.com"))
    _pg_operator_sql("DELETE FROM templates WHERE name = 'tls-server'")
    for i, (app, client) in enumerate(workers):
        assert _client_auth(_sign(app, client, data_dir, f"pgc{i}.example.com"))
    name = "pg-inv.example.com"
    assert [record(_sign(a, c, data_dir, name).get_json()["serial"])
            for a, c in workers] == [None, None]
    _cli(data_dir, "inventory", "add", "pg-host", "--dns", name)
    with engine.connect() as db:
        rid = db.execute(text("SELECT id FROM inventory_records WHERE name = 'pg-host'")
                         ).scalar_one()
    assert [record(_sign(a, c, data_dir, name).get_json()["serial"])
            for a, c in workers] == [rid, rid]
    _pg_operator_sql("DELETE FROM inventory_identifiers WHERE record_id = %s", rid)
    assert [record(_sign(a, c, data_dir, name).get_json()["serial"])
            for a, c in workers] == [None, None]
    engine.dispose()


SCENARIOS: dict[str, Callable[[Path, Path], None]] = {
    "claims": _claims_change, "policy": _policy_change, "acme": _acme_change,
    "acme-account": _acme_account_changes,
    "replay": _token_replay, "stored": _stored_with_ocsp, "template": _template_change,
    "inventory": _inventory_change, "authority": _authority_change,
    "provisioner-sql": _provisioner_sql_change, "refusal": _refusal_spends,
    "concurrent": _concurrent_signs, "postgresql": _postgresql_changes,
}


def test_provisioner_claims_change_counts_at_once_in_every_worker(
        data_dir: Path, tmp_path: Path) -> None:
    _run("claims", data_dir, tmp_path)


def test_policy_change_counts_at_once_in_every_worker(data_dir: Path, tmp_path: Path) -> None:
    _run("policy", data_dir, tmp_path)


def test_acme_provisioner_change_counts_at_once_in_every_worker(
        data_dir: Path, tmp_path: Path) -> None:
    _run("acme", data_dir, tmp_path)


def test_acme_nonce_key_change_disable_and_deactivation_count_at_once_in_every_worker(
        data_dir: Path, tmp_path: Path) -> None:
    _run("acme-account", data_dir, tmp_path)


def test_replayed_token_refused_by_the_other_worker(data_dir: Path, tmp_path: Path) -> None:
    _run("replay", data_dir, tmp_path)


def test_issued_certificates_are_stored_with_ocsp_and_audited(
        data_dir: Path, tmp_path: Path) -> None:
    _run("stored", data_dir, tmp_path)


def test_template_change_counts_at_once_in_every_worker(data_dir: Path, tmp_path: Path) -> None:
    _run("template", data_dir, tmp_path)


def test_inventory_change_counts_at_once_in_every_worker(data_dir: Path,
                                                         tmp_path: Path) -> None:
    _run("inventory", data_dir, tmp_path)


def test_authority_status_change_counts_at_once_in_every_worker(data_dir: Path,
                                                                tmp_path: Path) -> None:
    _run("authority", data_dir, tmp_path)


def test_provisioner_changed_by_sql_counts_at_once_in_every_worker(data_dir: Path,
                                                                   tmp_path: Path) -> None:
    _run("provisioner-sql", data_dir, tmp_path)


def test_a_refused_request_spends_its_token(data_dir: Path, tmp_path: Path) -> None:
    _run("refusal", data_dir, tmp_path)


def test_concurrent_signs_get_distinct_serials_and_durable_rows(data_dir: Path,
                                                                tmp_path: Path) -> None:
    _run("concurrent", data_dir, tmp_path)


@pytest.mark.postgres
def test_changes_on_postgresql_count_at_once_in_every_worker(
        tmp_path: Path, pg_available: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import create_pg_database, drop_pg_database, require_pg

    require_pg(pg_available)
    url = create_pg_database()
    try:
        monkeypatch.setenv("APPLIANCE_DATABASE_URL", url)  # quickstart, the CLI, the workers
        data = tmp_path / "pg"
        run_cli("quickstart", "--dir", str(data), check=True)
        _run("postgresql", data, tmp_path)
    finally:
        drop_pg_database(url)
