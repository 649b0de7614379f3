"""Revocation epochs, cache entries, the refresh rule and response metrics: no token, no DB."""

from __future__ import annotations

import multiprocessing
import time
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from appliance.config import OcspConfig
from appliance.ocsp import cache
from appliance.ocsp.presign import refresh_offset
from appliance.ocsp.responder import AGE_BUCKETS, Metrics
from appliance.ocsp.signer import OcspSigningError, ocsp_status, reason_flag


def _bump_in_child(path: str, slot: int, times: int) -> None:
    epoch = cache.FileEpoch(path)
    for _ in range(times):
        epoch.bump(slot)


def test_file_epoch_is_shared_between_processes_and_loses_no_bump(tmp_path: Path) -> None:
    path = str(tmp_path / "db-ocsp-epoch")
    before = time.time_ns()
    mine = cache.FileEpoch(path)
    start = mine.current(0)
    assert start is not None and before <= start <= time.time_ns()  # never 0: no ABA
    assert [mine.current(s) for s in range(cache.SLOTS)] == [start] * cache.SLOTS
    ctx = multiprocessing.get_context("spawn")
    children = [ctx.Process(target=_bump_in_child, args=(path, 5, 200)) for _ in range(3)]
    for c in children:
        c.start()
    for c in children:
        c.join(30)
        assert c.exitcode == 0
    assert mine.current(5) == start + 600  # every increment of every process, via our map
    assert mine.current(4) == start
    mine.bump(None)
    other = cache.FileEpoch(path)
    assert other.current(5) == start + 601 and other.current(63) == start + 1
    assert (tmp_path / "db-ocsp-epoch").stat().st_mode & 0o077 == 0


def test_slots_spread_serials() -> None:
    assert {cache.slot_of(f"{i:x}") for i in range(1000)} == set(range(cache.SLOTS))
    assert cache.slot_of("0") == 0


def _entry(**kw: object) -> cache.Entry:
    now = time.time()
    base: dict[str, object] = dict(serial_hex="abc", authority_id=3, status="good",
                                   der=b"\x30\x03one", der_sha256=b"\x30\x03two",
                                   this_update=now - 300, next_update=now + 86400, epoch=7,
                                   checked=now)
    base.update(kw)
    return cache.Entry(**base)  # type: ignore[arg-type]


def test_entry_pack_round_trip_and_headers() -> None:
    e = _entry()
    back = cache.Entry.unpack("abc", e.pack(), has_epoch=True)
    assert back is not None
    assert (back.status, back.der, back.der_sha256, back.epoch, back.authority_id) == (
        "good", e.der, e.der_sha256, 7, 3)
    assert back.etag == e.etag and back.etag.startswith('"') and back.etag != back.etag_sha256
    assert back.last_modified.endswith(" GMT") and back.expires == e.expires
    assert cache.Entry.unpack("abc", e.pack(), has_epoch=False).epoch is None  # type: ignore[union-attr]
    revoked = _entry(status="revoked", der_sha256=None)
    back = cache.Entry.unpack("abc", revoked.pack(), has_epoch=True)
    assert back is not None and back.status == "revoked" and back.der_sha256 is None
    for junk in (b"", b"x" * 10, e.pack()[:-1], b"\x02" + e.pack()[1:]):
        assert cache.Entry.unpack("abc", junk, has_epoch=True) is None


class _Store(cache.ResponseStore):
    """Only the validity rules of the store (no database behind it)."""

    def __init__(self) -> None:
        self.revalidate = 60.0


def test_validity_rules_of_cached_entries() -> None:
    s = _Store()
    now = time.time()
    assert s._valid(_entry(), now, 7)
    assert not s._valid(_entry(), now, 8)  # the slot's epoch moved: back to the database
    assert not s._valid(_entry(), now, None)  # no epoch source: always back
    assert not s._valid(_entry(checked=now - 61), now, 7)  # revalidation interval
    assert not s._valid(_entry(next_update=now), now, 7)  # never past nextUpdate
    assert s._valid(_entry(status="revoked", epoch=1), now, 8)  # revocation is final
    assert not s._valid(_entry(status="revoked", next_update=now - 1), now, 8)


def test_what_is_served_while_the_database_is_down() -> None:
    s = _Store()
    now = time.time()
    usable = s._usable_if_database_down
    assert usable(_entry(checked=now - 3600), now, 7)  # only past its revalidation age
    assert not usable(_entry(checked=now - 3600), now, 8)  # its slot saw a revocation
    assert not usable(_entry(), now, None)  # no epoch source: no announcement to trust
    assert not usable(_entry(next_update=now), now, 7)  # never past nextUpdate
    assert not usable(_entry(status="revoked"), now, 7)  # a revoked entry is valid anyway
    assert not usable(None, now, 7)


class _DownReader:
    """The fault: the database cannot be read (what SQLAlchemy raises then)."""

    def row(self, _serial_hex: str) -> object:
        from sqlalchemy.exc import OperationalError
        raise OperationalError("SELECT ...", {}, Exception("connection refused"))


class _Epoch:
    def __init__(self, value: int) -> None:
        self.value = value

    def current(self, _slot: int) -> int:
        return self.value


def test_a_lookup_serves_the_stale_good_only_while_the_database_is_down() -> None:
    import threading
    from collections import OrderedDict

    from sqlalchemy.exc import OperationalError

    s = _Store()
    s.redis, s.epoch, s.has_epoch, s.max_entries = None, _Epoch(7), True, 100
    s.reader = _DownReader()  # type: ignore[assignment]
    s.memory, s._lock, s._down_logged = OrderedDict(), threading.Lock(), -1e9
    s.hits = {"memory": 0, "redis": 0, "database": 0, "database_down": 0}
    now = time.time()
    s.memory["abc"] = _entry(checked=now - 3600)
    found = s.lookup("abc", {3})
    assert isinstance(found, cache.Entry) and found.status == "good"
    assert s.hits["database_down"] == 1 and s.hits["memory"] == 0
    s.memory["abc"] = _entry(checked=now - 3600)
    with pytest.raises(OperationalError):  # wrong issuer: nothing to fall back on
        s.lookup("abc", {4})
    s.memory["abc"] = _entry(checked=now - 3600)
    s.epoch = _Epoch(8)  # a revocation was announced in its slot
    with pytest.raises(OperationalError):
        s.lookup("abc", {3})
    assert s.hits["database_down"] == 1


def test_refresh_rule() -> None:
    h, d = timedelta(hours=1), timedelta(days=1)
    assert refresh_offset(8 * h) == 4 * h  # short: at half
    assert refresh_offset(16 * h) == 8 * h  # at least 8 h before nextUpdate
    assert refresh_offset(4 * d) == 2 * d  # default: at half
    assert refresh_offset(10 * d) == 4 * d  # no later than 4 days after thisUpdate
    assert refresh_offset(20 * h) == 10 * h
    for hours in range(16, 241):
        v = hours * h
        r = refresh_offset(v)
        assert v - r >= 8 * h and r <= 4 * d and r <= v / 2


def test_validity_bounds_in_configuration() -> None:
    assert OcspConfig().validity == "4d"
    for bad in ("7h", "11d"):
        with pytest.raises(ValueError, match="between 8h and 10d"):
            OcspConfig(validity=bad)
    OcspConfig(validity="8h")
    OcspConfig(validity="10d")


def test_statuses_and_reasons() -> None:
    assert ocsp_status("issued") == "good" and ocsp_status("revoked") == "revoked"
    for other in ("reserved", "failed"):
        with pytest.raises(OcspSigningError):
            ocsp_status(other)
    assert reason_flag("keyCompromise") is x509.ReasonFlags.key_compromise
    assert reason_flag("cessationofoperation") is x509.ReasonFlags.cessation_of_operation
    assert reason_flag(None) is None and reason_flag("unspecified") is None
    for bad in ("certificateHold", "removeFromCRL", "nonsense"):
        with pytest.raises(OcspSigningError):
            reason_flag(bad)


def test_age_histogram() -> None:
    m = Metrics()
    m.count("GET", "good", 10)
    m.count("GET", "good", AGE_BUCKETS[0] + 1)
    m.count("POST", "revoked", 99 * 86400)
    m.count("POST", "unauthorized")
    m.count("GET", "good", AGE_BUCKETS[0])  # on a bound: in that bucket (le)
    assert m.totals() == ({"good": 3, "revoked": 1, "unauthorized": 1}, {"GET": 3, "POST": 2})
    assert m.age_counts[0] == 2 and m.age_counts[1] == 1 and m.age_counts[-1] == 1
