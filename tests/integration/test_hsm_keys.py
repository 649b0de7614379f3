"""Key generation in a real SoftHSM token: attributes, uniqueness, lookup, inspection by OpenSC."""

from __future__ import annotations

import shutil

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pkcs11 import Attribute

from appliance.errors import HsmError, KeyExistsError, KeyNotFoundError, KeyPolicyError
from appliance.hsm import keys
from appliance.hsm.pool import PooledSession, SessionPool
from appliance.hsm.softhsm import find_module
from tests.conftest import TestToken, unique_label
from tests.ptyrun import run_with_prompt

ALL_TYPES = ["ec-p256", "ec-p384", "ec-p521", "rsa-2048", "rsa-3072", "rsa-4096"]


@pytest.fixture(scope="module")
def generated(pool: SessionPool) -> dict[str, keys.KeyInfo]:
    return {kt: keys.generate_keypair(pool, unique_label(kt), kt) for kt in ALL_TYPES}


@pytest.mark.parametrize("key_type", ALL_TYPES)
def test_generated_key_is_sensitive_never_extractable_and_right_shape(
    generated: dict[str, keys.KeyInfo], key_type: str
) -> None:
    info = generated[key_type]
    assert info.sensitive and info.always_sensitive and info.never_extractable
    assert not info.extractable
    assert len(info.id) == 16
    spec = keys.KeySpec.parse(key_type)
    if spec.algorithm == "rsa":
        assert isinstance(info.public_key, rsa.RSAPublicKey)
        assert info.public_key.key_size == spec.bits
        assert info.public_key.public_numbers().e == 65537
    else:
        assert isinstance(info.public_key, ec.EllipticCurvePublicKey)
        assert info.public_key.curve.key_size == spec.bits


def test_key_ids_are_random_and_distinct(generated: dict[str, keys.KeyInfo]) -> None:
    ids = {info.id for info in generated.values()}
    assert len(ids) == len(generated)


def test_existing_label_is_refused_and_nothing_is_added(pool: SessionPool) -> None:
    label = unique_label("dup")
    first = keys.generate_keypair(pool, label, "ec-p256")
    before = len(keys.list_keys(pool))
    with pytest.raises(KeyExistsError, match=label):
        keys.generate_keypair(pool, label, "ec-p384")
    assert len(keys.list_keys(pool)) == before
    assert keys.find_key(pool, label).id == first.id


def test_lookup_by_label_and_public_key(pool: SessionPool,
                                        generated: dict[str, keys.KeyInfo]) -> None:
    info = generated["ec-p256"]
    found = keys.find_key(pool, info.label, info.public_key)
    assert found.id == info.id and found.spki_der == info.spki_der
    other = generated["ec-p384"].public_key
    with pytest.raises(KeyNotFoundError, match="expected public key"):
        keys.find_key(pool, info.label, other)
    with pytest.raises(KeyNotFoundError, match="no private key"):
        keys.find_key(pool, unique_label("absent"))


def test_listing_reports_every_generated_key(pool: SessionPool,
                                             generated: dict[str, keys.KeyInfo]) -> None:
    listed = {k.label: k for k in keys.list_keys(pool)}
    for info in generated.values():
        assert listed[info.label].id == info.id
        row = listed[info.label].as_dict()
        assert row["sensitive"] is True and row["extractable"] is False
        assert row["never_extractable"] is True and row["always_sensitive"] is True


def test_profile_can_forbid_key_types(token: TestToken) -> None:
    restricted = SessionPool(token.profile(allowed_key_types=["ec-p384"]))
    try:
        with pytest.raises(KeyPolicyError, match="not allowed"):
            keys.generate_keypair(restricted, unique_label(), "ec-p256")
    finally:
        restricted.close()


@pytest.mark.parametrize("bad", ["", "x" * 65, "tab\there"])
def test_bad_labels_are_refused(pool: SessionPool, bad: str) -> None:
    with pytest.raises(KeyPolicyError):
        keys.generate_keypair(pool, bad, "ec-p256")


def test_unknown_key_type_is_refused(pool: SessionPool) -> None:
    with pytest.raises(KeyPolicyError, match="unknown key type"):
        keys.generate_keypair(pool, unique_label(), "ec-p192")


def _pkcs11_tool(token: TestToken, *args: str) -> tuple[int, str]:
    """OpenSC's pkcs11-tool against the test token, the PIN typed at its prompt on a
    pseudo-terminal (never on the command line)."""
    cmd = ["pkcs11-tool", "--module", str(find_module()), "--token-label", token.label,
           "--login", *args]
    return run_with_prompt(cmd, "PIN:", token.user_pin,
                           env={"SOFTHSM2_CONF": str(token.conf), "PATH": "/usr/bin:/bin"})


@pytest.mark.skipif(shutil.which("pkcs11-tool") is None, reason="opensc not installed")
def test_pkcs11_tool_sees_private_keys_but_no_key_value(
    token: TestToken, generated: dict[str, keys.KeyInfo]
) -> None:
    rc, out = _pkcs11_tool(token, "--list-objects", "--type", "privkey")
    assert rc == 0, out
    for info in generated.values():
        assert info.label in out
    # OpenSC prints the protection flags of each private key object.
    blocks = out.split("Private Key Object")[1:]
    assert blocks
    for block in blocks:
        assert "sensitive" in block and "never extractable" in block
        assert "extractable" not in block.replace("never extractable", "")
    assert "value" not in out.lower()


@pytest.mark.parametrize("key_type", ["ec-p256", "rsa-2048"])
def test_token_refuses_to_reveal_private_values(
    pool: SessionPool, generated: dict[str, keys.KeyInfo], key_type: str
) -> None:
    info = generated[key_type]
    secret_attr = Attribute.VALUE if key_type.startswith("ec") else Attribute.PRIVATE_EXPONENT

    def read(ps: PooledSession) -> object:
        return keys.private_key_object(ps, info)[secret_attr]

    with pytest.raises(HsmError, match="AttributeSensitive"):
        pool.run(read)
