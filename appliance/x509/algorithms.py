"""Which keys, curves, hashes, mechanisms and JWS algorithms the appliance accepts: decided
here, once.

Two layers. The *vocabulary* (key type names, :class:`KeySpec`, the hash objects, PKCS#11
mechanism names, which JWS algorithm fits which curve) is what the code knows how to handle;
it never changes at run time. The *table* (:class:`Table`) is what is approved now, and
every "is this acceptable" question of the appliance is one of the functions at the end of
this module, asked against :func:`current`. The FIPS-style mode narrows the table
(:meth:`Table.narrowed`, :func:`install`) and changes nothing else; a table can never be
wider than :data:`DEFAULT`, so no mode can approve what the code was not written for.

A refusal is an :class:`AlgorithmRefused` whose message is the one the caller's users have
always seen; upper rooms turn it into their own error (an ``IssuanceError``, an ACME problem,
a schema error) without rewording it, so the words stay beside the rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from appliance.errors import KeyPolicyError

# -- vocabulary: what the code can handle -------------------------------------------------

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

KeyType = Literal["rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384", "ec-p521"]
ALL_KEY_TYPES: tuple[KeyType, ...] = (
    "rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384", "ec-p521",
)

CaHash = hashes.SHA256 | hashes.SHA384 | hashes.SHA512
HashName = Literal["sha256", "sha384", "sha512"]
_CA_HASHES: dict[str, CaHash] = {
    "sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512(),
}
_HASH_DISPLAY = {"sha1": "SHA-1", "sha224": "SHA-224", "sha256": "SHA-256",
                 "sha384": "SHA-384", "sha512": "SHA-512"}
# The hash a CA key signs with when nothing names one: matched to the key's strength.
_DEFAULT_HASH: dict[str, HashName] = {"ec-p256": "sha256", "ec-p384": "sha384",
                                      "ec-p521": "sha512", "rsa-2048": "sha256"}
_DEFAULT_HASH_OTHERWISE: HashName = "sha384"

# The PKCS#11 mechanisms the token signer knows how to drive (see appliance/hsm/signer.py).
Mechanism = Literal[
    "ECDSA",
    "SHA256_RSA_PKCS", "SHA384_RSA_PKCS", "SHA512_RSA_PKCS",
    "SHA256_RSA_PKCS_PSS", "SHA384_RSA_PKCS_PSS", "SHA512_RSA_PKCS_PSS",
]
ALL_MECHANISMS: tuple[Mechanism, ...] = (
    "ECDSA",
    "SHA256_RSA_PKCS", "SHA384_RSA_PKCS", "SHA512_RSA_PKCS",
    "SHA256_RSA_PKCS_PSS", "SHA384_RSA_PKCS_PSS", "SHA512_RSA_PKCS_PSS",
)

# Who presents a JWS: a JWK provisioner's one-time token, an x5c (or renewal) token, an ACME
# request, an ACME external account binding (a MAC).
JwsPurpose = Literal["ott", "x5c", "acme", "eab"]
# RFC 7518 §3.4: each ECDSA JWS algorithm names its curve.
JWS_ALG_OF_CURVE: dict[str, str] = {"secp256r1": "ES256", "secp384r1": "ES384",
                                    "secp521r1": "ES512"}
# RFC 7518 §3.2: the hash (hashlib name) of each HMAC JWS algorithm.
HMAC_HASH: dict[str, str] = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}


class AlgorithmRefused(KeyPolicyError):
    """A key, size, curve, hash, mechanism or algorithm the active table does not approve."""


@dataclass(frozen=True)
class KeySpec:
    """What a key type name means: algorithm and size or curve."""

    name: KeyType
    algorithm: Literal["ec", "rsa"]
    bits: int
    curve: str | None = None

    @classmethod
    def parse(cls, name: str) -> KeySpec:
        try:
            return _SPECS[name]
        except KeyError:
            raise KeyPolicyError(
                f"unknown key type {name!r}; choose one of {', '.join(_SPECS)}"
            ) from None

    @classmethod
    def of_public_key(cls, key: PublicKey) -> KeySpec:
        if isinstance(key, rsa.RSAPublicKey):
            return cls.parse(f"rsa-{key.key_size}")
        return cls.parse(f"ec-p{key.curve.key_size}")


_SPECS: dict[str, KeySpec] = {
    "rsa-2048": KeySpec("rsa-2048", "rsa", 2048),
    "rsa-3072": KeySpec("rsa-3072", "rsa", 3072),
    "rsa-4096": KeySpec("rsa-4096", "rsa", 4096),
    "ec-p256": KeySpec("ec-p256", "ec", 256, "p256"),
    "ec-p384": KeySpec("ec-p384", "ec", 384, "p384"),
    "ec-p521": KeySpec("ec-p521", "ec", 521, "p521"),
}


# -- the table: what is approved ----------------------------------------------------------

@dataclass(frozen=True)
class SubjectKeys:
    """Public keys of others that we accept: a CSR's key, an ACME account key."""

    rsa_bits: tuple[int, int] | None  # inclusive range; None: no RSA key at all
    rsa_bits_multiple: int  # 8: whole octets only; 1: any size in the range
    rsa_exponents: tuple[int, ...] | None  # None: any public exponent
    curves: tuple[str, ...]  # cryptography's curve names

    def within(self, wider: SubjectKeys) -> bool:
        """Whether this accepts nothing ``wider`` refuses."""
        if self.rsa_bits is not None:
            if wider.rsa_bits is None or self.rsa_bits[0] < wider.rsa_bits[0] or \
                    self.rsa_bits[1] > wider.rsa_bits[1] or \
                    self.rsa_bits_multiple % wider.rsa_bits_multiple:
                return False
            if wider.rsa_exponents is not None and (
                    self.rsa_exponents is None
                    or not set(self.rsa_exponents) <= set(wider.rsa_exponents)):
                return False
        return set(self.curves) <= set(wider.curves)


@dataclass(frozen=True)
class JwsAlgs:
    """JWS algorithms accepted per purpose (see :data:`JwsPurpose`)."""

    ott: tuple[str, ...]
    x5c: tuple[str, ...]
    acme: tuple[str, ...]
    eab: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """Everything the appliance approves. Tuples, not sets: the order is the order messages
    list them in, and membership of an unhashable value (a JSON list where a string was
    expected) is simply false."""

    ca_key_types: tuple[KeyType, ...]  # CA keys made in (or brought to) the token
    ca_hashes: tuple[HashName, ...]  # certificates, CRLs, OCSP responses, CSRs, checkpoints
    mechanisms: tuple[Mechanism, ...]  # what the token may be asked to do
    csr_keys: SubjectKeys  # the key a certificate is issued for
    csr_hashes: tuple[str, ...]  # the hash a client's CSR is signed with
    account_keys: SubjectKeys  # ACME account (and revoking certificate) keys
    jws: JwsAlgs

    def narrowed(self, **changes: Any) -> Table:
        """This table with ``changes``; ``ValueError`` if a change would approve more."""
        table = replace(self, **changes)
        widened = _widened(self, table)
        if widened:
            raise ValueError(f"a narrowed table cannot approve more: {', '.join(widened)}")
        return table


_RSA_JWS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_JWS = ("ES256", "ES384", "ES512")
_CURVES = ("secp256r1", "secp384r1", "secp521r1")

DEFAULT = Table(
    ca_key_types=ALL_KEY_TYPES,
    ca_hashes=("sha256", "sha384", "sha512"),
    mechanisms=ALL_MECHANISMS,
    csr_keys=SubjectKeys(rsa_bits=(2048, 8192), rsa_bits_multiple=8, rsa_exponents=(65537,),
                         curves=_CURVES),
    csr_hashes=("sha256", "sha384", "sha512"),
    account_keys=SubjectKeys(rsa_bits=(2048, 8192), rsa_bits_multiple=1, rsa_exponents=None,
                             curves=_CURVES),
    jws=JwsAlgs(ott=("ES256",), x5c=_EC_JWS + _RSA_JWS, acme=_RSA_JWS + _EC_JWS,
                eab=tuple(HMAC_HASH)),
)
# The table of the FIPS-style mode (installed by runtime.Appliance in FIPS mode): narrowed by
# the FIPS table work.
FIPS = DEFAULT


def _widened(old: Any, new: Any) -> list[str]:
    out: list[str] = []
    for f in fields(old):
        was, now = getattr(old, f.name), getattr(new, f.name)
        if isinstance(was, JwsAlgs):
            out += [f"jws.{name}" for name in _widened(was, now)]
        elif isinstance(was, SubjectKeys):
            if not now.within(was):
                out.append(f.name)
        elif not set(now) <= set(was):
            out.append(f.name)
    return out


_active: Table = DEFAULT


def current() -> Table:
    """The table every check below asks."""
    return _active


def install(table: Table) -> None:
    """Make ``table`` the active one (at start-up, before workers fork or threads start)."""
    global _active
    widened = _widened(DEFAULT, table)
    if widened:
        raise ValueError(f"a table cannot approve more than the default: {', '.join(widened)}")
    _active = table


@contextmanager
def using(table: Table) -> Iterator[Table]:
    """``table`` is active inside the block, the previous one after it."""
    previous = _active
    install(table)
    try:
        yield table
    finally:
        install(previous)


def one_of(items: Iterable[object]) -> str:
    """"a, b or c": how refusals list what is approved."""
    names = [str(i) for i in items]
    if not names:
        return "(nothing approved)"
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


# -- the questions ------------------------------------------------------------------------

def check_ca_key_type(name: str) -> KeySpec:
    """The spec of a CA key type a ceremony or an operator asks the token to make."""
    spec = KeySpec.parse(name)
    approved = current().ca_key_types
    if spec.name not in approved:
        raise AlgorithmRefused(f"key type {spec.name} is not approved for CA keys; "
                               f"use {one_of(approved)}")
    return spec


def check_ca_key(key: PublicKey) -> KeySpec:
    """The spec of an existing key that is to become a CA key (a subordinate's CSR)."""
    return check_ca_key_type(KeySpec.of_public_key(key).name)


def default_hash(public_key: PublicKey) -> HashName:
    """The hash a CA key signs with when a step names none: matched to the key's strength."""
    spec = KeySpec.of_public_key(public_key)
    return _DEFAULT_HASH.get(spec.name, _DEFAULT_HASH_OTHERWISE)


def _display(names: Iterable[str]) -> list[str]:
    return [_HASH_DISPLAY.get(n, n) for n in names]


def signature_hash(name: str) -> CaHash:
    """The hash object for a CA signature (certificate, CRL, OCSP response, CSR, token)."""
    approved = current().ca_hashes
    if name not in approved or name not in _CA_HASHES:
        raise AlgorithmRefused(f"hash {name} is not allowed for CA signatures; "
                               f"use {one_of(_display(approved))}")
    return _CA_HASHES[name]


def ca_signature_hash(signer_public: PublicKey, name: str | None = None) -> CaHash:
    """The hash a CA key signs with: ``name`` if given, else the key's default."""
    return signature_hash(name or default_hash(signer_public))


def ocsp_signature_hash(signer_public: PublicKey) -> CaHash:
    """OCSP responses: the key's default hash; SHA-256 for RSA, whose responses are
    PKCS#1 v1.5 (``OCSPResponseBuilder.sign`` takes no padding) and what every client
    verifies."""
    if isinstance(signer_public, rsa.RSAPublicKey):
        return signature_hash("sha256")
    return ca_signature_hash(signer_public)


def rsa_padding(signer_public: PublicKey, choice: str, algo: CaHash) -> Any:
    """PSS when asked for and the signer is RSA; ``None`` (PKCS#1 v1.5 or ECDSA) otherwise."""
    if isinstance(signer_public, rsa.RSAPublicKey) and choice == "pss":
        return padding.PSS(padding.MGF1(algo), padding.PSS.DIGEST_LENGTH)
    return None


def check_mechanism(name: str) -> None:
    """Whether the token may be asked for mechanism ``name`` (a :data:`Mechanism`)."""
    if name not in current().mechanisms:
        raise AlgorithmRefused(f"mechanism {name} is not approved")


def _rsa_size_ok(rule: SubjectKeys, bits: int) -> bool:
    return rule.rsa_bits is not None and rule.rsa_bits[0] <= bits <= rule.rsa_bits[1] \
        and bits % rule.rsa_bits_multiple == 0


def _check_subject_key(rule: SubjectKeys, key: object, refused: str,
                       exponent: Callable[[int], str], other: str) -> None:
    """A key against one rule; the words differ by who is told (a CSR's requester, an ACME
    client), so each caller gives its own."""
    if isinstance(key, rsa.RSAPublicKey):
        if not _rsa_size_ok(rule, key.key_size):
            raise AlgorithmRefused(f"RSA key of {key.key_size} bits {refused}")
        e = key.public_numbers().e
        if rule.rsa_exponents is not None and e not in rule.rsa_exponents:
            raise AlgorithmRefused(exponent(e))
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in rule.curves:
            raise AlgorithmRefused(f"curve {key.curve.name} {refused}")
    else:
        raise AlgorithmRefused(other)


def check_csr_key(key: object) -> None:
    """The public key a certificate would be issued for."""
    rule = current().csr_keys
    _check_subject_key(
        rule, key, "is not allowed",
        lambda e: f"RSA public exponent must be {one_of(rule.rsa_exponents or ())}",
        "only RSA and ECDSA keys are accepted")


def check_csr_hash(algorithm: hashes.HashAlgorithm | None) -> None:
    """The hash a client signed its CSR with (no SHA-1, no MD5)."""
    approved = current().csr_hashes
    if algorithm is None or algorithm.name not in approved:
        raise AlgorithmRefused(f"the CSR must be signed with {one_of(_display(approved))}")


def check_account_key(key: object) -> None:
    """An ACME account key (or the key of a certificate revoked by its own key)."""
    _check_subject_key(current().account_keys, key, "not accepted",
                       lambda e: f"RSA public exponent {e} not accepted",
                       "a public key is required")


def jws_algs(purpose: JwsPurpose) -> tuple[str, ...]:
    """The JWS ``alg`` values approved for ``purpose``, in the order messages name them."""
    approved: tuple[str, ...] = getattr(current().jws, purpose)
    return approved


def jws_alg_allowed(alg: object, purpose: JwsPurpose) -> bool:
    """Whether a JWS header's ``alg`` (any JSON value) is approved for ``purpose``."""
    return alg in jws_algs(purpose)
