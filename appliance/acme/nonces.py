"""Replay nonces valid across gunicorn workers and nodes, without a database write to make one.

A nonce is ``time || random || MAC(time || random)`` under a key kept in the shared
database, so any worker of any node can tell a nonce it did not make from a forged one;
redeeming it inserts it into ``acme_used_nonces`` whose primary key refuses a second use
everywhere. Nonces older than the configured lifetime are refused, which bounds that table.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import ColumnElement, Connection, Table, delete, insert, select
from sqlalchemy.exc import IntegrityError

from appliance import durations
from appliance.audit.log import Actor
from appliance.runtime import Appliance
from appliance.store.models import AcmeSecret, AcmeUsedNonce

KEY_NAME = "nonce-mac"
_RAW_LEN = 8 + 12 + 16
_USED = cast(Table, AcmeUsedNonce.__table__)
_INSERT_USED = insert(_USED)  # built once; values bound per call


def gone_by(now: datetime) -> ColumnElement[bool]:
    """Redeemed nonces that can no longer come back (past their lifetime, with the minute
    of clock difference ``redeem`` allows)."""
    return _USED.c.expires_at < now - timedelta(seconds=60)


def prune_used(db: Connection, now: datetime) -> int:
    return int(db.execute(delete(_USED).where(gone_by(now))).rowcount)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Nonces:
    def __init__(self, app: Appliance) -> None:
        self.app = app
        self.lifetime = durations.parse(app.settings.config.acme.nonce_lifetime)
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def _mac_key(self) -> bytes:
        if self._key is None:
            with self._lock:
                if self._key is None:
                    self._key = self._load_or_create()
        return self._key

    def _load_or_create(self) -> bytes:
        with self.app.db.sessions() as db:
            value = db.scalar(select(AcmeSecret.value).where(AcmeSecret.name == KEY_NAME))
        if value:
            return bytes(value)
        try:
            with self.app.db.transaction() as db:
                db.add(AcmeSecret(name=KEY_NAME, value=os.urandom(32)))
                db.flush()  # a second maker fails here, before anything is audited
                self.app.audit_log().append(
                    db, "acme.nonce_key.created", Actor("appliance:acme", "system"),
                    object_ids={"secret": KEY_NAME},
                    details={"bytes": 32, "purpose": "MAC of ACME replay nonces"})
        except IntegrityError:
            pass  # another worker made it first: use theirs
        with self.app.db.sessions() as db:
            value = db.scalar(select(AcmeSecret.value).where(AcmeSecret.name == KEY_NAME))
        assert value
        return bytes(value)

    def new(self) -> str:
        body = int(time.time()).to_bytes(8, "big") + secrets.token_bytes(12)
        return _b64(body + hmac.new(self._mac_key(), body, hashlib.sha256).digest()[:16])

    def redeem(self, nonce: str, also: Callable[[Connection], None] | None = None) -> bool:
        """True once for a nonce this CA made within its lifetime; False otherwise.

        ``also`` runs in the same transaction after the nonce is spent (the request's
        account read): one transaction per request instead of two. If it raises, the
        nonce is not spent; it is not called for a nonce that is refused."""
        if not isinstance(nonce, str) or not 40 <= len(nonce) <= 64:
            return False
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except ValueError:
            return False
        if len(raw) != _RAW_LEN or _b64(raw) != nonce:
            return False
        body, mac = raw[:20], raw[20:]
        if not hmac.compare_digest(mac, hmac.new(self._mac_key(), body,
                                                 hashlib.sha256).digest()[:16]):
            return False
        made = int.from_bytes(body[:8], "big")
        now = time.time()
        if not made - 60 <= now <= made + self.lifetime:
            return False
        try:
            # Core, not the ORM: this runs on every ACME request. The primary key is what
            # makes a nonce single-use across workers and nodes.
            # Not durable: a power failure may forget the last moments of redeemed nonces
            # (each only lets its own signed request be sent again); an fsync per ACME
            # request is not worth that.
            with self.app.db.write(durable=False) as db:
                db.execute(_INSERT_USED, {"nonce": nonce, "expires_at": datetime.fromtimestamp(
                    made + self.lifetime, UTC)})
                if secrets.randbelow(512) == 0:  # now and then, forget what cannot come back
                    prune_used(db, datetime.fromtimestamp(now, UTC))
                if also is not None:
                    also(db)
        except IntegrityError:
            return False
        return True
