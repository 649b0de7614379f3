"""The FIPS-style self-tests that need no token: the known-answer tests catch a corrupted
vector, the SP 800-90B health tests catch a stuck or biased source, the continuous test
catches a repeated draw and latches, the seal check catches any change, and the error
state answers as a 503 ``fips_error`` in REST and ACME."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.acme.problems import problem_of
from appliance.errors import SelfTestError
from appliance.fips import rng_health
from appliance.fips.manifest import Manifest
from appliance.fips.seal import Sealed, SealError, load_sealed, verify_sealed
from appliance.fips.selftest import ErrorState, FipsError
from appliance.hsm import kat_vectors as kat
from appliance.hsm import rng
from appliance.hsm import selftest as hsm_selftest
from appliance.store.db import Database
from appliance.store.models import Installation
from appliance.web.errors import status_of


def _failed(checks: list[hsm_selftest.Check]) -> set[str]:
    return {c.name for c in checks if not c.ok}


def test_the_fips_known_answer_tests_pass_with_the_published_vectors() -> None:
    checks = hsm_selftest.fips_software_checks()
    assert not _failed(checks)
    names = {c.name for c in checks}
    assert {"kat-hmac-sha256", "kat-hmac-sha384", "kat-hmac-sha512", "kat-aes256-gcm-encrypt",
            "kat-aes256-gcm-decrypt", "kat-aes256-gcm-negative", "kat-sha256",
            "kat-ecdsa-p256-sha256", "kat-rsa-pss-sha256"} <= names


@pytest.mark.parametrize("name", ["sha256", "sha384", "sha512"])
def test_a_corrupted_hmac_vector_fails_its_test(monkeypatch: pytest.MonkeyPatch,
                                                name: str) -> None:
    bad = dict(kat.HMAC_RFC4231_TC2)
    bad[name] = ("0" if bad[name][0] != "0" else "1") + bad[name][1:]
    monkeypatch.setattr(kat, "HMAC_RFC4231_TC2", bad)
    assert _failed(hsm_selftest.hmac_kats()) == {f"kat-hmac-{name}"}


def test_a_corrupted_aes_gcm_vector_fails_encrypt_and_decrypt(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kat, "AES256_GCM_TAG", bytes([kat.AES256_GCM_TAG[0] ^ 1])
                        + kat.AES256_GCM_TAG[1:])
    assert _failed(hsm_selftest.aes_gcm_kats()) == {"kat-aes256-gcm-encrypt",
                                                    "kat-aes256-gcm-decrypt"}
    monkeypatch.undo()
    monkeypatch.setattr(kat, "AES256_GCM_CIPHERTEXT", bytes(16))
    assert "kat-aes256-gcm-encrypt" in _failed(hsm_selftest.aes_gcm_kats())


def test_a_corrupted_digest_or_signature_vector_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kat, "SHA_ABC", {**kat.SHA_ABC, "sha384": "00" * 48})
    monkeypatch.setattr(kat, "EC_P256_SIG", kat.EC_P256_SIG[:-1] + bytes([kat.EC_P256_SIG[-1] ^ 1]))
    assert _failed(hsm_selftest.fips_software_checks()) == {"kat-sha384",
                                                            "kat-ecdsa-p256-sha256"}


def test_a_healthy_source_passes_the_health_tests() -> None:
    assert not _failed(rng_health.health(os.urandom(rng_health.SAMPLE_BYTES)))


def test_a_stuck_source_fails_both_health_tests() -> None:
    assert _failed(rng_health.health(bytes([0x5a]) * rng_health.SAMPLE_BYTES)) == {
        "rng-repetition-count", "rng-adaptive-proportion"}


def test_the_repetition_count_cutoff_is_exact() -> None:
    cutoff = rng_health.repetition_cutoff()
    assert cutoff == 6  # 1 + ceil(20 / 4)
    base = bytes(range(256)) * 4
    assert rng_health.repetition_count(base[:100] + b"\xff" * (cutoff - 1) + base[:100]).ok
    assert not rng_health.repetition_count(base[:100] + b"\xff" * cutoff + base[:100]).ok


def test_a_biased_source_without_long_runs_fails_the_adaptive_proportion_test() -> None:
    cutoff = rng_health.proportion_cutoff()
    assert 40 < cutoff < 100
    window = bytearray(os.urandom(rng_health.WINDOW))
    # the window's first value recurs cutoff times, never twice in a row
    value = window[0]
    window = bytearray(b if b != value else (value + 1) % 256 for b in window)
    for i in range(cutoff):
        window[i * 4] = value
    for i in range(1, len(window)):
        if window[i] == window[i - 1] == value:
            window[i] = (value + 7) % 256
    samples = bytes(window) + os.urandom(rng_health.WINDOW)
    assert rng_health.repetition_count(samples).ok
    assert not rng_health.adaptive_proportion(samples).ok
    assert not rng_health.adaptive_proportion(b"\x01" * 100).ok  # too few samples


def test_the_continuous_test_fails_closed_on_a_repeat_and_stays_failed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rng, "_previous", None)
    monkeypatch.setattr(rng, "_failure", None)
    rng.continuous_test(b"\x00" * 4)
    rng.continuous_test(b"\x00" * 4)  # shorter than 64 bits: not compared
    draw = os.urandom(16)
    rng.continuous_test(draw)
    rng.continuous_test(os.urandom(16))
    rng.continuous_test(os.urandom(16))
    state, default_mode = ErrorState(), ErrorState(watch_rng=False)
    assert state.failed == ()
    same = os.urandom(16)
    rng.continuous_test(same)
    with pytest.raises(SelfTestError, match="continuous RNG test"):
        rng.continuous_test(same)
    with pytest.raises(SelfTestError):  # latched: a fresh draw is refused too
        rng.continuous_test(os.urandom(16))
    assert state.failed == ("rng-continuous",)
    assert default_mode.failed == ()  # outside FIPS mode the draws fail, not every request
    with pytest.raises(FipsError):
        state.check()


def test_the_error_state_is_entered_once_and_answers_503_fips_error() -> None:
    state = ErrorState()
    state.check()
    assert state.enter(["software-integrity"], "changed: x509/algorithms.py")
    assert not state.enter(["kat-sha256"], "later")
    assert state.failed == ("software-integrity",)
    with pytest.raises(FipsError) as info:
        state.check()
    exc = info.value
    assert (exc.code, status_of(exc), exc.server_fault) == ("fips_error", 503, True)
    problem = problem_of(exc)
    assert (problem.kind, problem.status) == ("serverInternal", 503)
    assert "software-integrity" in problem.detail


def _sealed(key: ec.EllipticCurvePrivateKey, manifest: Manifest, **changes: Any) -> Sealed:
    data = manifest.canonical()
    fields: dict[str, Any] = {
        "manifest_text": data.decode(), "sha256": hashlib.sha256(data).hexdigest(),
        "algorithm": "ecdsa-sha256", "signature": key.sign(data, ec.ECDSA(hashes.SHA256())),
        "key_label": "audit", "officers": ["alice", "bob"], "sealed_at": "2026-12-06T00:00:00Z"}
    fields.update(changes)
    return Sealed(**fields)


def test_a_sealed_manifest_verifies_and_any_change_to_it_does_not() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    manifest = Manifest({"a.py": "11" * 32, "b/c.py": "22" * 32})
    assert verify_sealed(_sealed(key, manifest), key.public_key()) == manifest
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(SealError, match="does not verify"):
        verify_sealed(_sealed(key, manifest), other.public_key())
    changed = Manifest({"a.py": "33" * 32, "b/c.py": "22" * 32})
    with pytest.raises(SealError, match="SHA-256"):
        verify_sealed(_sealed(key, manifest, manifest_text=changed.canonical().decode()),
                      key.public_key())
    resealed = _sealed(key, manifest, manifest_text=changed.canonical().decode(),
                       sha256=hashlib.sha256(changed.canonical()).hexdigest())
    with pytest.raises(SealError, match="does not verify"):
        verify_sealed(resealed, key.public_key())
    assert base64.b64encode(_sealed(key, manifest).signature)


def test_load_sealed_reads_the_installation_row_and_refuses_a_broken_one(db: Database) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    manifest = Manifest({"a.py": "11" * 32})
    good = _sealed(key, manifest)
    with db.sessions() as session:
        assert load_sealed(session) is None
    now = datetime.now(UTC)
    doc = {"manifest": good.manifest_text, "sha256": good.sha256, "algorithm": good.algorithm,
           "signature": base64.b64encode(good.signature).decode(), "key_label": "audit",
           "officers": ["alice", "bob"], "sealed_at": good.sealed_at}
    with db.transaction() as session:
        session.add(Installation(key="manifest", value=json.dumps(doc), recorded_at=now))
    with db.sessions() as session:
        loaded = load_sealed(session)
    assert loaded == good
    assert verify_sealed(loaded, key.public_key()) == manifest
    for broken in ({**doc, "signature": "not base64!"}, {**doc, "manifest": ""}, "[1, 2]"):
        with db.transaction() as session:
            row = session.get(Installation, "manifest")
            assert row is not None
            row.value = broken if isinstance(broken, str) else json.dumps(broken)
        with db.sessions() as session, pytest.raises(SealError, match="cannot be read"):
            load_sealed(session)
