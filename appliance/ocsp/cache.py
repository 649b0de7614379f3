"""Where the responder finds pre-signed responses, and why it never serves a stale "good".

Layers, fastest first: an in-process LRU dict, then Redis (``ocsp.redis_url``,
optional), then the database row -- read together with the certificate's
current status, which is the truth.

**The status store wins.** Every cached entry carries the status it was signed
with, the *revocation epoch* of its slot when it was read from the database,
and the time of that read. A "revoked" entry is final (revocation is never
undone: certificateHold is refused) and is served until its nextUpdate. A
"good" entry is served only while

1. its slot's epoch still equals the current one, and
2. it was read from the database less than ``ocsp.revalidate_seconds`` ago;

otherwise it goes back to the database, where a response whose status no longer
matches ``certificates.status`` is never served (``tryLater`` until it is
re-signed). The revoke path commits, then calls :func:`revocation_happened`,
which bumps the epoch of the certificate's slot (1 of 64, by serial) and drops
the Redis entry; so from the moment it returns, every worker of every process
re-reads that slot's "good" answers. The epoch is read *before* the database is,
so a fill racing with a revocation is stored with the old epoch and re-read at
once. If the revoking process dies between its commit and the bump, the
revalidation interval bounds how long a cached "good" can outlive the commit.

Where the epoch lives (read on every request that would serve a cached "good"):

* SQLite (one node by nature): 64 counters in a small file beside the database,
  memory-mapped by every process; a read is one 8-byte load (~0.2 µs), a bump an
  ``flock``-ed increment.
* Another database with Redis: 64 Redis counters (one GET per such request).
* Another database without Redis: no epoch; a cached "good" is always re-read
  from the database (correct across nodes, one query per request).
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import sqlite3
import struct
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any, Protocol

from appliance import durations, logs, rfc3339
from appliance.runtime import Appliance

log = logs.get("ocsp.cache")

SLOTS = 64
_EPOCH_BYTES = SLOTS * 8
REDIS_TIMEOUT = 0.25
REDIS_BACKOFF = 5.0
_PACK = struct.Struct("!BBIddQdII")
_PACK_VERSION = 1


def slot_of(serial_hex: str) -> int:
    """The epoch slot of a serial (serials are random: the low bits spread evenly)."""
    return int(serial_hex[-4:] or "0", 16) % SLOTS


# -- revocation epochs ----------------------------------------------------------------------


class Epoch(Protocol):
    def current(self, slot: int) -> int | None: ...

    def bump(self, slot: int | None = None) -> None: ...


class NoEpoch:
    """No shared epoch: every cached "good" is re-read from the database."""

    def current(self, slot: int) -> int | None:
        return None

    def bump(self, slot: int | None = None) -> None:
        return None


class FileEpoch:
    """64 little-endian counters in a file, memory-mapped (shared by every local process)."""

    def __init__(self, path: str) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size < _EPOCH_BYTES:
                    # Counters start at the clock, never at 0: a re-created file can never
                    # repeat an epoch that a cache entry (in Redis, say) still carries.
                    os.ftruncate(fd, _EPOCH_BYTES)
                    os.pwrite(fd, struct.pack("<Q", time.time_ns()) * SLOTS, 0)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            self._map = mmap.mmap(fd, _EPOCH_BYTES, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._unpack = struct.Struct("<Q").unpack_from

    def current(self, slot: int) -> int | None:
        value: int = self._unpack(self._map, slot * 8)[0]
        return value

    def bump(self, slot: int | None = None) -> None:
        fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                for s in range(SLOTS) if slot is None else (slot,):
                    struct.pack_into("<Q", self._map, s * 8, self._unpack(self._map, s * 8)[0] + 1)
                self._map.flush()
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


class RedisEpoch:
    """64 Redis counters: shared by every node that uses the same Redis and prefix."""

    def __init__(self, redis: RedisLayer) -> None:
        self.redis = redis

    def current(self, slot: int) -> int | None:
        return self.redis.epoch(slot)

    def bump(self, slot: int | None = None) -> None:
        self.redis.bump_epoch(slot)


def sqlite_path(app: Appliance) -> str | None:
    url = app.db.engine.url
    if app.db.dialect != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return str(url.database)


_epochs: dict[str, FileEpoch] = {}
_epochs_lock = threading.Lock()


def file_epoch(app: Appliance) -> FileEpoch | None:
    path = sqlite_path(app)
    if path is None:
        return None
    epoch_path = path + "-ocsp-epoch"
    with _epochs_lock:
        found = _epochs.get(epoch_path)
        if found is None:
            found = _epochs[epoch_path] = FileEpoch(epoch_path)
        return found


def epoch_source(app: Appliance, redis: RedisLayer | None) -> Epoch:
    local = file_epoch(app)
    if local is not None:
        return local
    if redis is not None:
        return RedisEpoch(redis)
    return NoEpoch()


# -- entries ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Entry:
    """A pre-signed answer, ready to send, and what it must still match to be sent."""

    serial_hex: str
    authority_id: int
    status: str  # "good" / "revoked"
    der: bytes
    der_sha256: bytes | None
    this_update: float
    next_update: float
    epoch: int | None  # the slot's epoch before the database was read
    checked: float  # when it was read from the database (time.time())
    etag: str = ""
    etag_sha256: str = ""
    last_modified: str = ""
    expires: str = ""
    # The fixed part of the HTTP/1.1 headers, encoded once per entry rather than per
    # request (Cache-Control's max-age is the only one that changes; the server adds it).
    head: bytes = b""
    head_sha256: bytes = b""
    head_304: bytes = b""
    head_304_sha256: bytes = b""

    def __post_init__(self) -> None:
        self.etag = _etag(self.der)
        self.etag_sha256 = _etag(self.der_sha256) if self.der_sha256 else ""
        self.last_modified = formatdate(self.this_update, usegmt=True)
        self.expires = formatdate(self.next_update, usegmt=True)
        dates = f"Last-Modified: {self.last_modified}\r\nExpires: {self.expires}\r\n"
        self.head_304 = f"{dates}ETag: {self.etag}\r\n".encode()
        self.head = (f"Content-Type: application/ocsp-response\r\n"
                     f"Content-Length: {len(self.der)}\r\n").encode() + self.head_304
        if self.der_sha256:
            self.head_304_sha256 = f"{dates}ETag: {self.etag_sha256}\r\n".encode()
            self.head_sha256 = (f"Content-Type: application/ocsp-response\r\n"
                                f"Content-Length: {len(self.der_sha256)}\r\n"
                                ).encode() + self.head_304_sha256

    def pack(self) -> bytes:
        d256 = self.der_sha256 or b""
        head = _PACK.pack(_PACK_VERSION, 1 if self.status == "revoked" else 0,
                          self.authority_id, self.this_update, self.next_update,
                          self.epoch or 0, self.checked, len(self.der), len(d256))
        return head + self.der + d256

    @classmethod
    def unpack(cls, serial_hex: str, data: bytes, has_epoch: bool) -> Entry | None:
        if len(data) < _PACK.size:
            return None
        (version, status, authority_id, this_update, next_update, epoch, checked, n1,
         n2) = _PACK.unpack_from(data)
        if version != _PACK_VERSION or len(data) != _PACK.size + n1 + n2 or n1 == 0:
            return None
        der = data[_PACK.size:_PACK.size + n1]
        d256 = data[_PACK.size + n1:] or None
        return cls(serial_hex, authority_id, "revoked" if status else "good", der, d256,
                   this_update, next_update, epoch if has_epoch else None, checked)


def _etag(der: bytes) -> str:
    return '"' + hashlib.sha256(der).hexdigest()[:32] + '"'


# -- Redis ------------------------------------------------------------------------------------


class RedisLayer:
    """The shared cache. A Redis fault never fails a request: the layer steps aside for a
    few seconds and the database answers."""

    def __init__(self, url: str, prefix: str) -> None:
        import redis

        self.prefix = prefix
        self.client = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT,
                                           socket_connect_timeout=REDIS_TIMEOUT)
        self._down_until = 0.0
        self.errors = 0

    def key(self, serial_hex: str) -> str:
        return f"{self.prefix}r:{serial_hex}"

    def _fault(self, exc: Exception, what: str) -> None:
        self.errors += 1
        if time.monotonic() >= self._down_until:
            log.warning("Redis unavailable; answering from the database",
                        extra={"operation": what, "fault": type(exc).__name__})
        self._down_until = time.monotonic() + REDIS_BACKOFF

    @property
    def up(self) -> bool:
        return time.monotonic() >= self._down_until

    def get(self, serial_hex: str) -> bytes | None:
        if not self.up:
            return None
        try:
            value = self.client.get(self.key(serial_hex))
        except Exception as exc:
            self._fault(exc, "get")
            return None
        return value if isinstance(value, bytes) else None

    def put(self, entry: Entry) -> None:
        if not self.up:
            return
        try:
            self.client.set(self.key(entry.serial_hex), entry.pack(),
                            exat=max(int(entry.next_update), int(time.time()) + 1))
        except Exception as exc:
            self._fault(exc, "set")

    def delete(self, serial_hex: str) -> None:
        try:
            self.client.delete(self.key(serial_hex))
        except Exception as exc:
            self._fault(exc, "delete")
            raise

    def epoch(self, slot: int) -> int | None:
        """The slot's counter; None (so: re-read the database) if Redis is down. A key that
        is gone (evicted, flushed, a new prefix) is started again from the clock, never a
        value seen before, and that value is returned."""
        if not self.up:
            return None
        key = f"{self.prefix}epoch:{slot}"
        try:
            value = self.client.get(key)
            if value is None:  # started again from the clock, then read back: this very
                # read already has an epoch (another process may have won the SET NX)
                self.client.set(key, time.time_ns(), nx=True)
                value = self.client.get(key)
        except Exception as exc:
            self._fault(exc, "epoch")
            return None
        return int(value) if isinstance(value, bytes) else None

    def bump_epoch(self, slot: int | None) -> None:
        # A counter that vanished restarts from the clock, never from 0, so no epoch value
        # is ever seen twice (a cache entry with an old one is never valid again).
        pipe = self.client.pipeline(transaction=False)
        for s in range(SLOTS) if slot is None else (slot,):
            pipe.set(f"{self.prefix}epoch:{s}", time.time_ns(), nx=True)
            pipe.incr(f"{self.prefix}epoch:{s}")
        pipe.execute()


_layers: dict[tuple[str, str], RedisLayer] = {}


def redis_layer(app: Appliance) -> RedisLayer | None:
    """This process's client for the configured Redis (one connection pool per URL)."""
    cfg = app.settings.config.ocsp
    if not cfg.redis_url:
        return None
    key = (cfg.redis_url, cfg.redis_prefix)
    with _epochs_lock:
        found = _layers.get(key)
        if found is None:
            found = _layers[key] = RedisLayer(cfg.redis_url, cfg.redis_prefix)
        return found


# -- reading the database ---------------------------------------------------------------------

_QUERY = (
    "SELECT c.id, c.authority_id, c.status, c.not_after, r.status, r.der, r.der_sha256, "
    "r.this_update, r.next_update FROM certificates c "
    "LEFT JOIN ocsp_responses r ON r.certificate_id = c.id WHERE c.serial_hex = {p}"
)


def timestamp(value: Any) -> float:
    """Seconds since the epoch of a database timestamp (SQLite gives text, naive UTC)."""
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return rfc3339.to_utc(dt).timestamp()


class Reader:
    """One autocommit DB-API connection per thread: a read takes no lock (SQLite WAL) and
    leaves no transaction open (PostgreSQL), and skips the ORM on the hot path."""

    def __init__(self, app: Appliance) -> None:
        self.app = app
        self._local = threading.local()
        path = sqlite_path(app)
        self._sqlite = path
        self._sql = _QUERY.format(p="?" if app.db.dialect == "sqlite" else "%s")

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._sqlite is not None:
                timeout = self.app.settings.config.database.busy_timeout_seconds
                conn = sqlite3.connect(self._sqlite, timeout=timeout, isolation_level=None,
                                       check_same_thread=False)
            else:
                proxy = self.app.db.engine.raw_connection()
                self._local.proxy = proxy  # keeps the pooled connection checked out
                conn = proxy.driver_connection
                assert conn is not None
                conn.autocommit = True
            self._local.conn = conn
        return conn

    def row(self, serial_hex: str) -> tuple[Any, ...] | None:
        rows = self.query(self._sql, (serial_hex,), formatted=True)
        return rows[0] if rows else None

    def query(self, sql: str, params: tuple[Any, ...] = (), *, formatted: bool = False
              ) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` (``{p}`` marks a parameter unless ``formatted``)."""
        if not formatted:
            sql = sql.format(p="?" if self._sqlite is not None else "%s")
        try:
            cur = self._connection().execute(sql, params)
            return [tuple(r) for r in cur.fetchall()]
        except Exception:
            self._local.conn = None  # a broken connection is replaced on the next read
            raise

    def timestamp(self, seconds: float) -> Any:
        """A query parameter comparable with a stored timestamp."""
        dt = datetime.fromtimestamp(seconds, UTC)
        return dt.replace(tzinfo=None).isoformat(" ") if self._sqlite is not None else dt


# -- the store --------------------------------------------------------------------------------

UNKNOWN = "unknown"  # the CA did not issue it (or long expired): unauthorized
UNAVAILABLE = "unavailable"  # ours, but no response may be served now: tryLater

_stores: weakref.WeakSet[ResponseStore] = weakref.WeakSet()


class ResponseStore:
    """Memory → Redis → database, with the epoch rules of the module docstring."""

    def __init__(self, app: Appliance, *, redis: RedisLayer | None = None,
                 use_redis: bool = True) -> None:
        cfg = app.settings.config.ocsp
        self.app = app
        self.redis = redis if redis is not None else (redis_layer(app) if use_redis else None)
        self.epoch = epoch_source(app, self.redis)
        self.has_epoch = not isinstance(self.epoch, NoEpoch)
        self.reader = Reader(app)
        self.max_entries = cfg.memory_entries
        self.revalidate = float(cfg.revalidate_seconds)
        self.grace = float(durations.parse(cfg.expired_grace))
        self.memory: OrderedDict[str, Entry] = OrderedDict()
        self.hits = {"memory": 0, "redis": 0, "database": 0, "database_down": 0}
        self._lock = threading.Lock()
        self._down_logged = -1e9
        _stores.add(self)

    def _valid(self, e: Entry, now: float, current: int | None) -> bool:
        if now >= e.next_update:
            return False
        if e.status == "revoked":
            return True
        return current is not None and e.epoch == current and now - e.checked < self.revalidate

    def _usable_if_database_down(self, e: Entry | None, now: float, current: int | None
                                 ) -> bool:
        """A "good" that is only past its revalidation age: servable while the database
        cannot be read. No revocation can commit while the database is down, and one that
        committed before was announced by bumping its slot's epoch, which this entry would
        then not match. (A revoking process that died between its commit and the bump is
        the one case revalidation bounds, and an outage stretches that bound up to the
        response's nextUpdate; docs/CLUSTER.md says so.) Without an epoch (another database
        and no Redis) there is no announcement to trust: nothing is served from cache."""
        return (e is not None and e.status == "good" and now < e.next_update
                and current is not None and e.epoch == current)

    def lookup(self, serial_hex: str, authority_ids: frozenset[int] | set[int]
               ) -> Entry | str:
        now = time.time()
        slot = slot_of(serial_hex)
        current: int | None = None
        read_epoch = False
        e = self.memory.get(serial_hex)
        fallback: Entry | None = None  # served only if the database cannot be read
        if e is not None:
            if e.status != "revoked":
                current, read_epoch = self.epoch.current(slot), True
            if self._valid(e, now, current):
                if e.authority_id not in authority_ids:
                    return UNKNOWN
                self.hits["memory"] += 1
                try:  # noqa: SIM105 (contextlib.suppress costs ~1 µs on the hot path)
                    self.memory.move_to_end(serial_hex)
                except KeyError:  # dropped by another thread meanwhile: still valid
                    pass
                return e
            self.memory.pop(serial_hex, None)
            if self._usable_if_database_down(e, now, current):
                fallback = e
        if not read_epoch:
            current = self.epoch.current(slot)  # before Redis and the database
        if self.redis is not None:
            packed = self.redis.get(serial_hex)
            if packed is not None:
                e = Entry.unpack(serial_hex, packed, self.has_epoch)
                if e is not None and self._valid(e, now, current):
                    if e.authority_id not in authority_ids:
                        return UNKNOWN
                    self.hits["redis"] += 1
                    self._remember(e)
                    return e
                if fallback is None and self._usable_if_database_down(e, now, current):
                    fallback = e
        try:
            found = self._from_database(serial_hex, authority_ids, now, current)
        except Exception:
            if fallback is None or fallback.authority_id not in authority_ids:
                raise
            self._database_down_notice()
            self.hits["database_down"] += 1  # cached, served because the database is down
            return fallback
        if isinstance(found, Entry):
            self.hits["database"] += 1
            self._remember(found)
            if self.redis is not None:
                self.redis.put(found)
        return found

    def _database_down_notice(self) -> None:
        now = time.monotonic()
        if now - self._down_logged >= 30.0:  # once per 30 s, not once per request
            self._down_logged = now
            log.warning("database unreadable: serving cached OCSP responses whose slot saw "
                        "no revocation, until their nextUpdate")

    def _remember(self, e: Entry) -> None:
        if self.max_entries <= 0 or (e.status == "good" and not self.has_epoch):
            return  # without an epoch a "good" is never served from memory: don't keep it
        with self._lock:
            self.memory[e.serial_hex] = e
            while len(self.memory) > self.max_entries:
                self.memory.popitem(last=False)

    def _from_database(self, serial_hex: str, authority_ids: frozenset[int] | set[int],
                       now: float, current: int | None) -> Entry | str:
        row = self.reader.row(serial_hex)
        if row is None:
            return UNKNOWN
        (_cid, authority_id, cert_status, not_after, r_status, der, der256, this_update,
         next_update) = row
        if authority_id not in authority_ids or cert_status not in ("issued", "revoked"):
            return UNKNOWN
        if not_after is not None and timestamp(not_after) + self.grace < now:
            return UNKNOWN
        if der is None:
            log.info("no pre-signed OCSP response yet", extra={"serial": serial_hex})
            return UNAVAILABLE
        want = "good" if cert_status == "issued" else "revoked"
        if r_status != want:
            log.warning("pre-signed OCSP response says %s but the certificate is %s; "
                        "not served until re-signed", r_status, cert_status,
                        extra={"serial": serial_hex})
            return UNAVAILABLE
        nu = timestamp(next_update)
        if nu <= now:
            log.warning("pre-signed OCSP response is past its nextUpdate; not served "
                        "(is the pre-signer running?)", extra={"serial": serial_hex})
            return UNAVAILABLE
        return Entry(serial_hex, int(authority_id), want, bytes(der),
                     bytes(der256) if der256 is not None else None, timestamp(this_update),
                     nu, current, now)

    def forget(self, serial_hex: str) -> None:
        self.memory.pop(serial_hex, None)


# -- the revoke path's hook -------------------------------------------------------------------


def invalidate(app: Appliance, serial_hex: str) -> None:
    """Make every cache drop its answer for ``serial_hex`` (see :func:`revocation_happened`)."""
    revocation_happened(app, serial_hex)


def revocation_happened(app: Appliance, serial_hex: str) -> None:
    """Call after the revocation of ``serial_hex`` committed: bump its slot's epoch (file and
    Redis) and drop the Redis entry. Never raises (the revocation already stands); a failure
    is logged, and ``ocsp.revalidate_seconds`` bounds how long a cached "good" survives it."""
    serial_hex = serial_hex.lower().lstrip("0") or "0"
    slot = slot_of(serial_hex)
    try:
        local = file_epoch(app)
        if local is not None:
            local.bump(slot)
    except Exception:
        log.exception("could not bump the OCSP revocation epoch file",
                      extra={"serial": serial_hex})
    try:
        layer = redis_layer(app)
        if layer is not None:
            layer.bump_epoch(slot)
            layer.delete(serial_hex)
    except Exception:
        log.exception("could not invalidate the Redis OCSP cache", extra={"serial": serial_hex})
    for store in list(_stores):
        store.forget(serial_hex)


def everything_changed(app: Appliance) -> None:
    """Bump every slot (e.g. after the pre-signer repaired responses out of step)."""
    try:
        local = file_epoch(app)
        if local is not None:
            local.bump(None)
        layer = redis_layer(app)
        if layer is not None:
            layer.bump_epoch(None)
    except Exception:
        log.exception("could not bump the OCSP revocation epochs")
    for store in list(_stores):
        store.memory.clear()
