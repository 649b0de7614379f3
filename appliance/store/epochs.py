"""Issuance epochs: per-process caches of issuance state that a change anywhere drops.

Table ``issuance_epochs`` (migration 0011) holds one counter per scope; triggers in the
database bump a scope's counter on every insert, update or delete of its tables, whoever
writes (the ORM, Core, an operator's SQL, another node). So a request reads the counters
once (one small table) and may use what this process cached while its scope's counter is
the one the cached value was read under; any change, and the next request anywhere reads
afresh. Nothing here decides anything: a cache holds only what the database said.

Order matters, and is what makes it safe: the counters are read *before* the values a
miss loads (in the same snapshot, or an earlier statement), so a value stored under a
counter is never older than the counter; a change committed after the read bumps the
counter, and the next request misses. A scope without its row (deleted by hand) caches
nothing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import Table, select

from appliance.store.models import IssuanceEpoch

# The scopes and the tables whose writes bump each (migration 0011 creates the triggers).
WATCHED: Mapping[str, tuple[str, ...]] = {
    "authority": ("authorities", "hsm_keys"),
    "provisioner": ("provisioners",),
    "template": ("templates",),
    "policy": ("name_policies",),
    "inventory": ("inventory_records", "inventory_identifiers"),
}
SCOPES = tuple(WATCHED)
_TABLE = cast(Table, IssuanceEpoch.__table__)
_READ = select(_TABLE.c.scope, _TABLE.c.value)

Epochs = Mapping[str, int]
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def read(db: Any) -> Epochs:
    """Every scope's counter, in one statement (``db``: a Core connection or a session)."""
    return {str(r.scope): int(r.value) for r in db.execute(_READ)}


class EpochCache(Generic[K, V]):
    """A bounded LRU of values of one scope, valid while that scope's counter is unchanged.

    Thread-safe; shared by the threads of one process (one per ``Appliance``, never across
    databases). A counter other than the one held (newer, or older from a request that
    read before a change) empties it first: racing readers cost a re-read, never a stale
    answer."""

    def __init__(self, scope: str, maxsize: int) -> None:
        if scope not in WATCHED:
            raise ValueError(f"unknown epoch scope {scope!r}")
        self.scope = scope
        self.maxsize = maxsize
        self._epoch: int | None = None
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, epochs: Epochs, key: K, load: Callable[[], V]) -> V:
        """The value of ``key`` under ``epochs``: cached, or ``load()`` (then cached).
        ``load`` reads the database after ``epochs`` was read; what it raises is not
        cached."""
        epoch = epochs.get(self.scope)
        if epoch is None:
            return load()
        with self._lock:
            if self._epoch != epoch:
                self._items.clear()
                self._epoch = epoch
            elif key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = load()
        with self._lock:
            if self._epoch == epoch:
                self._items[key] = value
                if len(self._items) > self.maxsize:
                    self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._epoch = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
