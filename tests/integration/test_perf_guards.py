"""The hot paths cache parsing, never decisions: what an operator changes counts on the very
next request in every worker.

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
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask.testing import FlaskClient

from appliance import config
from appliance.provisioners import tokens
from appliance.provisioners.settings import sign_audience
from appliance.runtime import Appliance
from appliance.web.app import create_app
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


def _token_replay(data_dir: Path, tmp_path: Path) -> None:
    (app_a, a), (_, b) = _workers(data_dir)
    svc = app_a.settings.config.service
    ott = tokens.mint(_key(data_dir), provisioner="admin",
                      audience=sign_audience(svc.api_hostname, svc.api_listen),
                      sans=["replay.example.com"])
    csr = make_csr(data_dir.parent / "csr", "DNS:replay.example.com")
    first = a.post("/1.0/sign", json={"csr": csr, "ott": ott}, base_url=BASE)
    assert first.status_code == 201, first.get_json()
    again = b.post("/1.0/sign", json={"csr": csr, "ott": ott}, base_url=BASE)
    assert again.status_code == 401, again.get_json()


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


SCENARIOS: dict[str, Callable[[Path, Path], None]] = {
    "claims": _claims_change, "policy": _policy_change, "acme": _acme_change,
    "replay": _token_replay, "stored": _stored_with_ocsp,
}


def test_provisioner_claims_change_counts_at_once_in_every_worker(
        data_dir: Path, tmp_path: Path) -> None:
    _run("claims", data_dir, tmp_path)


def test_policy_change_counts_at_once_in_every_worker(data_dir: Path, tmp_path: Path) -> None:
    _run("policy", data_dir, tmp_path)


def test_acme_provisioner_change_counts_at_once_in_every_worker(
        data_dir: Path, tmp_path: Path) -> None:
    _run("acme", data_dir, tmp_path)


def test_replayed_token_refused_by_the_other_worker(data_dir: Path, tmp_path: Path) -> None:
    _run("replay", data_dir, tmp_path)


def test_issued_certificates_are_stored_with_ocsp_and_audited(
        data_dir: Path, tmp_path: Path) -> None:
    _run("stored", data_dir, tmp_path)
