"""External Account Binding (RFC 8555 §7.3.4): the keys the operator hands out, sealed at
rest, and the check of the binding a newAccount request carries.

An EAB HMAC key is a shared secret, so it cannot be stored as a hash; it is sealed with
AES-256-GCM under a wrapping key in the data directory's ``secrets/`` (mode 0600, made
once), with the key id as associated data so a sealed value cannot be moved to another id.
The database alone therefore never yields a usable EAB key.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from appliance import secretfile
from appliance.acme import jws
from appliance.acme.problems import AcmeProblem
from appliance.x509 import algorithms

WRAP_KEY_NAME = "acme-eab-wrap.key"


def wrap_key_path(base_dir: Path) -> Path:
    return base_dir / "secrets" / WRAP_KEY_NAME


def ensure_wrap_key(base_dir: Path) -> Path:
    """The wrapping key's file, made now if there is none yet: nodes of one cluster must
    all hold the same one (an EAB key sealed on one node is unsealed on any)."""
    _wrap_key(base_dir, True)
    return wrap_key_path(base_dir)


def _wrap_key(base_dir: Path, create: bool) -> bytes:
    path = wrap_key_path(base_dir)
    if create and not path.exists():
        path.parent.mkdir(mode=0o700, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # made by another process first
            secretfile.write_new(path, AESGCM.generate_key(256))
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise AcmeProblem("serverInternal", f"the EAB wrapping key cannot be read: "
                          f"{exc.strerror}") from None
    if len(key) != 32:
        raise AcmeProblem("serverInternal", "the EAB wrapping key is damaged")
    return key


def seal(base_dir: Path, key_id: str, hmac_key: bytes) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(_wrap_key(base_dir, True)).encrypt(nonce, hmac_key, key_id.encode())


def unseal(base_dir: Path, key_id: str, sealed: bytes) -> bytes:
    try:
        return AESGCM(_wrap_key(base_dir, False)).decrypt(sealed[:12], sealed[12:],
                                                         key_id.encode())
    except Exception:
        raise AcmeProblem("serverInternal", "an EAB key could not be unsealed") from None


def binding_key_id(binding: Any) -> str:
    """The EAB key id a binding names (read before anything is trusted, to look the key up)."""
    env = jws.parse(binding, "externalAccountBinding")
    kid = env.protected.get("kid")
    if not isinstance(kid, str) or not 1 <= len(kid) <= 64:
        raise AcmeProblem("malformed", "externalAccountBinding needs a kid (the EAB key id)")
    return kid


def check_binding(binding: Any, *, account_jwk: dict[str, Any], url: str,
                  hmac_key: bytes) -> None:
    """The binding is a JWS by the EAB key over the account key, for this URL, with no nonce."""
    env = jws.parse(binding, "externalAccountBinding")
    p = env.protected
    alg = p.get("alg")
    if not isinstance(alg, str) or not algorithms.jws_alg_allowed(alg, "eab"):
        approved = algorithms.one_of(algorithms.jws_algs('eab'))
        raise algorithms.mark(AcmeProblem("malformed", algorithms.refusal_text(
            f"externalAccountBinding must use {approved}",
            f"externalAccountBinding MAC {alg!r}", approved)))
    if "nonce" in p or "jwk" in p:
        raise AcmeProblem("malformed", "externalAccountBinding must not carry a nonce or jwk")
    if p.get("url") != url:
        raise AcmeProblem("unauthorized", "externalAccountBinding url is not the newAccount URL")
    try:
        inner = json.loads(env.payload)
    except (ValueError, UnicodeDecodeError):
        raise AcmeProblem("malformed", "externalAccountBinding payload is not a JWK") from None
    if inner != account_jwk:
        raise AcmeProblem("unauthorized", "externalAccountBinding is over another key than the "
                          "account's")
    expected = hmac.new(hmac_key, env.signing_input, algorithms.HMAC_HASH[alg]).digest()
    if not hmac.compare_digest(expected, env.signature):
        raise AcmeProblem("unauthorized", "externalAccountBinding MAC does not verify")
