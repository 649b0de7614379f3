"""The FIPS-style power-on self-tests gate a real node (real SoftHSM, real ``serve``).

One data directory for the module: ``quickstart``, then ``fips: {enabled: true}`` and a
manifest sealed with the audit key (``write_sealed``, what ``appliance fips seal`` calls
after its quorum). Then, in order: the node passes its power-on tests and signs; a COPY of
the installed package with one byte changed (``APPLIANCE_FIPS_PACKAGE_DIR``, test-only)
fails ``appliance fips selftest`` and the running node answers 503 ``fips_error`` on
signing and ACME, and says so on /1.0/health and /1.0/ready; a start against the copy is
refused; with no seal the integrity test names ``appliance fips seal``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from appliance.fips import manifest
from appliance.fips.selftest import PACKAGE_DIR_ENV
from tests.conftest import run_cli
from tests.service_helpers import Server, make_csr, serving

SEAL = """
import sys
from pathlib import Path
from appliance import config
from appliance.fips import manifest, seal
from appliance.runtime import Appliance
app = Appliance(config.load(Path(sys.argv[1]) / "appliance.yaml"))
try:
    sealed = seal.write_sealed(app, manifest.compute(), app.settings.config.audit.key_label,
                               ["trial-officer-1", "trial-officer-2"])
    print(sealed.sha256)
finally:
    app.close()
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fips") / "data"
    run_cli("quickstart", "--dir", str(d), "--fips", check=True)
    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)
    out = subprocess.run([sys.executable, "-c", SEAL, str(d)], capture_output=True, text=True,
                         env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == manifest.compute().sha256
    return d


@pytest.fixture(scope="module")
def changed_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The installed package, copied, with one byte of one module changed."""
    copy = tmp_path_factory.mktemp("pkg") / "appliance"
    shutil.copytree(manifest.package_dir(), copy,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    target = copy / "x509" / "algorithms.py"
    data = bytearray(target.read_bytes())
    data[-2] ^= 0x01
    target.write_bytes(bytes(data))
    return copy


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[Server]:
    with serving(data_dir, workers=1) as srv:
        yield srv


def _runs(server: Server) -> list[dict[str, object]]:
    with server.db() as conn:
        return [dict(r) for r in conn.execute(
            "SELECT node_id, trigger, passed, results_json, manifest_sha256 FROM selftest_runs "
            "ORDER BY id")]


def test_a_sealed_fips_node_passes_its_power_on_tests_and_signs(server: Server) -> None:
    runs = _runs(server)
    assert runs and all(r["passed"] and r["trigger"] == "power-on" for r in runs)
    names = {t["name"] for t in json.loads(str(runs[-1]["results_json"]))}
    assert {"kat-hmac-sha256", "kat-aes256-gcm-encrypt", "rng-repetition-count",
            "rng-adaptive-proportion", "token-sign-verify", "software-integrity"} <= names
    assert runs[-1]["manifest_sha256"] == manifest.compute().sha256
    passed = server.events("fips.selftest.passed")
    assert passed and passed[-1]["details"]["tests"]["software-integrity"] == "pass"
    csr = make_csr(server.data_dir / "work", "DNS:fips.test", cn="fips.test")
    r = server.sign(csr, server.token("fips.test"))
    assert r.status_code == 201, r.text
    ready = server.get("/1.0/ready").json()
    assert ready["checks"]["fips"] == "ok"
    assert server.get("/1.0/health").json() == {"status": "ok"}
    out = run_cli("--dir", str(server.data_dir), "fips", "selftest", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["passed"] and doc["differences"] == []
    assert _runs(server)[-1]["trigger"] == "on-demand"


def test_a_changed_byte_fails_fips_selftest_and_the_running_node_answers_503(
        server: Server, changed_copy: Path) -> None:
    out = run_cli("--dir", str(server.data_dir), "fips", "selftest",
                  env={PACKAGE_DIR_ENV: str(changed_copy)})
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAIL  software-integrity" in out.stdout
    assert "changed: x509/algorithms.py" in out.stdout
    failed = server.events("fips.selftest.failed")[-1]
    assert failed["details"]["trigger"] == "on-demand"
    assert failed["details"]["differences"] == ["changed: x509/algorithms.py"]
    assert failed["details"]["tests"]["software-integrity"].startswith("fail:")
    assert _runs(server)[-1]["passed"] == 0

    deadline = time.monotonic() + 15  # the worker's database probe runs every 2 s
    health = server.get("/1.0/health")
    while health.status_code != 503 and time.monotonic() < deadline:
        time.sleep(0.2)
        health = server.get("/1.0/health")
    assert health.status_code == 503, health.text
    assert health.json()["status"] == "fips_error"
    assert health.json()["failed"] == ["software-integrity"]

    csr = make_csr(server.data_dir / "work", "DNS:fips2.test", cn="fips2.test")
    r = server.sign(csr, server.token("fips2.test"))
    assert (r.status_code, r.json()["error"]) == (503, "fips_error"), r.text
    assert "software-integrity" in r.json()["message"]
    assert r.headers.get("Retry-After")
    acme = server.get("/acme/acme/directory")
    assert acme.status_code == 503
    assert acme.headers["Content-Type"].startswith("application/problem+json")
    assert acme.json()["type"] == "urn:ietf:params:acme:error:serverInternal"
    assert "FIPS error state" in acme.json()["detail"]
    assert server.get("/1.0/roots").status_code == 503
    ready = server.get("/1.0/ready")
    assert ready.status_code == 503
    assert ready.json()["checks"]["fips"].startswith("fips_error")
    # the plain-HTTP listener: OCSP answers tryLater with 503, CRLs and /health 503
    deadline = time.monotonic() + 10
    public = requests.get(server.http + "/health", timeout=10)
    while public.status_code != 503 and time.monotonic() < deadline:
        time.sleep(0.2)
        public = requests.get(server.http + "/health", timeout=10)
    assert (public.status_code, public.text) == (503, "fips_error\n")
    ocsp = requests.get(server.http + "/ocsp/MAA=", timeout=10)
    assert (ocsp.status_code, ocsp.content) == (503, bytes.fromhex("30030a0103"))
    assert requests.get(server.http + "/crl/root.crl", timeout=10).status_code == 503
    deadline = time.monotonic() + 10
    while not server.events("fips.error_state.entered") and time.monotonic() < deadline:
        time.sleep(0.2)
    entered = server.events("fips.error_state.entered")
    assert entered and entered[-1]["details"]["failed"] == ["software-integrity"]


def test_a_start_against_a_changed_copy_is_refused_and_audited(
        server: Server, changed_copy: Path) -> None:
    server.stop()
    before = len(server.events("fips.selftest.failed"))
    out = run_cli("--dir", str(server.data_dir), "serve",
                  env={PACKAGE_DIR_ENV: str(changed_copy)})
    assert out.returncode != 0
    assert "error [fips_error]: FIPS power-on self-tests failed" in out.stderr
    assert "software-integrity" in out.stderr
    failed = server.events("fips.selftest.failed")
    assert len(failed) == before + 1
    assert failed[-1]["details"]["trigger"] == "power-on"
    # a key-using command is refused the same way, and makes no key
    secrets = server.data_dir / "secrets"
    officers = [f"--officer=officer-{i}={secrets / f'officer-{i}.secret'}" for i in (1, 2)]
    out = run_cli("--dir", str(server.data_dir), "hsm", "genkey", "--label", "fips-refused",
                  "--type", "ec-p256", *officers, env={PACKAGE_DIR_ENV: str(changed_copy)})
    assert out.returncode == 1 and "error [fips_error]" in out.stderr, out.stderr
    listed = run_cli("--dir", str(server.data_dir), "hsm", "keys", "--json", check=True)
    assert "fips-refused" not in listed.stdout


def test_without_a_seal_the_integrity_test_says_to_seal(server: Server) -> None:
    with server.db(readonly=False) as conn:
        conn.execute("DELETE FROM installation WHERE key = 'manifest'")
    out = run_cli("--dir", str(server.data_dir), "fips", "selftest")
    assert out.returncode == 1
    assert "run appliance fips seal" in out.stdout
