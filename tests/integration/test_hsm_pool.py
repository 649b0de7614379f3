"""The session pool under concurrency and real token faults (no mocks of the token)."""

from __future__ import annotations

import multiprocessing
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.errors import HsmLoginError, HsmUnavailableError, KeyNotFoundError
from appliance.hsm import keys
from appliance.hsm.pool import PooledSession, SessionPool
from appliance.hsm.profile import HsmProfile
from appliance.hsm.signer import TokenECPrivateKey, token_private_key
from tests.conftest import TestToken, unique_label

CKF_USER_PIN_COUNT_LOW = 0x10000


def _verify_all(public_der: bytes, results: list[tuple[bytes, bytes]]) -> None:
    public = serialization.load_der_public_key(public_der)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    for message, signature in results:
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))


def test_many_threads_sign_at_once_and_every_signature_verifies(
    pool: SessionPool, token: TestToken
) -> None:
    info = keys.generate_keypair(pool, unique_label("mt"), "ec-p256")
    key = token_private_key(pool, info)
    barrier = threading.Barrier(16)

    def worker(n: int) -> list[tuple[bytes, bytes]]:
        barrier.wait()
        out = []
        for i in range(100):
            message = f"thread {n} message {i}".encode()
            out.append((message, key.sign(message, ec.ECDSA(hashes.SHA256()))))
        return out

    with ThreadPoolExecutor(16) as ex:
        results = [r for chunk in ex.map(worker, range(16)) for r in chunk]
    assert len(results) == 1600
    _verify_all(info.spki_der, results)
    assert 1 <= pool.size <= pool.profile.pool_size


def _process_worker(profile_json: str, label: str, n: int) -> list[tuple[bytes, bytes]]:
    """Runs in a child process: its own pool, its own sessions, two threads signing."""
    pool = SessionPool(HsmProfile.model_validate_json(profile_json))
    key = token_private_key(pool, keys.find_key(pool, label))

    def sign(i: int) -> tuple[bytes, bytes]:
        message = f"process {n} message {i}".encode()
        return message, key.sign(message, ec.ECDSA(hashes.SHA256()))

    with ThreadPoolExecutor(2) as ex:
        out = list(ex.map(sign, range(300)))
    pool.close()
    return out


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_two_processes_sign_at_once_and_every_signature_verifies(
    pool: SessionPool, token: TestToken, start_method: str
) -> None:
    """With fork the parent has already used the token: children must re-initialise the
    module and open their own sessions, never reuse the parent's."""
    info = keys.generate_keypair(pool, unique_label("mp"), "ec-p256")
    token_private_key(pool, info).sign(b"parent first", ec.ECDSA(hashes.SHA256()))
    ctx = multiprocessing.get_context(start_method)
    profile_json = pool.profile.model_dump_json()
    with ctx.Pool(2) as procs:
        chunks = procs.starmap(_process_worker, [(profile_json, info.label, n) for n in (1, 2)])
    results = [r for chunk in chunks for r in chunk]
    assert len(results) == 600
    _verify_all(info.spki_der, results)
    # The parent's pool still works after its children came and went.
    token_private_key(pool, info).sign(b"parent after", ec.ECDSA(hashes.SHA256()))


def test_invalidated_sessions_are_reopened_and_signing_goes_on(token: TestToken) -> None:
    own = SessionPool(token.profile(pool_size=2, retry_delay_seconds=0.01))
    try:
        info = keys.generate_keypair(own, unique_label("inv"), "ec-p256")
        key = token_private_key(own, info)
        # Hold both sessions at once so the pool has two open.
        held: list[PooledSession] = []
        barrier = threading.Barrier(2)

        def hold(ps: PooledSession) -> None:
            held.append(ps)
            barrier.wait()

        with ThreadPoolExecutor(2) as ex:
            list(ex.map(lambda _: own.run(hold), range(2)))
        assert len({id(ps) for ps in held}) == 2
        generations = {ps.generation for ps in held}
        # Close every session under the pool. With the last one the token also ends the
        # application's login, so the pool must open new sessions and log in again.
        for ps in held:
            ps.session.close()
        for i in range(20):
            key.sign(f"after {i}".encode(), ec.ECDSA(hashes.SHA256()))
        fresh = own.run(lambda ps: ps.generation)
        assert fresh > max(generations)
    finally:
        own.close()


def test_faults_that_persist_end_in_a_clear_error_after_bounded_retries(
    token: TestToken,
) -> None:
    own = SessionPool(token.profile(pool_size=1, max_retries=2, retry_delay_seconds=0.01))
    attempts: list[int] = []

    def always_breaks(ps: PooledSession) -> None:
        attempts.append(ps.generation)
        ps.session.close()  # the session dies under the operation...
        ps.session.generate_random(64)  # ...which then fails with SessionHandleInvalid

    try:
        with pytest.raises(HsmUnavailableError, match="after 3 attempt"):
            own.run(always_breaks)
        assert len(attempts) == 3
        assert len(set(attempts)) == 3  # a new session each time
        assert len(own.run(lambda ps: ps.session.generate_random(128))) == 16
    finally:
        own.close()


def test_wrong_pin_is_a_clear_error_and_never_retried(new_token: Any, tmp_path: Path) -> None:
    tok: TestToken = new_token("pin")
    wrong = tok.write_pin_file("wrong.pin", "not-the-pin")
    bad = SessionPool(tok.profile(pin={"file": str(wrong)}, pool_size=4, max_retries=3))
    before = bad.token.flags
    assert not before & CKF_USER_PIN_COUNT_LOW
    with pytest.raises(HsmLoginError) as first:
        bad.run(lambda ps: ps.session.generate_random(64))
    message = str(first.value)
    assert "refused the PIN" in message and "wrong.pin" in message
    assert "not-the-pin" not in message
    assert bad.size == 0
    # The token recorded exactly the one failed login.
    assert type(bad)(tok.profile()).token.flags & CKF_USER_PIN_COUNT_LOW
    # Even with the right PIN now in the file, the stopped pool does not try again.
    wrong.write_text(tok.user_pin + "\n")
    for _ in range(5):
        with pytest.raises(HsmLoginError) as again:
            bad.run(lambda ps: ps.session.generate_random(64))
        assert again.value is first.value
    assert bad.size == 0
    # A new pool (an operator restart) with the right PIN works.
    good = SessionPool(tok.profile())
    try:
        assert len(good.run(lambda ps: ps.session.generate_random(64))) == 8
    finally:
        good.close()


def test_token_wiped_under_a_running_pool_fails_closed(new_token: Any) -> None:
    tok: TestToken = new_token("wipe")
    own = SessionPool(tok.profile(retry_delay_seconds=0.01))
    try:
        info = keys.generate_keypair(own, unique_label("gone"), "ec-p256")
        key = TokenECPrivateKey(own, info)
        key.sign(b"before", ec.ECDSA(hashes.SHA256()))
        for child in (tok.conf.parent / "tokens").iterdir():
            serial_dir = child
            if any(serial_dir.glob("*.object")) and tok.label in _token_label(serial_dir):
                shutil.rmtree(serial_dir)
        with pytest.raises((KeyNotFoundError, HsmUnavailableError)):
            key.sign(b"after", ec.ECDSA(hashes.SHA256()))
    finally:
        own.close()


def _token_label(token_dir: Path) -> str:
    data = (token_dir / "token.object").read_bytes() if (token_dir / "token.object").exists() \
        else b""
    return data.decode("latin-1")


def test_a_module_reinitialised_by_one_pool_leaves_every_other_pool_working(
    token: TestToken,
) -> None:
    """Re-initialising the module ends every session of the process: a second pool on the
    same module must drop its stale sessions and login, not fail on them (CI saw
    SessionHandleInvalid in an unrelated pool after one pool reconnected)."""
    first = SessionPool(token.profile(pool_size=2, reconnect_interval_seconds=0.5))
    second = SessionPool(token.profile(pool_size=2))
    try:
        info = keys.generate_keypair(second, unique_label("epoch"), "ec-p256")
        key = token_private_key(second, info)
        assert isinstance(key, TokenECPrivateKey)
        key.sign(b"before", ec.ECDSA(hashes.SHA256()))
        assert first.run(lambda ps: len(ps.session.generate_random(64))) == 8
        assert first._reconnect(RuntimeError("test: token looked gone"))
        # The second pool's idle sessions died with the module state; it opens new ones,
        # even for an operation that is never retried (key generation).
        assert keys.generate_keypair(second, unique_label("epoch2"), "ec-p256").label
        signature = key.sign(b"after", ec.ECDSA(hashes.SHA256()))
        _verify_all(info.spki_der, [(b"after", signature)])
        assert first.run(lambda ps: len(ps.session.generate_random(64))) == 8
    finally:
        first.close()
        second.close()
