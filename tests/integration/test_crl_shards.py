"""Sharded CRLs (issue 17): serial mod N picks the shard, the CRL DP names it, each shard
is a complete CRL of its own that OpenSSL uses to reject a revoked certificate; CRL
numbers stay strictly increasing when several publishers race (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select, update

from appliance import config, lint
from appliance.audit.log import Actor
from appliance.revocation import crl
from appliance.runtime import Appliance
from appliance.store.models import Authority, Certificate, Crl
from tests.conftest import run_cli
from tests.service_helpers import Server, configure, make_csr, serving

SHARDS = 4
REPO = Path(__file__).resolve().parents[2]
ACTOR = Actor("test", "operator")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("shards") / "data"
    run_cli("quickstart", "--dir", str(d), check=True)
    configure(d, "revocation", crl_shards=SHARDS)
    _private_module(d)
    with serving(d) as s:
        yield s


def _private_module(data: Path) -> None:
    """The data directory's profile names a private copy of the SoftHSM module: the tests
    here open this data directory's token in the pytest process itself (``_app``), and a
    PKCS#11 module is initialised once per process with the store its SOFTHSM2_CONF names
    then. Under its own path it is a library instance of its own, so the session's test
    token (the same module file under its usual path) stays visible to the other modules
    that run in this process afterwards."""
    profile = data / "hsm.yaml"
    text = profile.read_text()
    module = next(line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("module:"))
    copy = data / "softhsm" / "libsofthsm2-private.so"
    shutil.copyfile(module, copy)
    profile.write_text(text.replace(f"module: {module}", f"module: {copy}", 1))


@pytest.fixture(scope="module")
def leaves(server: Server, tmp_path_factory: pytest.TempPathFactory) -> list[x509.Certificate]:
    """Enough certificates that (almost surely) every shard holds two or more."""
    tmp = tmp_path_factory.mktemp("leaves")
    out = []
    for i in range(16):
        name = f"s{i}.example.com"
        resp = server.sign(make_csr(tmp, f"DNS:{name}", cn=name), server.token(name))
        assert resp.status_code == 201, resp.text
        out.append(x509.load_pem_x509_certificate(resp.json()["crt"].encode()))
    return out


def _app(server: Server, monkeypatch: pytest.MonkeyPatch) -> Appliance:
    monkeypatch.delenv("SOFTHSM2_CONF", raising=False)  # the profile names its own store
    return Appliance(config.load(server.data_dir / "appliance.yaml"))


def _dp(cert: x509.Certificate) -> str:
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    names = [n.value for p in points for n in p.full_name or []]
    assert len(names) == 1
    return str(names[0])


def _idp(c: x509.CertificateRevocationList) -> list[str]:
    idp = c.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert idp.critical
    return [str(n.value) for n in idp.value.full_name or []]


def _fetch(url: str) -> x509.CertificateRevocationList:
    resp = requests.get(url, timeout=10)
    assert resp.status_code == 200, url
    assert resp.headers["Content-Type"] == "application/pkix-crl"
    return x509.load_der_x509_crl(resp.content)


def _verify(server: Server, tmp: Path, leaf: x509.Certificate,
            shard_crl: x509.CertificateRevocationList) -> subprocess.CompletedProcess[str]:
    root = server.get("/1.0/roots").json()["crts"][0]
    (tmp / "root.pem").write_text(root)
    (tmp / "issuing.pem").write_text(requests.get(f"{server.http}/ca/issuing.pem",
                                                  timeout=10).text)
    (tmp / "crl.pem").write_bytes(shard_crl.public_bytes(serialization.Encoding.PEM))
    (tmp / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    return subprocess.run(
        ["openssl", "verify", "-crl_check", "-CAfile", str(tmp / "root.pem"), "-untrusted",
         str(tmp / "issuing.pem"), "-CRLfile", str(tmp / "crl.pem"), str(tmp / "leaf.pem")],
        capture_output=True, text=True, check=False)


def _numbers(server: Server) -> dict[int | None, int]:
    with server.db() as conn:
        rows = conn.execute(
            "SELECT c.shard, MAX(c.number) FROM crls c JOIN authorities a "
            "ON a.id = c.authority_id WHERE a.name = 'issuing' GROUP BY c.shard").fetchall()
    return {r[0]: r[1] for r in rows}


def test_each_crl_dp_names_its_shard_and_the_row_records_it(
        server: Server, leaves: list[x509.Certificate]) -> None:
    rows = server.certificate_rows()
    for cert in leaves:
        shard = cert.serial_number % SHARDS
        assert _dp(cert) == f"{server.http}/crl/issuing/{shard}.crl"
        assert rows[f"{cert.serial_number:x}"]["crl_shard"] == shard
    assert len({c.serial_number % SHARDS for c in leaves}) >= 3


def test_missing_shards_are_due_then_published_with_their_own_idp_and_number(
        server: Server, leaves: list[x509.Certificate], monkeypatch: pytest.MonkeyPatch) -> None:
    app = _app(server, monkeypatch)
    due = crl.due(app)
    assert due.get("issuing", [])[-SHARDS:] == list(range(SHARDS))  # never published
    out = server.cli("crl", "publish", "issuing", "--json").stdout
    assert '"shard": 3' in out
    assert "issuing" not in crl.due(app)  # the root's own CRL is another CA's business
    numbers = _numbers(server)
    assert set(numbers) == {None, *range(SHARDS)}
    assert len(set(numbers.values())) == len(numbers)  # one sequence shared by the shards
    for shard in range(SHARDS):
        url = f"{server.http}/crl/issuing/{shard}.crl"
        got = _fetch(url)
        assert _idp(got) == [url]
        assert got.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == \
            numbers[shard]
        lint.require_clean(lint.lint_crl(got.public_bytes(serialization.Encoding.DER)),
                           f"shard {shard}")
    unsharded = _fetch(f"{server.http}/crl/issuing.crl")
    assert _idp(unsharded) == [f"{server.http}/crl/issuing.crl"]
    assert unsharded.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == \
        numbers[None]
    events = [e for e in server.events("crl.signed") if e["details"].get("shard") == 2]
    assert events and events[-1]["details"]["url"] == f"{server.http}/crl/issuing/2.crl"


def test_a_revoked_certificate_is_rejected_with_its_shard_from_its_crl_dp(
        server: Server, leaves: list[x509.Certificate], tmp_path: Path) -> None:
    bad = leaves[0]
    good = next(c for c in leaves if c.serial_number % SHARDS != bad.serial_number % SHARDS)
    before = _numbers(server)
    server.cli("revoke", f"{bad.serial_number:x}", "--reason", "keyCompromise")
    after = _numbers(server)
    mine = bad.serial_number % SHARDS
    # the revocation republished only its own shard
    assert {k for k in after if after[k] != before[k]} == {mine}
    shard_crl = _fetch(_dp(bad))
    assert shard_crl.get_revoked_certificate_by_serial_number(bad.serial_number) is not None
    check = _verify(server, tmp_path, bad, shard_crl)
    assert check.returncode != 0 and "certificate revoked" in check.stdout + check.stderr
    ok = _verify(server, tmp_path, good, _fetch(_dp(good)))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # no other CRL lists it: not the unsharded one, not another shard
    for url in [f"{server.http}/crl/issuing.crl",
                *(f"{server.http}/crl/issuing/{k}.crl" for k in range(SHARDS) if k != mine)]:
        assert _fetch(url).get_revoked_certificate_by_serial_number(bad.serial_number) is None


def test_the_unsharded_crl_keeps_the_certificates_issued_before_sharding(
        server: Server, leaves: list[x509.Certificate], monkeypatch: pytest.MonkeyPatch) -> None:
    app = _app(server, monkeypatch)
    old = leaves[1]
    with app.db.transaction() as db:  # as if issued before crl_shards was set
        db.execute(update(Certificate).where(
            Certificate.serial_hex == f"{old.serial_number:x}").values(crl_shard=None))
    server.cli("revoke", f"{old.serial_number:x}")
    unsharded = _fetch(f"{server.http}/crl/issuing.crl")
    assert unsharded.get_revoked_certificate_by_serial_number(old.serial_number) is not None
    assert _idp(unsharded) == [f"{server.http}/crl/issuing.crl"]
    for k in range(SHARDS):
        assert _fetch(f"{server.http}/crl/issuing/{k}.crl") \
            .get_revoked_certificate_by_serial_number(old.serial_number) is None


@pytest.mark.parametrize("path", [
    "/crl/issuing/4.crl",  # a shard that was never published
    "/crl/issuing/4096.crl", "/crl/issuing/99999.crl", "/crl/issuing/01.crl",
    "/crl/issuing/-1.crl", "/crl/issuing/x.crl", "/crl/issuing/1.crl/", "/crl/issuing/1",
    "/crl/issuing//1.crl", "/crl/nope/1.crl", "/crl/issuing/1/2.crl", "/crl/root/0.crl",
])
def test_bad_shard_paths_are_404(server: Server, leaves: list[x509.Certificate],
                                 path: str) -> None:
    assert requests.get(f"{server.http}{path}", timeout=10).status_code == 404


def test_republish_due_publishes_what_is_due_and_nothing_else(
        server: Server, leaves: list[x509.Certificate], monkeypatch: pytest.MonkeyPatch) -> None:
    app = _app(server, monkeypatch)
    server.cli("crl", "publish")
    # the revocations of the tests above are older than these CRLs by now
    time.sleep(1.1)
    assert crl.due(app, settle_seconds=1) == {}
    assert crl.republish_due(app, ACTOR, settle_seconds=1) == []
    # a revocation whose own republication never happened (a node died right after it)
    victim = next(c for c in leaves[2:] if c.serial_number % SHARDS == 3)
    with app.db.transaction() as db:
        db.execute(update(Certificate).where(
            Certificate.serial_hex == f"{victim.serial_number:x}").values(
            status="revoked", revoked_at=datetime.now(UTC).replace(microsecond=0),
            revocation_reason="superseded"))
    assert crl.due(app, settle_seconds=0) == {"issuing": [3]}
    # a CRL made in the revocation's own second (or just after) is not trusted to have it
    assert 3 in crl.due(app)["issuing"]
    time.sleep(1.1)
    done = crl.republish_due(app, ACTOR, settle_seconds=1)
    assert [(p.authority, p.shard) for p in done] == [("issuing", 3)]
    got = _fetch(f"{server.http}/crl/issuing/3.crl")
    assert got.get_revoked_certificate_by_serial_number(victim.serial_number) is not None
    assert crl.republish_due(app, ACTOR, settle_seconds=1) == []
    # on schedule: with max age 0 everything is due, the root's CRL too
    everything = crl.republish_due(app, ACTOR, max_age_seconds=0)
    assert sorted((p.authority, -1 if p.shard is None else p.shard) for p in everything) == \
        [("issuing", -1), *(("issuing", k) for k in range(SHARDS)), ("root", -1)]
    # everything was just published: only scopes with a revocation of the last few
    # seconds may still be due (SETTLE_SECONDS), never the root's (it has none)
    out = server.cli("crl", "publish", "--due", "--json").stdout
    assert {(p["authority"], p["shard"]) for p in json.loads(out)} <= {
        ("issuing", k) for k in (None, *range(SHARDS))}
    bad = server.cli("crl", "publish", "root", "--shard", "1", check=False)
    assert bad.returncode != 0 and "root" in bad.stdout + bad.stderr
    bad = server.cli("crl", "publish", "--shard", "1", check=False)
    assert bad.returncode == 2 and "--shard" in bad.stderr


def test_a_renewed_certificate_names_its_own_shard(server: Server, tmp_path: Path) -> None:
    """Renewal (mTLS, ``appliance renew``) goes through the same pipeline."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = "renew.example.com"
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
           .sign(key, hashes.SHA256()))
    resp = server.sign(csr.public_bytes(serialization.Encoding.PEM).decode(), server.token(name))
    assert resp.status_code == 201, resp.text
    crt, pem_key, out = tmp_path / "c.crt", tmp_path / "c.key", tmp_path / "new.crt"
    crt.write_text("".join(resp.json()["certChain"][:-1]))
    pem_key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    run_cli("renew", str(crt), str(pem_key), "--ca-url", server.api, "--root",
            str(server.roots), "--out", str(out), check=True)
    new = x509.load_pem_x509_certificates(out.read_bytes())[0]
    shard = new.serial_number % SHARDS
    assert _dp(new) == f"{server.http}/crl/issuing/{shard}.crl"
    assert server.certificate_rows()[f"{new.serial_number:x}"]["crl_shard"] == shard


# -- concurrent publishing ------------------------------------------------------------


def _race(apps: list[Appliance], rounds: int) -> list[int]:
    """Every app publishes ``issuing`` (alternately one shard and all scopes) ``rounds``
    times, all starting together; the numbers they were given."""
    barrier = threading.Barrier(len(apps))
    got: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int, app: Appliance) -> None:
        try:
            barrier.wait()
            for r in range(rounds):
                done = ([crl.publish(app, "issuing", ACTOR, shard=(i + r) % SHARDS)]
                        if (i + r) % 2 else crl.publish_scopes(app, "issuing", ACTOR))
                with lock:
                    got.extend(p.number for p in done)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in enumerate(apps)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return got


def _check_race(app: Appliance, got: list[int]) -> None:
    assert len(got) == len(set(got))
    with app.db.sessions() as db:
        ca_id = db.scalar(select(Authority.id).where(Authority.name == "issuing"))
        stored = list(db.execute(select(Crl.id, Crl.number, Crl.shard)
                                 .where(Crl.authority_id == ca_id).order_by(Crl.id)))
    numbers = [n for _, n, _ in stored]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)  # in commit order
    # and without a gap: a number is stored only right after the one before it
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert set(got) <= set(numbers)


def test_concurrent_publishers_get_distinct_increasing_numbers_on_sqlite(
        server: Server, leaves: list[x509.Certificate], monkeypatch: pytest.MonkeyPatch) -> None:
    apps = [_app(server, monkeypatch) for _ in range(3)]
    got = _race(apps, 3)
    _check_race(apps[0], got)


def test_large_shards_are_sample_linted_and_complete(
        server: Server, leaves: list[x509.Certificate], monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards above crl.SAMPLE entries: the first linted with the full sample, the next
    with the small one (crl.SHARD_SAMPLE); every entry is on its shard, none elsewhere."""
    per_shard = crl.SAMPLE + 300
    now = datetime.now(UTC).replace(microsecond=0)
    with server.db(readonly=False) as conn:
        (ca_id,) = conn.execute("SELECT id FROM authorities WHERE name = 'issuing'").fetchone()
        later, stamp = (now.replace(year=now.year + 1)).isoformat(sep=" "), now.isoformat(sep=" ")
        conn.executemany(
            "INSERT INTO certificates (serial_hex, authority_id, provisioner_name, requester, "
            "template, status, subject, sans, not_before, not_after, reserved_at, revoked_at, "
            "revocation_reason, request_context, crl_shard) "
            "VALUES (?, ?, 'bulk', 'bulk', 'tls-server', 'revoked', '', '[]', ?, ?, ?, ?, ?, "
            "'{}', ?)",
            [(f"{(7 << 120) + i:x}", ca_id, stamp, later, stamp, stamp,
              ("keyCompromise", "superseded")[i % 2], ((7 << 120) + i) % SHARDS)
             for i in range(SHARDS * per_shard)])
    app = _app(server, monkeypatch)
    done = crl.publish_scopes(app, "issuing", ACTOR)
    assert [p.shard for p in done] == [None, *range(SHARDS)]
    for p in done[1:]:
        assert p.entries >= per_shard
        got = _fetch(f"{server.http}/crl/issuing/{p.shard}.crl")
        assert len(got) == p.entries
        serials = {e.serial_number for e in got}
        assert all(s % SHARDS == p.shard for s in serials)
        lint.require_clean(lint.lint_crl(got.public_bytes(serialization.Encoding.DER)),
                           f"shard {p.shard}")


def _publisher_process(data_dir: str, index: int, rounds: int, start_at: float) -> None:
    """Run in a child process: wait for the common start, publish, print the numbers."""
    app = Appliance(config.load(Path(data_dir) / "appliance.yaml"))
    app.signing_pool()  # log in before the start, so the race is the publishing
    time.sleep(max(0.0, start_at - time.time()))
    got = []
    for r in range(rounds):
        done = ([crl.publish(app, "issuing", ACTOR, shard=(index + r) % SHARDS)]
                if (index + r) % 2 else crl.publish_scopes(app, "issuing", ACTOR))
        got += [p.number for p in done]
    print(json.dumps(got))


def test_concurrent_publishers_get_distinct_increasing_numbers_on_postgresql(
        tmp_path: Path, pg_available: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three processes (three nodes' worth of HSM sessions and database connections)."""
    from tests.conftest import create_pg_database, drop_pg_database, require_pg

    require_pg(pg_available)
    url = create_pg_database()
    try:
        monkeypatch.setenv("APPLIANCE_DATABASE_URL", url)
        d = tmp_path / "data"
        run_cli("quickstart", "--dir", str(d), check=True)
        configure(d, "revocation", crl_shards=SHARDS)
        _private_module(d)  # _check_race below opens this data directory in this process
        env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
        start_at = time.time() + 6
        code = ("import sys; import tests.integration.test_crl_shards as t; "
                "t._publisher_process(sys.argv[1], int(sys.argv[2]), 3, float(sys.argv[3]))")
        procs = [subprocess.Popen([sys.executable, "-c", code, str(d), str(i), str(start_at)],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(3)]
        got: list[int] = []
        for proc in procs:
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err[-4000:]
            got += json.loads(out.strip().splitlines()[-1])
        assert len(got) == 11 + 7 + 11  # rounds of all scopes (5 CRLs) and of one shard
        monkeypatch.delenv("SOFTHSM2_CONF", raising=False)
        _check_race(Appliance(config.load(d / "appliance.yaml")), got)
        run_cli("--dir", str(d), "audit", "verify", check=True)
    finally:
        drop_pg_database(url)
