"""``EpochCache``: a value is served only under the counter it was read under."""

from __future__ import annotations

import pytest

from appliance.store.epochs import EpochCache


def test_a_changed_epoch_drops_every_entry() -> None:
    cache: EpochCache[str, str] = EpochCache("template", 8)
    state = ["v1"]
    loaded: list[str] = []

    def get(epoch: int, key: str) -> str:
        def load() -> str:
            loaded.append(key)
            return f"{key}@{state[0]}"
        return cache.get({"template": epoch}, key, load)

    assert get(1, "a") == "a@v1" and get(1, "b") == "b@v1"
    assert get(1, "a") == "a@v1" and loaded == ["a", "b"]  # served from the cache
    state[0] = "v2"
    assert get(1, "a") == "a@v1"  # the counter says nothing changed: still cached
    assert get(2, "a") == "a@v2" and get(2, "b") == "b@v2"  # both read again
    assert loaded == ["a", "b", "a", "b"]
    # Another scope's counter moving changes nothing here.
    assert cache.get({"template": 2, "policy": 9}, "a", lambda: "never") == "a@v2"


def test_a_request_that_read_an_older_epoch_never_meets_a_newer_value_or_leaves_one() -> None:
    cache: EpochCache[str, str] = EpochCache("policy", 8)
    assert cache.get({"policy": 5}, "k", lambda: "new") == "new"
    # A request that read the counter before the change (4) reads afresh, and what it read
    # is not served to a request under the new counter.
    assert cache.get({"policy": 4}, "k", lambda: "old-request") == "old-request"
    assert cache.get({"policy": 5}, "k", lambda: "again") == "again"


def test_bounded_least_recently_used_first() -> None:
    cache: EpochCache[int, int] = EpochCache("inventory", 3)
    for k in (1, 2, 3):
        cache.get({"inventory": 1}, k, lambda k=k: k)  # type: ignore[misc]
    cache.get({"inventory": 1}, 1, lambda: -1)  # touch 1: 2 is now the oldest
    cache.get({"inventory": 1}, 4, lambda: 4)
    assert len(cache) == 3
    assert cache.get({"inventory": 1}, 2, lambda: -2) == -2  # evicted, read again
    assert cache.get({"inventory": 1}, 1, lambda: -1) == 1


def test_a_failed_load_is_not_cached_and_a_missing_scope_caches_nothing() -> None:
    cache: EpochCache[str, str] = EpochCache("authority", 4)

    def boom() -> str:
        raise LookupError("no")

    with pytest.raises(LookupError):
        cache.get({"authority": 1}, "x", boom)
    assert cache.get({"authority": 1}, "x", lambda: "ok") == "ok"
    assert cache.get({}, "y", lambda: "1") == "1"
    assert cache.get({}, "y", lambda: "2") == "2"
    with pytest.raises(ValueError, match="unknown epoch scope"):
        EpochCache("certificates", 4)
