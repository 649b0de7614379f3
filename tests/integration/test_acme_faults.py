"""A fault on our side is answered as ours, in REST and in ACME, and costs the client nothing:
a 503 with Retry-After (never the client's 400), a detail that names no internals, and an
ACME order that stays ready, so the same finalize succeeds once the fault is gone.

The token going away mid-signature and the audit log refusing a write cannot be produced on
demand in a real SoftHSM and database, so they are injected (the token key's ``sign``, the
audit log's ``append``); everything else is real. The app runs in a fresh process, as in
test_perf_guards (the PKCS#11 module is loaded once per process with one token store).
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import update

from appliance import config
from appliance.audit.log import AuditLog
from appliance.errors import AuditError, HsmUnavailableError
from appliance.hsm.signer import TokenECPrivateKey, TokenRSAPrivateKey
from appliance.provisioners import tokens
from appliance.provisioners.settings import sign_audience
from appliance.runtime import Appliance
from appliance.store.models import AcmeAuthorization, AcmeOrder
from appliance.web.app import create_app
from tests.acme_client import Client, FlaskResponse, FlaskSession
from tests.conftest import run_cli
from tests.service_helpers import configure, make_csr, provisioner_key

BASE = "https://127.0.0.1:8443"
REPO = Path(__file__).resolve().parents[2]
SERVER_INTERNAL = "urn:ietf:params:acme:error:serverInternal"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("acmefaults") / "data"
    run_cli("quickstart", "--dir", str(d), check=True)
    configure(d, "service", rate_limit_per_minute=0)
    return d


@contextlib.contextmanager
def _injected(owner: type, name: str, fault: Exception) -> Iterator[None]:
    def raising(*_: Any, **__: Any) -> Any:
        raise fault

    original = owner.__dict__[name]
    setattr(owner, name, raising)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextlib.contextmanager
def _token_gone() -> Iterator[None]:
    fault = HsmUnavailableError("token 'appliance' unreachable (injected)")
    with _injected(TokenECPrivateKey, "sign", fault), \
            _injected(TokenRSAPrivateKey, "sign", fault):
        yield


def _csr(name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
           .sign(key, hashes.SHA256()))
    der = csr.public_bytes(serialization.Encoding.DER)
    return base64.urlsafe_b64encode(der).rstrip(b"=").decode()


def _ready_order(app: Appliance, acme: Client, name: str) -> tuple[str, str]:
    """An order for NAME made ready in the database (validation is not what this tests)."""
    r = acme.order(("dns", name))
    assert r.status_code == 201, r.json()
    url, finalize = r.headers["Location"], r.json()["finalize"]
    order_id = url.rsplit("/", 1)[1]
    with app.db.transaction() as db:
        db.execute(update(AcmeAuthorization).where(AcmeAuthorization.order_id == order_id)
                   .values(status="valid"))
        db.execute(update(AcmeOrder).where(AcmeOrder.id == order_id).values(status="ready"))
    assert acme.post(url, None).json()["status"] == "ready"
    return url, finalize


def _assert_ours(r: FlaskResponse) -> None:
    problem = r.json()
    assert r.status_code == 503 and problem["type"] == SERVER_INTERNAL, problem
    assert "Retry-After" in r.headers and "injected" not in problem["detail"]


def _acme_faults(data_dir: Path, tmp_path: Path) -> None:
    app = Appliance(config.load(data_dir / "appliance.yaml"))
    acme = Client(f"{BASE}/acme/acme/directory", data_dir,
                  session=FlaskSession(create_app(app).test_client()))  # type: ignore[arg-type]
    assert acme.register().status_code == 201
    url, finalize = _ready_order(app, acme, "fault.test")
    with _token_gone():
        _assert_ours(acme.post(finalize, {"csr": _csr("fault.test")}))
    assert acme.post(url, None).json()["status"] == "ready"
    with _injected(AuditLog, "append", AuditError("audit write failed (injected)")):
        _assert_ours(acme.post(finalize, {"csr": _csr("fault.test")}))
    assert acme.post(url, None).json()["status"] == "ready"
    r = acme.post(finalize, {"csr": _csr("fault.test")})  # the fault is gone: same order
    assert r.status_code == 200 and r.json()["status"] == "valid", r.json()


def _rest_audit_fault(data_dir: Path, tmp_path: Path) -> None:
    app = Appliance(config.load(data_dir / "appliance.yaml"))
    client = create_app(app).test_client()
    svc = app.settings.config.service
    ott = tokens.mint(provisioner_key(data_dir, "admin"), provisioner="admin",
                      audience=sign_audience(svc.api_hostname, svc.api_listen),
                      sans=["audit.example.com"])
    csr = make_csr(tmp_path / "csr", "DNS:audit.example.com")
    with _injected(AuditLog, "append", AuditError("audit write failed (injected)")):
        r = client.post("/1.0/sign", json={"csr": csr, "ott": ott}, base_url=BASE)
    body = r.get_json()
    assert r.status_code == 503 and body["error"] == "audit_error", body
    assert "Retry-After" in r.headers and "injected" not in body["message"]


SCENARIOS = {"acme": _acme_faults, "rest": _rest_audit_fault}


def _run(scenario: str, data_dir: Path, tmp_path: Path) -> None:
    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)  # the data directory's profile names its own store
    code = ("import sys; from pathlib import Path; import tests.integration.test_acme_faults "
            "as t; t.SCENARIOS[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]))")
    proc = subprocess.run([sys.executable, "-c", code, scenario, str(data_dir), str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_acme_finalize_fault_of_ours_is_a_503_and_the_order_stays_ready(
        data_dir: Path, tmp_path: Path) -> None:
    _run("acme", data_dir, tmp_path)


def test_rest_audit_fault_is_a_503_not_a_400(data_dir: Path, tmp_path: Path) -> None:
    _run("rest", data_dir, tmp_path)
