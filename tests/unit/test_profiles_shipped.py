"""The HSM profiles shipped in hsm_profiles/, and the profile schema and PIN sources they rely on.

No token is needed: profiles are parsed, never loaded (module paths need not exist).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import yaml

from appliance.errors import ConfigError
from appliance.hsm.profile import (
    MAX_PIN_BYTES,
    HsmProfile,
    PinSource,
    load_profile,
    parse_profile,
    read_pin,
)
from appliance.x509.algorithms import ALL_KEY_TYPES, ALL_MECHANISMS

PROFILES_DIR = Path(__file__).resolve().parents[2] / "hsm_profiles"
SHIPPED = sorted(PROFILES_DIR.glob("*.yaml"))
EXPECTED = {"softhsm", "yubihsm2", "luna", "aws-cloudhsm", "nshield"}
PIN = "s3cret-PIN-value-9731"  # a throw-away test value

VALID = """
name: t
module: /usr/lib/softhsm/libsofthsm2.so
token: {label: appliance}
pin: {env: APPLIANCE_HSM_PIN}
"""


def _parse(text: str, base: Path = Path("/base")) -> HsmProfile:
    return parse_profile(text, base, source="test.yaml")


def _without_pin(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("pin:"))


# -- the shipped profiles ----------------------------------------------------------


def test_every_expected_profile_is_shipped() -> None:
    assert {p.stem for p in SHIPPED} >= EXPECTED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_profile_parses(path: Path) -> None:
    profile = load_profile(path)
    assert profile.name == path.stem
    assert profile.module.is_absolute()
    assert profile.token.label or profile.token.serial
    assert set(profile.allowed_key_types) <= set(ALL_KEY_TYPES)
    assert set(profile.allowed_mechanisms) <= set(ALL_MECHANISMS)
    for value in profile.module_env.values():
        assert "${" not in value, "every placeholder is substituted"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_profile_names_a_pin_source_not_a_pin(path: Path) -> None:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    pin = doc["pin"]
    assert isinstance(pin, dict) and len(pin) == 1
    (kind, value), = pin.items()
    # A server reads its PIN from the environment or from systemd, never from a file
    # checked in next to the profile.
    assert kind in {"env", "credential"}, f"{path.name}: pin from {kind}"
    assert isinstance(value, str) and value


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_profile_keeps_its_startup_lock_out_of_tmp(path: Path) -> None:
    # /tmp is private per systemd unit (PrivateTmp=yes) and writable by every local user.
    # Judge the path as written in the file: the checkout itself may live under /tmp.
    raw = yaml.safe_load(path.read_text())["startup_lock"]
    lock = load_profile(path).startup_lock
    assert lock is not None and lock.is_absolute()
    if Path(raw).is_absolute():
        assert not Path(raw).is_relative_to(tempfile.gettempdir())
        assert not Path(raw).is_relative_to("/tmp")
    else:
        assert lock.is_relative_to(path.parent.resolve().parent)


def test_softhsm_profile_points_at_the_data_directory_store() -> None:
    profile = load_profile(PROFILES_DIR / "softhsm.yaml")
    assert profile.pin.env == "APPLIANCE_HSM_PIN"
    assert profile.token.label == "appliance"
    conf = Path(profile.module_env["SOFTHSM2_CONF"])
    data = PROFILES_DIR.parent / "data" / "softhsm"
    assert conf.resolve() == data / "softhsm2.conf"
    assert profile.startup_lock is not None
    assert profile.startup_lock.resolve() == data / "pkcs11.lock"


def test_systemd_profiles_use_the_credential_the_units_load() -> None:
    for name in ("yubihsm2", "luna", "aws-cloudhsm", "nshield"):
        assert load_profile(PROFILES_DIR / f"{name}.yaml").pin.credential == "hsm-pin"


# -- the schema --------------------------------------------------------------------


def test_minimal_profile_gets_the_defaults() -> None:
    profile = _parse(VALID)
    assert profile.pool_size == 4
    assert profile.allowed_key_types == ALL_KEY_TYPES
    assert profile.allowed_mechanisms == ALL_MECHANISMS


@pytest.mark.parametrize("text", [
    VALID + "pool_sise: 4\n",                                            # misspelt top-level key
    VALID.replace("{label: appliance}", "{label: appliance, slot: 0}"),  # unknown key in token
], ids=["top-level", "token"])
def test_unknown_key_is_rejected(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid HSM profile") as err:
        _parse(text)
    assert "Extra inputs are not permitted" in str(err.value)


def test_unknown_key_in_pin_is_rejected() -> None:
    text = VALID.replace("pin: {env: APPLIANCE_HSM_PIN}", "pin: {env: X, value: abc}")
    with pytest.raises(ConfigError, match="pin"):
        _parse(text)


def test_two_pin_sources_are_rejected() -> None:
    text = VALID.replace("pin: {env: APPLIANCE_HSM_PIN}",
                         "pin: {env: APPLIANCE_HSM_PIN, file: /etc/appliance/hsm-pin}")
    with pytest.raises(ConfigError, match="exactly one of 'file', 'env' or 'credential'"):
        _parse(text)


@pytest.mark.parametrize("pin_line", ["pin: {}", None], ids=["empty", "missing"])
def test_no_pin_source_is_rejected(pin_line: str | None) -> None:
    text = _without_pin(VALID) + ("\n" + pin_line if pin_line else "") + "\n"
    with pytest.raises(ConfigError, match="pin"):
        _parse(text)


@pytest.mark.parametrize("literal", ['"1234"', "1234", f'"{PIN}"'])
def test_a_literal_pin_is_rejected_without_repeating_it(literal: str) -> None:
    text = VALID.replace("pin: {env: APPLIANCE_HSM_PIN}", f"pin: {literal}")
    with pytest.raises(ConfigError, match="pin") as err:
        _parse(text)
    assert literal.strip('"') not in str(err.value)


def test_a_second_yaml_document_is_rejected() -> None:
    with pytest.raises(ConfigError, match="exactly one YAML mapping"):
        _parse(VALID + "---\nname: other\n")


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"])
def test_anything_but_one_mapping_is_rejected(text: str) -> None:
    with pytest.raises(ConfigError, match="exactly one YAML mapping"):
        _parse(text)


def test_invalid_yaml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        _parse("name: [unclosed\n")


@pytest.mark.parametrize("field,value", [
    ("pool_size", "0"), ("pool_size", "65"), ("max_retries", "11"),
    ("allowed_key_types", "[rsa-1024]"), ("allowed_mechanisms", "[SHA1_RSA_PKCS]"),
])
def test_out_of_range_values_are_rejected(field: str, value: str) -> None:
    with pytest.raises(ConfigError, match=field):
        _parse(VALID + f"{field}: {value}\n")


def test_token_needs_label_or_serial() -> None:
    with pytest.raises(ConfigError, match="token"):
        _parse(VALID.replace("token: {label: appliance}", "token: {}"))


def test_relative_paths_and_profile_dir_resolve_against_the_profile(tmp_path: Path) -> None:
    path = tmp_path / "hsm.yaml"
    path.write_text(
        "name: t\nmodule: lib/module.so\ntoken: {label: a}\npin: {file: secrets/user.pin}\n"
        "module_env: {SOFTHSM2_CONF: '${profile_dir}/softhsm/softhsm2.conf'}\n",
        encoding="utf-8",
    )
    profile = load_profile(path)
    base = tmp_path.resolve()
    assert profile.module == base / "lib" / "module.so"
    assert profile.pin.file == base / "secrets" / "user.pin"
    assert profile.module_env["SOFTHSM2_CONF"] == f"{base}/softhsm/softhsm2.conf"


def test_missing_profile_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read HSM profile"):
        load_profile(tmp_path / "nope.yaml")


# -- reading the PIN ---------------------------------------------------------------


def _secret_file(path: Path, content: str, mode: int = 0o600) -> Path:
    path.write_text(content, encoding="utf-8")
    path.chmod(mode)
    return path


def test_pin_from_file(tmp_path: Path) -> None:
    pin_file = _secret_file(tmp_path / "user.pin", PIN + "\n")
    assert read_pin(PinSource(file=pin_file)) == PIN


def test_pin_from_file_with_crlf(tmp_path: Path) -> None:
    pin_file = _secret_file(tmp_path / "user.pin", PIN + "\r\n")
    assert read_pin(PinSource(file=pin_file)) == PIN


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_pin_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    pin_file = _secret_file(tmp_path / "user.pin", PIN + "\n", mode)
    with pytest.raises(ConfigError) as err:
        read_pin(PinSource(file=pin_file))
    message = str(err.value)
    assert str(pin_file) in message
    assert f"{mode:o}" in message and "chmod 600" in message
    assert PIN not in message


def test_pin_file_missing_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read PIN file"):
        read_pin(PinSource(file=tmp_path / "absent.pin"))


def test_pin_file_empty_is_refused(tmp_path: Path) -> None:
    pin_file = _secret_file(tmp_path / "user.pin", "\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_pin(PinSource(file=pin_file))


def test_pin_file_too_large_is_refused_without_reading_it(tmp_path: Path) -> None:
    pin_file = _secret_file(tmp_path / "user.pin", PIN * 20)
    with pytest.raises(ConfigError, match="too large") as err:
        read_pin(PinSource(file=pin_file))
    assert PIN not in str(err.value)


def test_pin_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_TEST_PIN", PIN)
    assert read_pin(PinSource(env="APPLIANCE_TEST_PIN")) == PIN


def test_pin_env_unset_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPLIANCE_TEST_PIN", raising=False)
    with pytest.raises(ConfigError, match="environment variable APPLIANCE_TEST_PIN is not set"):
        read_pin(PinSource(env="APPLIANCE_TEST_PIN"))


def test_pin_env_empty_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_TEST_PIN", "")
    with pytest.raises(ConfigError, match="is empty"):
        read_pin(PinSource(env="APPLIANCE_TEST_PIN"))


def test_pin_env_too_long_is_refused_without_repeating_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    long_pin = "x" * (MAX_PIN_BYTES + 1)
    monkeypatch.setenv("APPLIANCE_TEST_PIN", long_pin)
    with pytest.raises(ConfigError, match="longer than") as err:
        read_pin(PinSource(env="APPLIANCE_TEST_PIN"))
    assert long_pin not in str(err.value)


@pytest.mark.parametrize("name", ["1BAD", "has-dash", "has space", ""])
def test_env_name_must_be_a_variable_name(name: str) -> None:
    with pytest.raises(ValueError, match="env"):
        PinSource(env=name)


def test_pin_from_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    _secret_file(creds / "hsm-pin", PIN + "\n", 0o400)  # as systemd leaves it
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_pin(PinSource(credential="hsm-pin")) == PIN


def test_credential_without_credentials_directory_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError) as err:
        read_pin(PinSource(credential="hsm-pin"))
    message = str(err.value)
    assert "systemd credential hsm-pin" in message
    assert "CREDENTIALS_DIRECTORY is not set" in message and "LoadCredential=" in message


def test_credential_missing_from_the_directory_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(ConfigError, match=r"cannot read PIN file .*hsm-pin"):
        read_pin(PinSource(credential="hsm-pin"))


@pytest.mark.parametrize("name", ["../etc/shadow", "a/b", "with space", ""])
def test_credential_name_cannot_leave_the_directory(name: str) -> None:
    with pytest.raises(ValueError, match="credential"):
        PinSource(credential=name)


def test_describe_never_contains_the_pin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_TEST_PIN", PIN)
    pin_file = _secret_file(tmp_path / "user.pin", PIN)
    for source in (PinSource(env="APPLIANCE_TEST_PIN"), PinSource(file=pin_file),
                   PinSource(credential="hsm-pin")):
        assert PIN not in source.describe()
        assert PIN not in repr(source)


def test_no_error_message_contains_the_pin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every PIN failure path, with the PIN present somewhere it could leak from."""
    monkeypatch.setenv("APPLIANCE_TEST_PIN", PIN * 20)  # too long
    open_file = _secret_file(tmp_path / "open.pin", PIN, 0o644)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    _secret_file(tmp_path / "cred-open", PIN, 0o644)
    failures = [PinSource(env="APPLIANCE_TEST_PIN"), PinSource(file=open_file),
                PinSource(credential="cred-open")]
    for source in failures:
        with pytest.raises(ConfigError) as err:
            read_pin(source)
        assert PIN not in str(err.value), source.describe()
    assert os.environ["APPLIANCE_TEST_PIN"]  # untouched by reading
