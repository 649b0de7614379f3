"""Typed schema of an HSM profile (``hsm_profiles/*.yaml``).

A profile says how to reach one token: which PKCS#11 module, which token,
where its PIN comes from and what the appliance may do with it. Unknown keys
are rejected so a misspelt setting fails loudly instead of being ignored.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from appliance import strict_yaml
from appliance.errors import ConfigError
from appliance.x509.algorithms import ALL_KEY_TYPES, ALL_MECHANISMS, KeyType, Mechanism


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PinSource(_Strict):
    """Where the user PIN is read from. Exactly one source; a literal PIN is not a source."""

    file: Path | None = None
    env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    credential: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.@-]+$")

    @model_validator(mode="after")
    def _exactly_one(self) -> PinSource:
        given = [s for s in (self.file, self.env, self.credential) if s is not None]
        if len(given) != 1:
            raise ValueError("pin: give exactly one of 'file', 'env' or 'credential'")
        return self

    def describe(self) -> str:
        """Where the PIN lives, for messages; never the PIN itself."""
        if self.file is not None:
            return f"file {self.file}"
        if self.env is not None:
            return f"environment variable {self.env}"
        return f"systemd credential {self.credential}"


class TokenSelector(_Strict):
    label: str | None = Field(default=None, max_length=32)
    serial: str | None = Field(default=None, max_length=16)

    @model_validator(mode="after")
    def _one_of(self) -> TokenSelector:
        if self.label is None and self.serial is None:
            raise ValueError("token: give 'label' or 'serial'")
        return self


class HsmProfile(_Strict):
    """One token the appliance signs with."""

    name: str = Field(max_length=64)
    module: Path
    token: TokenSelector
    pin: PinSource
    pool_size: int = Field(default=4, ge=1, le=64)
    max_retries: int = Field(default=3, ge=0, le=10)
    retry_delay_seconds: float = Field(default=0.2, ge=0, le=30)
    # When the token seems gone (no session opens, a known key is not found), the module is
    # re-initialised at most this often, so the service comes back by itself when the token
    # does, without hammering it meanwhile.
    reconnect_interval_seconds: float = Field(default=5.0, ge=0.5, le=3600)
    # What this token may be used for, within what the algorithm table approves (both are
    # asked: a profile can narrow the table for one token, never widen it).
    allowed_key_types: tuple[KeyType, ...] = ALL_KEY_TYPES
    allowed_mechanisms: tuple[Mechanism, ...] = ALL_MECHANISMS
    module_env: dict[str, str] = Field(default_factory=dict)
    # Whether this token's FIPS 140-3 validated module includes EdDSA (FIPS 186-5): only then
    # may the FIPS mode accept Ed25519 subject keys (``algorithms.fips_table``). Off unless a
    # profile says so: SoftHSM and most validated modules do not.
    eddsa_validated: bool = False
    # Processes take this lock (flock) while they initialise the module, find the token and
    # log in: SoftHSM fails when several processes do that at the same instant.
    startup_lock: Path | None = None

    def startup_lock_path(self) -> Path:
        """The lock file: as configured, else in this user's private runtime folder
        (``$RUNTIME_DIRECTORY`` under systemd, ``$XDG_RUNTIME_DIR``, or a 0700 folder of
        the user's own in the temp dir); never a guessable name in a shared folder."""
        if self.startup_lock is not None:
            return self.startup_lock
        ident = hashlib.sha256(
            f"{self.module}|{self.token.label}|{self.token.serial}".encode()
        ).hexdigest()[:16]
        runtime = os.environ.get("RUNTIME_DIRECTORY") or os.environ.get("XDG_RUNTIME_DIR")
        if runtime:
            folder = Path(runtime.split(":")[0])
        else:
            folder = Path(tempfile.gettempdir()) / f"appliance-{os.geteuid()}"
        return folder / f"pkcs11-{ident}.lock"

    def resolve(self, base: Path) -> HsmProfile:
        """Make relative paths absolute against ``base`` (the file that named them)."""
        pin = self.pin
        if pin.file is not None and not pin.file.is_absolute():
            pin = pin.model_copy(update={"file": base / pin.file})
        env = {
            k: v.replace("${profile_dir}", str(base)) for k, v in self.module_env.items()
        }
        module = self.module if self.module.is_absolute() else base / self.module
        lock = self.startup_lock
        if lock is not None and not lock.is_absolute():
            lock = base / lock
        return self.model_copy(
            update={"pin": pin, "module_env": env, "module": module, "startup_lock": lock}
        )


def load_profile(path: Path) -> HsmProfile:
    """Read and validate a profile file; relative paths resolve against its folder."""
    text = strict_yaml.read_text(path, "HSM profile")
    return parse_profile(text, path.parent.resolve(), source=str(path))


def parse_profile(text: str, base: Path, source: str = "<profile>") -> HsmProfile:
    return strict_yaml.parse(text, HsmProfile, source, "HSM profile").resolve(base)


MAX_PIN_BYTES = 256


def read_pin(source: PinSource) -> str:
    """Read the PIN from its source. The value is returned, never logged or put in a message."""
    if source.file is not None:
        raw = _read_secret_file(source.file)
    elif source.env is not None:
        value = os.environ.get(source.env)
        if value is None:
            raise ConfigError(f"PIN source {source.describe()} is not set")
        raw = value
    else:
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if not creds:
            raise ConfigError(
                f"PIN source {source.describe()}: CREDENTIALS_DIRECTORY is not set "
                "(run under systemd with LoadCredential=)"
            )
        raw = _read_secret_file(Path(creds) / str(source.credential))
    pin = raw.rstrip("\r\n")
    if not pin:
        raise ConfigError(f"PIN source {source.describe()} is empty")
    if len(pin.encode()) > MAX_PIN_BYTES:
        raise ConfigError(f"PIN source {source.describe()} is longer than {MAX_PIN_BYTES} bytes")
    return pin


def _read_secret_file(path: Path) -> str:
    try:
        st = path.stat()
        if st.st_size > MAX_PIN_BYTES + 2:
            raise ConfigError(f"PIN file {path} is too large")
        if st.st_mode & 0o077:
            raise ConfigError(
                f"PIN file {path} is readable by group or others (mode {st.st_mode & 0o777:o}); "
                "chmod 600 it"
            )
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read PIN file {path}: {exc.strerror}") from exc
