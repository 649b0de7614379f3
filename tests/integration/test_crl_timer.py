"""`appliance serve`'s CRL timer: missing shards published without anyone asking, and a
revocation whose own republication never happened (here: the status written by SQL, as
a revoking process that died after its commit leaves it) on its shard's CRL a tick
later. Real server, real token; the CRL fetched from the public listener."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import requests
from cryptography import x509

from tests.conftest import run_cli
from tests.service_helpers import configure, load_pem, make_csr, serving

SHARDS = 2


def _crls(server_db: object) -> list[tuple[int | None, int, str]]:
    rows = server_db.execute(  # type: ignore[attr-defined]
        "SELECT c.shard, c.number, e.actor FROM crls c JOIN audit_events e "
        "ON e.event_type = 'crl.signed' AND json_extract(e.object_ids, '$.crl_number') = c.number "
        "ORDER BY c.number").fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def test_the_timer_publishes_what_is_due_and_nothing_else(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_cli("quickstart", "--dir", str(data), check=True)
    configure(data, "revocation", crl_shards=SHARDS, crl_check_seconds=1)
    with serving(data) as server:
        name = "timer.example.com"
        r = server.sign(make_csr(tmp_path, f"DNS:{name}", cn=name), server.token(name))
        assert r.status_code == 201, r.text
        leaf = load_pem(r.json()["crt"])
        shard = leaf.serial_number % SHARDS
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with server.db() as db:
                shards = {s for s, _n, actor in _crls(db) if actor == "appliance:crl-timer"}
            if shards >= set(range(SHARDS)):
                break
            time.sleep(0.5)
        assert shards >= set(range(SHARDS)), shards

        with server.db() as db:
            settled = len(_crls(db))
        time.sleep(3)  # three more ticks: nothing is due any more
        with server.db() as db:
            assert len(_crls(db)) == settled

        # Revoked by SQL: no republication ran for it.
        with server.db(readonly=False) as db:
            db.execute("UPDATE certificates SET status = 'revoked', revoked_at = ?, "
                       "revocation_reason = 'keyCompromise' WHERE serial_hex = ?",
                       (datetime.now(UTC).isoformat(), f"{leaf.serial_number:x}"))
        url = f"{server.http}/crl/issuing/{shard}.crl"
        deadline = time.monotonic() + 30  # revocation.crl SETTLE_SECONDS is 10
        found = None
        while time.monotonic() < deadline:
            crl = x509.load_der_x509_crl(requests.get(url, timeout=10).content)
            found = crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
            if found is not None:
                break
            time.sleep(0.5)
        assert found is not None, "the timer did not put the revocation on its shard"
        with server.db() as db:
            assert _crls(db)[-1][2] == "appliance:crl-timer"
