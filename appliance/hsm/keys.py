"""Key generation, lookup and listing in the token.

Every CA key is generated inside the token with attributes that keep it
there (token object, private, sensitive, non-extractable, sign-only), then
read back and proven with a pairwise signature before anything may use it.
Any object with the same label refuses generation: a label names exactly one
key pair, so lookups by label can never pick the wrong key.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11e

from appliance.errors import HsmError, KeyExistsError, KeyNotFoundError, KeyPolicyError
from appliance.hsm.pool import PooledSession, SessionPool
from appliance.x509.algorithms import KeySpec, PublicKey, check_ca_key_type

# DER of the named-curve OIDs, as CKA_EC_PARAMS carries them.
_CURVES: dict[str, tuple[bytes, ec.EllipticCurve]] = {
    "p256": (bytes.fromhex("06082a8648ce3d030107"), ec.SECP256R1()),
    "p384": (bytes.fromhex("06052b81040022"), ec.SECP384R1()),
    "p521": (bytes.fromhex("06052b81040023"), ec.SECP521R1()),
}
_CURVE_BY_PARAMS = {der: (name, curve) for name, (der, curve) in _CURVES.items()}
LABEL_MAX = 64


@dataclass(frozen=True)
class KeyInfo:
    """What the appliance knows and reports about a key pair in the token."""

    label: str
    id: bytes
    spec: KeySpec
    public_key: PublicKey
    sensitive: bool
    extractable: bool
    always_sensitive: bool
    never_extractable: bool

    @property
    def spki_der(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def spki_sha256(self) -> str:
        return hashlib.sha256(self.spki_der).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "id": self.id.hex(),
            "key_type": self.spec.algorithm,
            "key_size": self.spec.bits if self.spec.algorithm == "rsa" else None,
            "curve": self.spec.curve,
            "sensitive": self.sensitive,
            "extractable": self.extractable,
            "always_sensitive": self.always_sensitive,
            "never_extractable": self.never_extractable,
            "spki_sha256": self.spki_sha256,
        }


def check_label(label: str) -> str:
    if not label or len(label) > LABEL_MAX or not label.isprintable():
        raise KeyPolicyError(f"key label must be 1..{LABEL_MAX} printable characters")
    return label


def generate_keypair(pool: SessionPool, label: str, key_type: str) -> KeyInfo:
    """Generate a sign-only key pair in the token, check it, and return what it is.

    Runs without retry: a generation must never happen twice. If a check
    after generation fails, both objects are destroyed and nothing is left.
    """
    spec = check_ca_key_type(key_type)
    check_label(label)
    if spec.name not in pool.profile.allowed_key_types:
        raise KeyPolicyError(f"key type {spec.name} is not allowed by HSM profile "
                             f"{pool.profile.name!r}")

    def work(ps: PooledSession) -> KeyInfo:
        session = ps.session
        if list(session.get_objects({Attribute.LABEL: label})):
            raise KeyExistsError(f"an object labelled {label!r} already exists in the token")
        key_id = session.generate_random(128)
        private_template: dict[Any, Any] = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
            Attribute.DECRYPT: False,
            Attribute.UNWRAP: False,
            Attribute.DERIVE: False,
            Attribute.MODIFIABLE: False,
        }
        public_template: dict[Any, Any] = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: False,
            Attribute.VERIFY: True,
            Attribute.ENCRYPT: False,
            Attribute.WRAP: False,
            Attribute.MODIFIABLE: False,
        }
        common: dict[str, Any] = {
            "id": key_id, "label": label, "store": True,
            "capabilities": MechanismFlag.SIGN | MechanismFlag.VERIFY,
            "public_template": public_template, "private_template": private_template,
        }
        try:
            if spec.algorithm == "rsa":
                public_template[Attribute.PUBLIC_EXPONENT] = b"\x01\x00\x01"
                pub, priv = session.generate_keypair(KeyType.RSA, spec.bits, **common)
            else:
                assert spec.curve is not None
                params = session.create_domain_parameters(
                    KeyType.EC, {Attribute.EC_PARAMS: _CURVES[spec.curve][0]}, local=True
                )
                pub, priv = params.generate_keypair(**common)
        except p11e.PKCS11Error as exc:
            raise HsmError(f"the token could not generate a {spec.name} key: {exc!r}") from exc
        try:
            info = _describe(label, key_id, pub, priv)
            _check_generated(info, spec)
            _pairwise_test(session, priv, info)
        except BaseException:
            for obj in (priv, pub):
                with contextlib.suppress(p11e.PKCS11Error):
                    obj.destroy()
            raise
        return info

    return pool.run(work, retry=False)


def list_keys(pool: SessionPool) -> list[KeyInfo]:
    """Every key pair (private key with its public key) in the token, by label."""

    def work(ps: PooledSession) -> list[KeyInfo]:
        out = []
        # One search at a time per session (PKCS#11): finish listing before the next lookup.
        privs = list(ps.session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
        for priv in privs:
            label, key_id = priv[Attribute.LABEL], priv[Attribute.ID]
            pubs = list(ps.session.get_objects(
                {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: key_id}
            ))
            if len(pubs) != 1:
                continue
            out.append(_describe(label, key_id, pubs[0], priv))
        return sorted(out, key=lambda k: k.label)

    return pool.run(work)


def find_key(pool: SessionPool, label: str, public_key: PublicKey | None = None) -> KeyInfo:
    """The one key pair labelled ``label`` (and holding ``public_key`` when given)."""
    check_label(label)

    def work(ps: PooledSession) -> KeyInfo:
        privs = list(ps.session.get_objects(
            {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label}
        ))
        if not privs:
            raise KeyNotFoundError(f"no private key labelled {label!r} in the token")
        if len(privs) > 1:
            raise KeyNotFoundError(f"{len(privs)} private keys are labelled {label!r}; "
                                   "refusing to guess")
        priv = privs[0]
        key_id = priv[Attribute.ID]
        pubs = list(ps.session.get_objects(
            {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.ID: key_id, Attribute.LABEL: label}
        ))
        if len(pubs) != 1:
            raise KeyNotFoundError(f"key {label!r} has {len(pubs)} public key objects, need 1")
        info = _describe(label, key_id, pubs[0], priv)
        if public_key is not None and info.spki_der != public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise KeyNotFoundError(
                f"key {label!r} in the token does not hold the expected public key"
            )
        return info

    return pool.run(work)


class KeyGoneError(KeyNotFoundError):
    """A key found earlier is not in the token now: unlike a label that matches nothing,
    this hints that the token (or the module's view of it) changed under us."""


def private_key_object(ps: PooledSession, info: KeyInfo) -> Any:
    """The private key object of ``info`` in this session, looked up once per session."""
    cache_key = ("priv", info.id, info.label)
    obj = ps.cache.get(cache_key)
    if obj is None:
        found = list(ps.session.get_objects({
            Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: info.id,
            Attribute.LABEL: info.label,
        }))
        if len(found) != 1:
            raise KeyGoneError(f"key {info.label!r} is no longer in the token")
        obj = found[0]
        ps.cache[cache_key] = obj
    return obj


def _describe(label: str, key_id: bytes, pub: Any, priv: Any) -> KeyInfo:
    public_key = decode_public_key(pub)
    return KeyInfo(
        label=label,
        id=bytes(key_id),
        spec=KeySpec.of_public_key(public_key),
        public_key=public_key,
        sensitive=bool(priv[Attribute.SENSITIVE]),
        extractable=bool(priv[Attribute.EXTRACTABLE]),
        always_sensitive=bool(priv[Attribute.ALWAYS_SENSITIVE]),
        never_extractable=bool(priv[Attribute.NEVER_EXTRACTABLE]),
    )


def decode_public_key(pub: Any) -> PublicKey:
    """A ``cryptography`` public key from a PKCS#11 public key object."""
    key_type = pub[Attribute.KEY_TYPE]
    if key_type == KeyType.RSA:
        n = int.from_bytes(pub[Attribute.MODULUS], "big")
        e = int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    if key_type == KeyType.EC:
        params = bytes(pub[Attribute.EC_PARAMS])
        if params not in _CURVE_BY_PARAMS:
            raise KeyPolicyError("EC key on a curve the appliance does not support")
        curve = _CURVE_BY_PARAMS[params][1]
        return ec.EllipticCurvePublicKey.from_encoded_point(
            curve, _unwrap_octet_string(bytes(pub[Attribute.EC_POINT]))
        )
    raise KeyPolicyError(f"unsupported key type {key_type!r} in the token")


def _unwrap_octet_string(der: bytes) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING around the point (some tokens omit the wrapper)."""
    if not der or der[0] != 0x04 or len(der) < 2:
        return der
    length = der[1]
    offset = 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(der[2:2 + n], "big")
        offset = 2 + n
    if offset + length == len(der):
        return der[offset:]
    return der


def _check_generated(info: KeyInfo, spec: KeySpec) -> None:
    if info.spec != spec:
        raise KeyPolicyError(f"token generated a {info.spec.name} key, asked for {spec.name}")
    if isinstance(info.public_key, rsa.RSAPublicKey) and \
            info.public_key.public_numbers().e != 65537:
        raise KeyPolicyError("token generated an RSA key with e != 65537")
    if not (info.sensitive and info.always_sensitive and info.never_extractable) \
            or info.extractable:
        raise KeyPolicyError(
            "generated key is not sensitive and non-extractable from birth "
            f"(sensitive={info.sensitive}, always_sensitive={info.always_sensitive}, "
            f"extractable={info.extractable}, never_extractable={info.never_extractable})"
        )


def _pairwise_test(session: Any, priv: Any, info: KeyInfo) -> None:
    """Sign in the token, verify in software: proves the pair belongs together."""
    message = b"appliance pairwise consistency test " + info.id
    key = info.public_key
    try:
        if isinstance(key, rsa.RSAPublicKey):
            sig = priv.sign(message, mechanism=Mechanism.SHA256_RSA_PKCS)
            key.verify(sig, message, padding.PKCS1v15(), hashes.SHA256())
        else:
            digest = hashlib.sha256(message).digest()
            raw = priv.sign(digest, mechanism=Mechanism.ECDSA)
            half = len(raw) // 2
            der = encode_dss_signature(
                int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
            )
            key.verify(der, message, ec.ECDSA(hashes.SHA256()))
    except Exception as exc:
        raise KeyPolicyError(
            f"pairwise sign/verify test of {info.label!r} failed: {exc!r}"
        ) from exc


def destroy_keypair(pool: SessionPool, info: KeyInfo) -> None:
    """Destroy both objects of a key pair (only for undoing a generation that was not recorded)."""

    def work(ps: PooledSession) -> None:
        for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
            for obj in list(ps.session.get_objects(
                {Attribute.CLASS: cls, Attribute.ID: info.id, Attribute.LABEL: info.label}
            )):
                obj.destroy()
        ps.cache.clear()

    pool.run(work, retry=False)
