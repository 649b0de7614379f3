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
a schema error) without rewording it, so the words stay beside the rule. Under a table with
a ``mode`` (:data:`FIPS`) a refusal is a :class:`NotApproved` instead (the client's error,
400 ``not_approved``) whose message says the mode and names the algorithm (:func:`refusal`).

Two tables ship: :data:`DEFAULT` (what modern fleets use: also Ed25519 subject keys and
OpenSSL's TLS defaults, ChaCha20-Poly1305 included) and :data:`FIPS` (SP 800-131A Rev 2,
FIPS 186-5, SP 800-52 Rev 2: no Ed25519, AES-GCM TLS suites on NIST curves, and 112-bit
strength such as RSA-2048 refused for anything valid past 2030, :func:`check_strength`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from appliance.errors import KeyPolicyError

# -- vocabulary: what the code can handle -------------------------------------------------

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
E = TypeVar("E", bound=BaseException)
# A certificate's subject key may also be Ed25519 (RFC 8410) where the table approves it.
SubjectPublicKey = PublicKey | ed25519.Ed25519PublicKey

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
# request, an ACME external account binding (a MAC), a registration authority's hop
# assertion (signed by its credential key in its token, appliance/ra/assertion.py).
JwsPurpose = Literal["ott", "x5c", "acme", "eab", "ra"]
# RFC 7518 §3.4: each ECDSA JWS algorithm names its curve.
JWS_ALG_OF_CURVE: dict[str, str] = {"secp256r1": "ES256", "secp384r1": "ES384",
                                    "secp521r1": "ES512"}
# RFC 7518 §3.2: the hash (hashlib name) of each HMAC JWS algorithm.
HMAC_HASH: dict[str, str] = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}


class AlgorithmRefused(KeyPolicyError):
    """A key, size, curve, hash, mechanism or algorithm the active table does not approve."""


class NotApproved(AlgorithmRefused):
    """A refusal under a narrowed (FIPS) table: the client asked for something the mode does
    not approve, so it is the client's error (400 ``not_approved``), never a fault of ours,
    and its message says which mode refused which algorithm."""

    code = "not_approved"
    server_fault = False
    status = 400
    acme_type = "badPublicKey"
    public_detail = True


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
        if isinstance(key, ec.EllipticCurvePublicKey):
            return cls.parse(f"ec-p{key.curve.key_size}")
        # An Ed25519 subordinate's CSR, say: a subject key, never a CA key here.
        raise KeyPolicyError(f"a {type(key).__name__.removesuffix('PublicKey')} key cannot "
                             f"be a CA key; choose one of {', '.join(_SPECS)}")


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
    ed25519: bool = False  # Ed25519 (RFC 8410) keys

    def within(self, wider: SubjectKeys) -> bool:
        """Whether this accepts nothing ``wider`` refuses."""
        if self.ed25519 and not wider.ed25519:
            return False
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
    ra: tuple[str, ...]


@dataclass(frozen=True)
class Tls:
    """The API's TLS: lowest version, TLS 1.2 cipher string, TLS 1.3 suites and key-exchange
    groups. ``None`` means OpenSSL's own default (the default mode: what clients negotiate
    with every other server, ChaCha20-Poly1305 included); a tuple is an exact list."""

    min_version: Literal["TLSv1.2", "TLSv1.3"]
    ciphers12: tuple[str, ...] | None
    suites13: tuple[str, ...] | None
    groups: tuple[str, ...] | None

    def within(self, wider: Tls) -> bool:
        """Whether this allows nothing ``wider`` refuses."""
        if wider.min_version == "TLSv1.3" and self.min_version != "TLSv1.3":
            return False
        for name in ("ciphers12", "suites13", "groups"):
            mine, theirs = getattr(self, name), getattr(wider, name)
            if theirs is not None and (mine is None or not set(mine) <= set(theirs)):
                return False
        return True


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
    tls: Tls
    # SP 800-131A Rev 2 / SP 800-57: 112-bit security strength (RSA-2048) only for what is
    # valid until this instant; ``None``: no limit (the default mode).
    strength_112_until: datetime | None = None
    # The mode whose name a refusal carries; ``None``: today's messages, word for word.
    mode: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The table as JSON can carry it (``fips status``, the auditor's report)."""
        doc = asdict(self)
        if self.strength_112_until is not None:
            doc["strength_112_until"] = self.strength_112_until.isoformat()
        return doc

    def narrowed(self, **changes: Any) -> Table:
        """This table with ``changes``; ``ValueError`` if a change would approve more."""
        table = replace(self, **changes)
        widened = _widened(self, table)
        if widened:
            raise ValueError(f"a narrowed table cannot approve more: {', '.join(widened)}")
        return table


_RSA_JWS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_JWS = ("ES256", "ES384", "ES512")
# An RA credential key is P-256 or P-384 (ECDSA in the token); ES512 is not needed.
_RA_JWS = ("ES256", "ES384")
_CURVES = ("secp256r1", "secp384r1", "secp521r1")

DEFAULT = Table(
    ca_key_types=ALL_KEY_TYPES,
    ca_hashes=("sha256", "sha384", "sha512"),
    mechanisms=ALL_MECHANISMS,
    # Ed25519 (issue 14): the default mode accepts what IoT fleets carry; FIPS does not.
    csr_keys=SubjectKeys(rsa_bits=(2048, 8192), rsa_bits_multiple=8, rsa_exponents=(65537,),
                         curves=_CURVES, ed25519=True),
    csr_hashes=("sha256", "sha384", "sha512"),
    account_keys=SubjectKeys(rsa_bits=(2048, 8192), rsa_bits_multiple=1, rsa_exponents=None,
                             curves=_CURVES),
    jws=JwsAlgs(ott=("ES256",), x5c=_EC_JWS + _RSA_JWS, acme=_RSA_JWS + _EC_JWS,
                eab=tuple(HMAC_HASH), ra=_RA_JWS),
    tls=Tls(min_version="TLSv1.2", ciphers12=None, suites13=None, groups=None),
)


def _widened(old: Any, new: Any) -> list[str]:
    out: list[str] = []
    for f in fields(old):
        was, now = getattr(old, f.name), getattr(new, f.name)
        if isinstance(was, JwsAlgs):
            out += [f"jws.{name}" for name in _widened(was, now)]
        elif isinstance(was, SubjectKeys | Tls):
            if not now.within(was):
                out.append(f.name)
        elif f.name == "strength_112_until":
            if was is not None and (now is None or now > was):
                out.append(f.name)
        elif f.name == "mode":
            continue
        elif not set(now) <= set(was):
            out.append(f.name)
    return out


# SP 800-131A Rev 2 / FIPS 186-5 / SP 800-52 Rev 2: no Ed25519 (the token's validated module
# does not declare EdDSA unless its profile says so, see :func:`fips_table`), TLS with
# AES-GCM suites and NIST curves only, and RSA-2048 not past 2030.
FIPS_TLS12_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                      "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384")
FIPS_TLS13_SUITES = ("TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256")
FIPS_GROUPS = ("P-256", "P-384", "P-521")
STRENGTH_112_UNTIL = datetime(2030, 12, 31, 23, 59, 59, tzinfo=UTC)
FIPS = DEFAULT.narrowed(
    csr_keys=replace(DEFAULT.csr_keys, ed25519=False),
    tls=Tls(min_version="TLSv1.2", ciphers12=FIPS_TLS12_CIPHERS, suites13=FIPS_TLS13_SUITES,
            groups=FIPS_GROUPS),
    strength_112_until=STRENGTH_112_UNTIL,
    # RA hop assertions: ECDSA P-256/P-384 with SHA-2 (FIPS 186-5), as in the default mode.
    jws=replace(DEFAULT.jws, ra=_RA_JWS),
    mode="FIPS",
)


def fips_table(eddsa_validated: bool = False) -> Table:
    """The FIPS table; with Ed25519 CSR keys when the HSM profile declares EdDSA in its
    validated module (``eddsa_validated``)."""
    if not eddsa_validated:
        return FIPS
    return DEFAULT.narrowed(**{f.name: getattr(FIPS, f.name) for f in fields(FIPS)
                               if f.name != "csr_keys"},
                            csr_keys=replace(FIPS.csr_keys, ed25519=True))


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


def refusal(message: str, algorithm: str, approved: str | None = None) -> AlgorithmRefused:
    """The refusal of ``algorithm``: under the default table the words every user has always
    seen (``message``); under a named mode a :class:`NotApproved` that says the mode and
    names the algorithm, e.g. "not approved in FIPS mode: RSA-1024 (...)"."""
    mode = current().mode
    if mode is None:
        return AlgorithmRefused(message)
    return NotApproved(f"not approved in {mode} mode: {algorithm}"
                       + (f"; use {approved}" if approved else ""))


def refusal_text(message: str, algorithm: str, approved: str | None = None) -> str:
    """:func:`refusal`'s words, for a caller that raises its own error type (a JWS check)."""
    return str(refusal(message, algorithm, approved))


def mark(error: E, cause: BaseException | None = None) -> E:
    """``error`` (an ACME problem, a token error) flagged as a refusal under a mode when
    the table's mode is set and ``cause`` is absent or a :class:`NotApproved`: the web
    layer audits such refusals (``algorithm.refused``) with their reason."""
    if current().mode is not None and (cause is None or isinstance(cause, NotApproved)):
        error.not_approved = True  # type: ignore[attr-defined]
    return error


def names_a_refusal(text: str) -> bool:
    """Whether ``text`` (an error message that wrapped one, e.g. a ceremony schema error)
    carries a refusal of the active mode (:func:`refusal` is its only author)."""
    mode = current().mode
    return mode is not None and f"not approved in {mode} mode: " in text


def is_not_approved(error: BaseException) -> bool:
    """Whether ``error`` is a refusal under a mode (:class:`NotApproved`, or :func:`mark`ed)."""
    return isinstance(error, NotApproved) or getattr(error, "not_approved", False) is True


# -- the questions ------------------------------------------------------------------------

def check_ca_key_type(name: str) -> KeySpec:
    """The spec of a CA key type a ceremony or an operator asks the token to make."""
    spec = KeySpec.parse(name)
    approved = current().ca_key_types
    if spec.name not in approved:
        raise refusal(f"key type {spec.name} is not approved for CA keys; "
                      f"use {one_of(approved)}", f"{spec.name} as a CA key", one_of(approved))
    return spec


def _strength(key: object) -> int | None:
    """SP 800-57 Part 1 Table 2 security strength of a public key or key spec (bits)."""
    if isinstance(key, KeySpec):
        algorithm, bits = key.algorithm, key.bits
    elif isinstance(key, rsa.RSAPublicKey):
        algorithm, bits = "rsa", key.key_size
    elif isinstance(key, ec.EllipticCurvePublicKey):
        algorithm, bits = "ec", key.curve.key_size
    elif isinstance(key, ed25519.Ed25519PublicKey):
        return 128
    else:
        return None
    if algorithm == "rsa":
        return 80 if bits < 2048 else 112 if bits < 3072 else 128 if bits < 7680 else 192
    return bits // 2


def _key_name(key: object) -> str:
    if isinstance(key, KeySpec):
        return key.name.upper()
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    return type(key).__name__


def check_strength(key: object, not_after: datetime, what: str) -> None:
    """SP 800-131A Rev 2: a key of 112-bit strength (RSA-2048) protects nothing valid past
    the table's limit (2030-12-31 in FIPS mode; no limit in the default mode). ``key`` is a
    public key or a :class:`KeySpec`; ``what`` names the certificate ("the root
    certificate", "the requested certificate")."""
    limit = current().strength_112_until
    strength = _strength(key)
    if limit is None or strength is None or strength > 112:
        return
    if not_after.astimezone(UTC) > limit:
        algorithm = (f"{_key_name(key)} ({strength}-bit security strength) for {what} valid "
                     f"until {not_after.astimezone(UTC):%Y-%m-%d}; {strength}-bit strength is "
                     f"approved only until {limit:%Y-%m-%d}")
        better = "RSA-3072 or larger, or ECDSA P-256, P-384 or P-521"
        raise refusal(f"{algorithm}: use {better}", algorithm, better)


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
        raise refusal(f"hash {name} is not allowed for CA signatures; "
                      f"use {one_of(_display(approved))}",
                      f"{_HASH_DISPLAY.get(name, name)} for CA signatures",
                      one_of(_display(approved)))
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
        raise refusal(f"mechanism {name} is not approved", f"mechanism {name}")


def _rsa_size_ok(rule: SubjectKeys, bits: int) -> bool:
    return rule.rsa_bits is not None and rule.rsa_bits[0] <= bits <= rule.rsa_bits[1] \
        and bits % rule.rsa_bits_multiple == 0


def _approved_keys(rule: SubjectKeys) -> str:
    parts = []
    if rule.rsa_bits is not None:
        parts.append(f"RSA of {rule.rsa_bits[0]} to {rule.rsa_bits[1]} bits")
    parts += [f"EC {c}" for c in rule.curves]
    if rule.ed25519:
        parts.append("Ed25519")
    return one_of(parts)


def _check_subject_key(rule: SubjectKeys, key: object, refused: str,
                       exponent: Callable[[int], str], other: str, what: str) -> None:
    """A key against one rule; the words differ by who is told (a CSR's requester, an ACME
    client), so each caller gives its own."""
    approved = _approved_keys(rule)
    if isinstance(key, rsa.RSAPublicKey):
        if not _rsa_size_ok(rule, key.key_size):
            raise refusal(f"RSA key of {key.key_size} bits {refused}",
                          f"RSA-{key.key_size} {what}", approved)
        e = key.public_numbers().e
        if rule.rsa_exponents is not None and e not in rule.rsa_exponents:
            raise refusal(exponent(e), f"RSA public exponent {e} {what}",
                          one_of(rule.rsa_exponents))
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in rule.curves:
            raise refusal(f"curve {key.curve.name} {refused}", f"curve {key.curve.name} {what}",
                          approved)
    elif isinstance(key, ed25519.Ed25519PublicKey) and rule.ed25519:
        return
    else:
        raise refusal(other, f"{_key_name(key)} {what}", approved)


def check_csr_key(key: object) -> None:
    """The public key a certificate would be issued for."""
    rule = current().csr_keys
    _check_subject_key(
        rule, key, "is not allowed",
        lambda e: f"RSA public exponent must be {one_of(rule.rsa_exponents or ())}",
        "only RSA, ECDSA and Ed25519 keys are accepted" if rule.ed25519 else
        "only RSA and ECDSA keys are accepted", "subject key")


def check_csr_hash(algorithm: hashes.HashAlgorithm | None) -> None:
    """The hash a client signed its CSR with (no SHA-1, no MD5)."""
    approved = current().csr_hashes
    if algorithm is None or algorithm.name not in approved:
        name = "no hash" if algorithm is None else _HASH_DISPLAY.get(algorithm.name,
                                                                      algorithm.name.upper())
        raise refusal(f"the CSR must be signed with {one_of(_display(approved))}",
                      f"a CSR signed with {name}", one_of(_display(approved)))


def check_csr_signature(csr: x509.CertificateSigningRequest) -> None:
    """The algorithm a client signed its CSR with: an approved hash, or (for an Ed25519 key,
    whose signature has no separate hash, RFC 8410) Ed25519 itself when its key is approved
    (:func:`check_csr_key` decides that)."""
    if isinstance(csr.public_key(), ed25519.Ed25519PublicKey) and current().csr_keys.ed25519 \
            and csr.signature_algorithm_oid == x509.SignatureAlgorithmOID.ED25519:
        return
    check_csr_hash(csr.signature_hash_algorithm)


def check_account_key(key: object) -> None:
    """An ACME account key (or the key of a certificate revoked by its own key)."""
    _check_subject_key(current().account_keys, key, "not accepted",
                       lambda e: f"RSA public exponent {e} not accepted",
                       "a public key is required", "account key")


def jws_algs(purpose: JwsPurpose) -> tuple[str, ...]:
    """The JWS ``alg`` values approved for ``purpose``, in the order messages name them."""
    approved: tuple[str, ...] = getattr(current().jws, purpose)
    return approved


def jws_alg_allowed(alg: object, purpose: JwsPurpose) -> bool:
    """Whether a JWS header's ``alg`` (any JSON value) is approved for ``purpose``."""
    return alg in jws_algs(purpose)
