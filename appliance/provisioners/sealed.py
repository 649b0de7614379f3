"""Token-signing keys of JWK provisioners, sealed under a password the way step-ca hands
them out, and the key files an operator may bring instead.

A sealed key is a compact JWE (RFC 7516) of the private JWK (``cty: jwk+json``):
PBES2-HS256+A128KW key wrapping (RFC 7518 §4.8) with 600,000 PBKDF2 iterations and
A256GCM content encryption, the shape of step-ca's ``encryptedKey``, so the file can be
handed to the key's owner and opened by other JOSE implementations. The JOSE work is
jwcrypto's; this module only fixes the algorithms, bounds what it accepts (a hostile file
must not pin a CPU with a huge iteration count) and turns failures into one clear error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import common as jose_common
from jwcrypto import jwa, jwe, jwk

from appliance.errors import ApplianceError

ALG = "PBES2-HS256+A128KW"
ENC = "A256GCM"
CTY = "jwk+json"
P2C = 600_000
# Bounds on what is opened: other tools' files (step's older 100,000 included) open; a
# file asking for more than this many PBKDF2 rounds is refused before any are run.
MIN_P2C = 1000
MAX_P2C = 2_000_000
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_BYTES = 1024
MAX_KEY_FILE_BYTES = 64 * 1024

# jwcrypto refuses p2c above 16,384 process-wide; the header is bounded here instead.
jwa.default_max_pbkdf2_iterations = max(jwa.default_max_pbkdf2_iterations, MAX_P2C)

PasswordSource = Callable[[], str]


class SealError(ApplianceError):
    code = "sealed_key_error"


def check_new_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise SealError(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    return _bounded(password)


def _bounded(password: str) -> str:
    if not password:
        raise SealError("the password is empty")
    try:
        size = len(password.encode("utf-8"))
    except UnicodeEncodeError:
        raise SealError("the password is not valid text") from None
    if size > MAX_PASSWORD_BYTES:
        raise SealError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
    return password


def read_password_file(path: Path) -> str:
    """The first line of PATH (a trailing newline is not part of the password)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_PASSWORD_BYTES + 3)
    except OSError as exc:
        raise SealError(f"cannot read the password file {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SealError(f"the password file {path} is not UTF-8 text") from None
    lines = text.splitlines()
    password = lines[0] if lines else ""
    if len(data) > MAX_PASSWORD_BYTES + 2 or len(lines) > 1:
        raise SealError(f"the password file {path} must hold one line of at most "
                        f"{MAX_PASSWORD_BYTES} bytes")
    return _bounded(password)


def private_jwk(key: ec.EllipticCurvePrivateKey) -> jwk.JWK:
    k = jwk.JWK.from_pyca(key)
    # The same kid as the public JWK the appliance stores (RFC 7638 thumbprint).
    k.update({"kid": k.thumbprint(), "alg": "ES256", "use": "sig"})
    return k


def seal(key: ec.EllipticCurvePrivateKey, password: str, *, p2c: int = P2C) -> str:
    """The compact JWE of KEY's private JWK under PASSWORD."""
    check_new_password(password)
    if not MIN_P2C <= p2c <= MAX_P2C:
        raise SealError(f"p2c must be between {MIN_P2C} and {MAX_P2C}")
    token = jwe.JWE(private_jwk(key).export_private().encode(),
                    protected={"alg": ALG, "enc": ENC, "cty": CTY, "p2c": p2c})
    token.add_recipient(jwk.JWK.from_password(password))
    out: str = token.serialize(compact=True)
    return out


def header(text: str) -> dict[str, Any]:
    """The protected header of a compact or JSON JWE, checked before anything is derived."""
    try:
        token = jwe.JWE()
        token.deserialize(text)  # no key: parses and decodes the header only
        raw = token.objects.get("protected")
        head: Any = json.loads(raw) if isinstance(raw, str) else None
    except (jose_common.JWException, ValueError, TypeError) as exc:
        raise SealError(f"not a JWE: {exc}") from None
    if not isinstance(head, dict):
        raise SealError("the JWE has no protected header")
    if head.get("alg") != ALG or head.get("enc") != ENC:
        raise SealError(f"the sealed key must use alg {ALG} and enc {ENC} "
                        f"(it has {head.get('alg')!r}, {head.get('enc')!r})")
    p2c = head.get("p2c")
    if not isinstance(p2c, int) or isinstance(p2c, bool) or not MIN_P2C <= p2c <= MAX_P2C:
        raise SealError(f"the sealed key's p2c must be an integer from {MIN_P2C} to {MAX_P2C}")
    if "zip" in head:
        raise SealError("a compressed sealed key is refused")
    return head


def unseal(text: str, password: str) -> ec.EllipticCurvePrivateKey:
    header(text)
    token = jwe.JWE()
    token.allowed_algs = [ALG, ENC]
    try:
        token.deserialize(text, key=jwk.JWK.from_password(_bounded(password)))
        payload: bytes = token.payload
    except (jose_common.JWException, ValueError, TypeError):
        raise SealError("cannot open the sealed key: wrong password, or the file is "
                        "damaged") from None
    return _from_jwk_text(payload, "the sealed key")


def _from_jwk_text(data: bytes | str, what: str) -> ec.EllipticCurvePrivateKey:
    try:
        k = jwk.JWK.from_json(data)
        if not k.has_private:
            raise SealError(f"{what} holds no private key")
        key = k.get_op_key("sign")
    except (jose_common.JWException, ValueError, TypeError) as exc:
        raise SealError(f"{what} is not a private JWK: {exc}") from None
    return _p256(key, what)


def _p256(key: object, what: str) -> ec.EllipticCurvePrivateKey:
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise SealError(f"{what} must be an EC P-256 key (tokens are ES256)")
    return key


def is_sealed(data: bytes) -> bool:
    text = data.strip()
    return (text.count(b".") == 4 and text.startswith(b"eyJ")) or \
        (text.startswith(b"{") and b'"ciphertext"' in text)


def load_private_key(path: Path, password: PasswordSource) -> ec.EllipticCurvePrivateKey:
    """A token-signing key from PATH: a sealed JWE (compact or JSON), or a key its owner
    keeps in the clear or under a password (PKCS#8 PEM) or as a private JWK. PASSWORD is
    asked only when the file is encrypted."""
    data = _read_bounded(path)
    where = str(path)
    if is_sealed(data):
        return unseal(data.decode("ascii", errors="replace").strip(), password())
    stripped = data.strip()
    if stripped.startswith(b"{"):
        return _from_jwk_text(stripped, where)
    if b"-----BEGIN" not in stripped:
        raise SealError(f"{where} is neither a sealed key (JWE), a JWK nor a PEM private key")
    secret = password().encode() if b"ENCRYPTED" in stripped else None
    try:
        key = serialization.load_pem_private_key(stripped, secret)
    except (ValueError, TypeError) as exc:
        reason = "wrong password, or the file is damaged" if secret else str(exc)
        raise SealError(f"cannot load the private key {where}: {reason}") from None
    return _p256(key, where)


def load_public_key(data: bytes, what: str) -> ec.EllipticCurvePublicKey:
    """The public key of a key its owner keeps: PEM (SubjectPublicKeyInfo) or a public JWK.
    A private key is refused: the appliance must never be given it."""
    if len(data) > MAX_KEY_FILE_BYTES:
        raise SealError(f"{what} is larger than {MAX_KEY_FILE_BYTES} bytes")
    stripped = data.strip()
    if b"PRIVATE KEY" in stripped or is_sealed(stripped):
        raise SealError(f"{what} holds a private key: give only the public key (the "
                        "appliance never sees the private key of an owner-held key)")
    try:
        if stripped.startswith(b"{"):
            k = jwk.JWK.from_json(stripped)
            if k.has_private:
                raise SealError(f"{what} is a private JWK (it has \"d\"): give only the "
                                "public key")
            key: object = k.get_op_key("verify")
        else:
            key = serialization.load_pem_public_key(stripped)
    except (jose_common.JWException, ValueError, TypeError) as exc:
        raise SealError(f"{what} is not a public key (PEM or JWK): {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise SealError(f"{what} must be an EC P-256 public key (tokens are ES256)")
    return key



def _read_bounded(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise SealError(f"cannot read the key file {path}: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise SealError(f"{path} is larger than {MAX_KEY_FILE_BYTES} bytes")
    return data


def shred(path: Path) -> None:
    """Overwrite PATH with random bytes, flush it to disk, then unlink it. On copy-on-write
    or journalling file systems (and SSDs) old blocks may survive: this is best effort,
    the reason plaintext keys should never have been written."""
    try:
        size = path.stat().st_size
        with open(path, "r+b", buffering=0) as fh:
            fh.write(os.urandom(size))
            os.fsync(fh.fileno())
    except FileNotFoundError:
        return
    path.unlink()
