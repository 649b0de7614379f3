"""The token watcher on a real SoftHSM token (no server): backoff, probes beside signing,
a refused PIN, and which faults count as a loss."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.errors import HsmLoginError, KeyNotFoundError
from appliance.hsm import keys
from appliance.hsm.pool import SessionPool
from appliance.hsm.signer import token_private_key
from appliance.hsm.watch import Backoff, TokenWatcher, Transition
from tests.conftest import TestToken, unique_label

CKF_USER_PIN_COUNT_LOW = 0x10000


def _watch(pool: SessionPool, seen: list[Transition], interval: float = 0.05) -> TokenWatcher:
    w = TokenWatcher(pool, probe_interval=interval, backoff_initial=0.05, backoff_max=0.2,
                     on_transition=seen.append)
    w.start()
    return w


def _wait_state(w: TokenWatcher, state: str, within: float = 10) -> None:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if w.snapshot().state == state:
            return
        time.sleep(0.01)
    raise AssertionError(f"state {w.snapshot()} is not {state!r}")


def test_backoff_doubles_up_to_its_cap_and_starts_over_after_a_reset() -> None:
    b = Backoff(0.25, 2.0)
    assert [b.next() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    b.reset()
    assert b.next() == 0.25
    assert [Backoff(3.0, 1.0).next() for _ in range(2)] == [3.0, 3.0]  # cap below initial


def test_probes_run_beside_signing_without_disturbing_it(token: TestToken) -> None:
    pool = SessionPool(token.profile(pool_size=4))
    seen: list[Transition] = []
    w = _watch(pool, seen, interval=0.01)  # a probe every 10 ms: far more than in service
    try:
        _wait_state(w, "up")
        key = token_private_key(pool, keys.generate_keypair(pool, unique_label("w"),
                                                            "ec-p256"))
        checked = w.snapshot().checked_at

        def sign(i: int) -> bytes:
            return key.sign(f"m{i}".encode(), ec.ECDSA(hashes.SHA256()))

        with ThreadPoolExecutor(8) as ex:
            sigs = list(ex.map(sign, range(400)))
        public = key.public_key()
        for i, sig in enumerate(sigs):
            public.verify(sig, f"m{i}".encode(), ec.ECDSA(hashes.SHA256()))
        assert w.snapshot().checked_at > checked  # the probe kept running meanwhile
        assert w.snapshot().state == "up" and seen == []
    finally:
        w.stop()
        pool.close()


def test_a_missing_label_is_no_loss_of_the_token(token: TestToken) -> None:
    """A lookup that finds nothing while the token answers the probe is the caller's
    answer (key_not_found), not an outage: nothing audited, nothing refused after it."""
    pool = SessionPool(token.profile())
    seen: list[Transition] = []
    w = _watch(pool, seen)
    try:
        _wait_state(w, "up")
        with pytest.raises(KeyNotFoundError, match="no private key labelled"):
            keys.find_key(pool, unique_label("absent"))
        assert w.snapshot().state == "up" and w.refusal() is None and seen == []
        assert len(pool.run(lambda ps: ps.session.generate_random(64))) == 8
    finally:
        w.stop()
        pool.close()


def test_a_refused_pin_is_reported_once_and_never_retried(new_token: Any) -> None:
    tok: TestToken = new_token("watch-pin")
    wrong = tok.write_pin_file("watch-wrong.pin", "not-the-pin")
    pool = SessionPool(tok.profile(pin={"file": str(wrong)}))
    assert not pool.token.flags & CKF_USER_PIN_COUNT_LOW
    seen: list[Transition] = []
    w = _watch(pool, seen)
    try:
        _wait_state(w, "pin refused")
        assert [t.kind for t in seen] == ["pin_refused"]
        assert "refused the PIN" in seen[0].fault and "not-the-pin" not in seen[0].fault
        assert SessionPool(tok.profile()).token.flags & CKF_USER_PIN_COUNT_LOW
        # The right PIN in the file now: the watcher still does not try (a restart does).
        wrong.write_text(tok.user_pin + "\n")
        time.sleep(1.0)  # twenty probe intervals
        assert w.snapshot().state == "pin refused"
        assert [t.kind for t in seen] == ["pin_refused"]
        refused = w.refusal()
        assert isinstance(refused, HsmLoginError)
        started = time.monotonic()
        with pytest.raises(HsmLoginError):
            pool.run(lambda ps: ps.session.generate_random(64))
        assert time.monotonic() - started < 0.5
        assert pool.size == 0  # no session was opened for it
    finally:
        w.stop()
        pool.close()


def test_a_stopped_watcher_leaves_the_pool_as_it_was(token: TestToken) -> None:
    pool = SessionPool(token.profile())
    w = _watch(pool, [])
    _wait_state(w, "up")
    w.stop()
    assert pool.watcher is None
    assert w._thread is not None and not w._thread.is_alive()
    assert len(pool.run(lambda ps: ps.session.generate_random(64))) == 8
    pool.close()
