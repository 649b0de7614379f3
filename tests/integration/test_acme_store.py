"""ACME state on SQLite and PostgreSQL: nonces redeemed once across processes' views of the
database, the shared nonce key, EAB keys sealed at rest, one account per key."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError

from appliance.acme import eab
from appliance.acme.nonces import Nonces
from appliance.acme.problems import AcmeProblem
from appliance.audit.log import AuditLog
from appliance.config import ApplianceConfig
from appliance.store.db import Database
from appliance.store.models import (
    AcmeAccount,
    AcmeEabKey,
    AcmeSecret,
    AuditEvent,
    Authority,
    Provisioner,
)


@dataclass
class _App:
    """The two things Nonces reads from the appliance: its database and its settings."""

    db: Database
    settings: SimpleNamespace

    def audit_log(self) -> AuditLog:
        return AuditLog("node-1")


def _app(db: Database, tmp_path: Path) -> _App:
    return _App(db, SimpleNamespace(config=ApplianceConfig(), base_dir=tmp_path))


def test_nonces_single_use_across_instances(db: Database, tmp_path: Path) -> None:
    one, two = Nonces(_app(db, tmp_path)), Nonces(_app(db, tmp_path))  # type: ignore[arg-type]
    n = one.new()
    assert two.redeem(n)  # another worker made it: still good, once
    assert not one.redeem(n) and not two.redeem(n)
    with db.sessions() as s:
        assert len(s.scalars(select(AcmeSecret)).all()) == 1  # one shared key
        made = s.scalars(select(AuditEvent).where(
            AuditEvent.event_type == "acme.nonce_key.created")).all()
    assert len(made) == 1 and json.loads(made[0].object_ids) == {"secret": "nonce-mac"}
    tampered = n[:-2] + ("AA" if n[-2:] != "AA" else "BB")
    assert not one.redeem(tampered)
    assert not one.redeem("x" * 48) and not one.redeem("")


def test_nonce_and_the_reads_with_it_are_one_transaction(db: Database, tmp_path: Path) -> None:
    """A signed request reads its provisioner and account in the transaction that spends
    its nonce: a refusal there spends nothing, and a refused nonce reads nothing."""
    nonces = Nonces(_app(db, tmp_path))  # type: ignore[arg-type]
    n = nonces.new()
    seen: list[str] = []

    def refuse(conn: Connection) -> None:
        seen.append(conn.execute(select(AcmeSecret.name)).scalar_one())  # same transaction
        raise AcmeProblem("unauthorized", "provisioner disabled")

    with pytest.raises(AcmeProblem):
        nonces.redeem(n, also=refuse)
    assert seen == ["nonce-mac"]
    assert nonces.redeem(n, also=lambda conn: seen.append("read"))  # not spent by the refusal
    assert seen == ["nonce-mac", "read"]
    assert not nonces.redeem(n, also=lambda conn: seen.append("replay"))  # spent now
    assert seen == ["nonce-mac", "read"]


def test_eab_sealing_and_one_account_per_key(db: Database, tmp_path: Path) -> None:
    sealed = eab.seal(tmp_path, "kid-1", b"k" * 32)
    assert b"k" * 32 not in sealed
    assert eab.unseal(tmp_path, "kid-1", sealed) == b"k" * 32
    with pytest.raises(AcmeProblem):
        eab.unseal(tmp_path, "kid-2", sealed)  # bound to its key id
    assert (tmp_path / "secrets" / eab.WRAP_KEY_NAME).stat().st_mode & 0o077 == 0
    now = datetime.now(UTC)
    prov_id = _provisioner(db, now)
    with db.transaction() as s:
        s.add(AcmeEabKey(key_id="kid-1", provisioner_id=prov_id, reference="r",
                         hmac_sealed=sealed, created_at=now))
        s.add(AcmeAccount(id="a1", provisioner_id=prov_id, thumbprint="tp", jwk="{}",
                          status="valid", contact="[]", created_at=now))
    with pytest.raises(IntegrityError), db.transaction() as s:
        s.add(AcmeAccount(id="a2", provisioner_id=prov_id, thumbprint="tp", jwk="{}",
                          status="valid", contact="[]", created_at=now))


def _provisioner(db: Database, now: datetime) -> int:
    with db.transaction() as s:
        ca = Authority(name="ca", kind="root", subject="CN=ca", certificate_der=b"-",
                       fingerprint_sha256="0" * 64, not_before=now, not_after=now,
                       status="active", created_at=now)
        s.add(ca)
        s.flush()
        prov = Provisioner(name="acme", type="acme", config="{}", credential="",
                           authority_id=ca.id, created_at=now, updated_at=now)
        s.add(prov)
        s.flush()
        return prov.id
